"""get_dataset end to end on small records written here with records.encode_example."""
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl.datasets import build_data, descriptors, input_pipeline, records

DATASET = "pascal_voc_seg"  # 21 classes, ignore label 255, splits train / val / ...
IGNORE = 255
MEAN = (120.0, 110.0, 100.0)


def example_arrays(index, height, width):
    """An image of blocks of the 8 colors with channels in {0, 255}; label = color's bit code.

    A bilinear blend of different such colors is never such a color, so after resizing a pixel
    with all channels in {0, 255} must have the label of its color.
    """
    rng = np.random.default_rng(index)
    label = rng.integers(0, 8, (height // 4 + 1, width // 4 + 1))
    label = np.kron(label, np.ones((4, 4), np.int64))[:height, :width].astype(np.uint8)
    bits = (label[..., None] >> np.array([2, 1, 0])) & 1
    return (bits * 255).astype(np.uint8), label[..., None]


def serialize(filename, image, label, label_size=None):
    """A record in deeplab's schema; `label_size` overrides the label's size (a bad record)."""
    if label_size is not None:
        label = np.zeros(label_size + (1,), np.uint8)
    return records.encode_example(
        tf.io.encode_png(image).numpy(), filename, image.shape[0], image.shape[1],
        tf.io.encode_png(label).numpy(), image_format="png")


def write_split(directory, split, examples, num_shards):
    """Writes serialized examples into deeplab-named shards, with the split's manifest."""
    build_data.write_split(examples, lambda example: example, directory, split, num_shards,
                           descriptors.get_descriptor(DATASET), progress=False)
    return directory


def sizes(count):
    return [(20 + 3 * (i % 5), 24 + 5 * (i % 3)) for i in range(count)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    train = [serialize(f"train_{i}.png", *example_arrays(i, *size))
             for i, size in enumerate(sizes(24))]
    val = [serialize(f"val_{i}.png", *example_arrays(100 + i, *size))
           for i, size in enumerate(sizes(5))]
    write_split(directory, "train", train, num_shards=4)
    write_split(directory, "val", val, num_shards=1)
    return directory


def train_dataset(directory, **kwargs):
    options = dict(dataset_name=DATASET, dataset_dir=directory, split="train", batch_size=4,
                   crop_size=[32, 32], is_training=True, min_scale_factor=0.5,
                   max_scale_factor=2.0, scale_factor_step_size=0.25, mean_pixel=MEAN)
    options.update(kwargs)
    return input_pipeline.get_dataset(**options)


def assert_label_drawn_from_image(images, labels):
    """Exact colors (channels in {0, 255}) have their label; mean pixel <-> ignore label."""
    images, labels = images.numpy(), labels.numpy()[..., 0]
    padded = np.all(images == np.array(MEAN, np.float32), axis=-1)
    np.testing.assert_array_equal(padded, labels == IGNORE)
    exact = np.all((images == 0) | (images == 255), axis=-1)
    assert exact[~padded].mean() > 0.3
    code = (images[exact] > 0).astype(np.int32) @ np.array([4, 2, 1])
    np.testing.assert_array_equal(labels[exact], code)


def test_training_batches_are_ready_for_fit(dataset_dir):
    dataset = train_dataset(dataset_dir)
    images_spec, labels_spec = dataset.element_spec
    assert images_spec.shape == (4, 32, 32, 3) and images_spec.dtype == tf.float32
    assert labels_spec.shape == (4, 32, 32, 1) and labels_spec.dtype == tf.int32
    for images, labels in dataset.take(8):  # 32 examples: repeats past the 24 records.
        assert_label_drawn_from_image(images, labels)
        assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255


def test_deterministic_with_seed_gives_identical_batches(dataset_dir):
    def batches(seed):
        dataset = train_dataset(dataset_dir, deterministic=True, seed=seed).take(3)
        return [(images.numpy(), labels.numpy()) for images, labels in dataset]

    first, second, other = batches(5), batches(5), batches(6)
    for (image_a, label_a), (image_b, label_b) in zip(first, second):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(label_a, label_b)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_evaluation_yields_whole_images_in_order(dataset_dir):
    dataset = input_pipeline.get_dataset(DATASET, dataset_dir, "val", batch_size=1)
    elements = list(dataset)
    assert [e["filename"].numpy()[0].decode() for e in elements] == [
        f"val_{i}.png" for i in range(5)]
    for i, element in enumerate(elements):
        image, label = example_arrays(100 + i, *sizes(5)[i])
        assert element["image"].dtype == tf.float32 and element["label"].dtype == tf.int32
        np.testing.assert_array_equal(element["image"].numpy()[0], image)
        np.testing.assert_array_equal(element["label"].numpy()[0], label)
        assert (element["height"].numpy()[0], element["width"].numpy()[0]) == image.shape[:2]


def test_evaluation_batches_pad_with_mean_pixel_and_ignore_label(dataset_dir):
    dataset = input_pipeline.get_dataset(DATASET, dataset_dir, "val", batch_size=5,
                                         crop_size=[23, 23], mean_pixel=MEAN, deterministic=True)
    batch = next(iter(dataset))
    assert batch["image"].shape == (5, 32, 34, 3) and batch["label"].shape == (5, 32, 34, 1)
    for i, (height, width) in enumerate(sizes(5)):
        assert (batch["height"][i], batch["width"][i]) == (height, width)
        image, label = batch["image"].numpy()[i], batch["label"].numpy()[i]
        np.testing.assert_array_equal(image[:height, :width],
                                      example_arrays(100 + i, height, width)[0])
        outside = np.ones(image.shape[:2], bool)
        outside[:height, :width] = False
        np.testing.assert_array_equal(image[outside], np.broadcast_to(MEAN, image[outside].shape))
        np.testing.assert_array_equal(label[outside], IGNORE)


def test_sharding_under_input_context_splits_files_or_records(dataset_dir):
    def filenames(directory, split, num_pipelines, pipeline_id):
        context = tf.distribute.InputContext(num_pipelines, pipeline_id, num_pipelines)
        dataset = input_pipeline.get_dataset(DATASET, directory, split, batch_size=num_pipelines,
                                             input_context=context)
        return [name.decode() for batch in dataset for name in batch["filename"].numpy()]

    by_files = [filenames(dataset_dir, "train", 2, i) for i in range(2)]  # 4 files, 2 workers.
    assert sorted(by_files[0] + by_files[1]) == sorted(f"train_{i}.png" for i in range(24))
    assert {int(n[6:-4]) // 6 for n in by_files[0]} == {0, 2}  # Shards 0 and 2 of 4.
    by_records = [filenames(dataset_dir, "val", 2, i) for i in range(2)]  # 1 file, 2 workers.
    assert [sorted(names) for names in by_records] == [
        ["val_0.png", "val_2.png", "val_4.png"], ["val_1.png", "val_3.png"]]


def test_training_feeds_mirrored_strategy(dataset_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed = strategy.distribute_datasets_from_function(
        lambda context: train_dataset(dataset_dir, batch_size=4, input_context=context))
    images, labels = next(iter(distributed))
    for replica_images, replica_labels in zip(strategy.experimental_local_results(images),
                                              strategy.experimental_local_results(labels)):
        assert replica_images.shape == (2, 32, 32, 3) and replica_labels.shape == (2, 32, 32, 1)


CORRUPT = "bad record corrupt_image.png: image or label cannot be decoded"
MISMATCHED = ("bad record wrong_label_size.png: label size 20x23 differs from image size "
              "20x24")


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    """val: good and both bad records; train: one corrupt image; trainval: one wrong label."""
    directory = str(tmp_path_factory.mktemp("bad"))
    good = [serialize(f"good_{i}.png", *example_arrays(i, 20, 24)) for i in range(4)]
    corrupt = bytearray(serialize("corrupt_image.png", *example_arrays(9, 20, 24)))
    image_bytes = tf.io.encode_png(example_arrays(9, 20, 24)[0]).numpy()
    start = bytes(corrupt).index(image_bytes)
    corrupt[start + 20:start + 40] = b"\0" * 20  # Inside the PNG header: not decodable.
    corrupt = bytes(corrupt)
    mismatched = serialize("wrong_label_size.png", *example_arrays(10, 20, 24),
                           label_size=(20, 23))
    write_split(directory, "val", good[:2] + [corrupt] + good[2:] + [mismatched], 1)
    write_split(directory, "train", good[:2] + [corrupt] + good[2:], 1)
    write_split(directory, "trainval", good[:2] + [mismatched] + good[2:], 1)
    return directory


@pytest.mark.parametrize("split, message", [("train", CORRUPT), ("trainval", MISMATCHED)])
@pytest.mark.parametrize("is_training", [False, True])
def test_bad_records_fail_naming_the_file(bad_dir, is_training, split, message):
    dataset = input_pipeline.get_dataset(
        DATASET, bad_dir, split, batch_size=1, crop_size=[16, 16], is_training=is_training,
        shuffle=False, repeat=False, deterministic=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        list(dataset)


def test_bad_records_skipped_with_logged_count(bad_dir, capfd):
    dataset = input_pipeline.get_dataset(DATASET, bad_dir, "val", batch_size=1,
                                         deterministic=True, skip_bad_records=True)
    names = [e["filename"].numpy()[0].decode() for e in dataset]
    assert names == [f"good_{i}.png" for i in range(4)]
    log = capfd.readouterr().err
    assert CORRUPT in log and MISMATCHED in log
    assert "1 bad records skipped so far" in log and "2 bad records skipped so far" in log


def test_unknown_split_and_missing_shards_are_named(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="'no_such_split'"):
        input_pipeline.get_dataset(DATASET, dataset_dir, "no_such_split", batch_size=1)
    with pytest.raises(ValueError, match=str(tmp_path / "trainval-")):
        input_pipeline.get_dataset(DATASET, str(tmp_path), "trainval", batch_size=1)
    with pytest.raises(ValueError, match="crop_size"):
        input_pipeline.get_dataset(DATASET, dataset_dir, "train", batch_size=1, is_training=True)


def test_min_resize_value_resizes_training_and_evaluation(dataset_dir):
    element = next(iter(input_pipeline.get_dataset(
        DATASET, dataset_dir, "val", batch_size=1, min_resize_value=40, max_resize_value=60)))
    # val_0 is 20x24: the smaller side to 40 gives 40x48, within 60.
    assert element["image"].shape == (1, 40, 48, 3) and element["label"].shape == (1, 40, 48, 1)
    assert (element["height"].numpy()[0], element["width"].numpy()[0]) == (20, 24)
    images, labels = next(iter(train_dataset(dataset_dir, min_resize_value=40)))
    assert_label_drawn_from_image(images, labels)


def test_iterator_checkpoint_resumes_the_same_batches(dataset_dir, tmp_path):
    """Stateless augmentation: a saved iterator gives the same next batches after restore."""
    iterator = iter(train_dataset(dataset_dir, deterministic=True, seed=2))
    next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.save(str(tmp_path / "iterator"))
    expected = [next(iterator) for _ in range(2)]
    checkpoint.restore(path)
    for images, labels in expected:
        restored_images, restored_labels = next(iterator)
        np.testing.assert_array_equal(images, restored_images)
        np.testing.assert_array_equal(labels, restored_labels)


def _copy(directory, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tf.io.gfile.glob(os.path.join(directory, "*")):
        (copy / os.path.basename(path)).write_bytes(open(path, "rb").read())
    return copy


def test_an_incomplete_split_is_refused_naming_the_missing_shards(dataset_dir, tmp_path):
    copy = _copy(dataset_dir, tmp_path)
    os.remove(copy / "train-00002-of-00004.tfrecord")
    with pytest.raises(ValueError, match="incomplete.*missing train-00002-of-00004.tfrecord"):
        train_dataset(str(copy))


def test_a_truncated_shard_is_named_or_read_up_to_the_damage(dataset_dir, tmp_path):
    copy = _copy(dataset_dir, tmp_path)
    shard = copy / "train-00001-of-00004.tfrecord"
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"shard .*train-00001-of-00004.tfrecord is damaged"):
        train_dataset(str(copy))
    shards = input_pipeline.complete_shards(str(copy), "train", skip_bad_records=True)
    readable = dict(shards)[str(shard)]
    assert 0 <= readable < 6  # Of the shard's 6 records.
    dataset = input_pipeline.get_dataset(DATASET, str(copy), "train", 1, skip_bad_records=True)
    assert sum(1 for _ in dataset) == 24 - 6 + readable


def test_without_a_manifest_the_descriptors_split_size_is_checked(dataset_dir, tmp_path):
    copy = _copy(dataset_dir, tmp_path)
    os.remove(copy / records.manifest_filename("val"))
    # pascal_voc_seg's val has 1449 images; these records hold 5.
    with pytest.raises(ValueError, match="holds 5 examples where 1449 are expected"):
        input_pipeline.get_dataset(DATASET, str(copy), "val", 1)


def test_labels_outside_the_classes_name_the_value_the_record_and_the_flag(tmp_path):
    image, label = example_arrays(0, 8, 8)
    label[0, 0] = 30  # pascal_voc_seg: 21 classes, ignore label 255.
    directory = write_split(str(tmp_path), "val", [serialize("odd.png", image, label)], 1)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"label value 30 in odd.png .*pascal_voc_seg \(0 to 20\).*255.*"
                             r"--ignore_label"):
        list(input_pipeline.get_dataset(DATASET, directory, "val", 1))


def test_a_custom_dataset_comes_from_the_builders_description(tmp_path):
    image, label = example_arrays(0, 8, 8)  # Labels 0..7.
    examples = [serialize(f"{i}.png", image, label) for i in range(3)]
    build_data.write_split(examples, lambda example: example, str(tmp_path), "train", 1,
                           descriptors.custom_descriptor(8, 255), progress=False)
    descriptor = descriptors.get_descriptor("custom", str(tmp_path))
    assert (descriptor.num_classes, descriptor.split_size("train")) == (8, 3)
    batches = list(input_pipeline.get_dataset("custom", str(tmp_path), "train", 1))
    assert len(batches) == 3
    # Without a description: the flags and the manifest.
    os.remove(tmp_path / descriptors.DESCRIPTION_NAME)
    descriptor = descriptors.get_descriptor("custom", str(tmp_path), num_classes=8,
                                            ignore_label=255)
    assert descriptor.split_size("train") == 3 and len(descriptor.class_names) == 8
    with pytest.raises(ValueError, match="--num_classes"):
        descriptors.get_descriptor("custom", str(tmp_path))


def test_label_histogram_counts_classes_and_the_labelled_pixels_of_their_images(tmp_path):
    labels = []
    examples = []
    for i, size in enumerate(sizes(3)):
        image, label = example_arrays(i, *size)
        label[:3] = IGNORE
        labels.append(label[..., 0])
        examples.append(serialize(f"image_{i}.png", image, label))
    directory = write_split(str(tmp_path), "val", examples, num_shards=2)
    pixel_counts, image_pixel_counts = input_pipeline.label_histogram(
        descriptors.get_descriptor(DATASET), directory, "val")
    expected_pixels = sum(np.bincount(label[label != IGNORE], minlength=21) for label in labels)
    expected_images = sum(np.where(np.bincount(label[label != IGNORE], minlength=21) > 0,
                                   (label != IGNORE).sum(), 0) for label in labels)
    np.testing.assert_array_equal(pixel_counts, expected_pixels)
    np.testing.assert_array_equal(image_pixel_counts, expected_images)
    assert pixel_counts[8:].sum() == 0 and pixel_counts[:8].min() > 0
