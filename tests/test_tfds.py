"""The TFDS path: DeeplabSegmentation prepared from generated files in the original layouts."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_ssl.datasets import build_data, descriptors, input_pipeline, records
from deeplab_ssl.datasets import tfds as deeplab_tfds

MEAN = (120.0, 110.0, 100.0)


def save(array, path, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if palette:  # VOC's SegmentationClass: palette PNG whose index is the class.
        image = Image.frombytes("P", array.shape[::-1], array.tobytes())
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
    else:
        image = Image.fromarray(array)
    image.save(path)


def color_arrays(index, height, width, num_classes, ignore_label=255):
    """A PNG-exact image whose colors encode the label: label = bit code of the color, 0..7,
    with ignore_label on a stripe (colored like class 0 there, it is not checked)."""
    rng = np.random.default_rng(index)
    label = rng.integers(0, min(8, num_classes), (height // 4 + 1, width // 4 + 1))
    label = np.kron(label, np.ones((4, 4), np.int64))[:height, :width].astype(np.uint8)
    image = (((label[..., None] >> np.array([2, 1, 0])) & 1) * 255).astype(np.uint8)
    label[:, :2] = ignore_label
    return image, label


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    """VOCdevkit with train (2), val (2) lists and SegmentationClassAug for 2 more images."""
    root = tmp_path_factory.mktemp("voc")
    voc = root / "VOCdevkit" / "VOC2012"
    names = [f"2007_{i:06d}" for i in range(6)]
    for i, name in enumerate(names):
        image, label = color_arrays(i, 24 + i, 30, 21)
        save(image, str(voc / "JPEGImages" / f"{name}.jpg"))
        if i < 4:
            save(label, str(voc / "SegmentationClass" / f"{name}.png"), palette=True)
        save(np.where(label == 255, 0, label), str(voc / "SegmentationClassAug" / f"{name}.png"))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[2:4]) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def cityscapes_dir(tmp_path_factory):
    """Cityscapes with 3 train images in 2 cities (one with labelIds only) and 2 val images."""
    root = tmp_path_factory.mktemp("cityscapes")
    train_ids_to_ids = np.array([7, 8, 11, 12, 13, 17, 19, 20])
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            city = "aachen" if i % 2 == 0 else "bochum"
            stem = f"{city}_{i:06d}_000019"
            image, label = color_arrays(10 * len(split) + i, 32, 40, 19)
            save(image, str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
            gt = root / "gtFine" / split / city
            if split == "train" and i == 2:
                ids = np.where(label == 255, 0, train_ids_to_ids[np.minimum(label, 7)])
                save(ids.astype(np.uint8), str(gt / f"{stem}_gtFine_labelIds.png"))
            else:
                save(label, str(gt / f"{stem}_gtFine_labelTrainIds.png"))
    return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def test_voc_splits_labels_and_train_aug(voc_dir, data_dir):
    def eval_elements(split):
        return list(deeplab_tfds.get_dataset("pascal_voc_seg", data_dir, split, batch_size=1,
                                             manual_dir=voc_dir))

    val = eval_elements("val")
    assert [e["filename"].numpy()[0].decode() for e in val] == ["2007_000002", "2007_000003"]
    for element in val:
        index = int(element["filename"].numpy()[0][-1:])
        _, label = color_arrays(index, 24 + index, 30, 21)
        np.testing.assert_array_equal(element["label"].numpy()[0, ..., 0], label)
        assert element["image"].shape == (1, 24 + index, 30, 3)
        assert (element["height"].numpy()[0], element["width"].numpy()[0]) == (24 + index, 30)
    # train_aug = SBD names + train - val; VOC's own label (with 255) wins over SBD's.
    train_aug = {e["filename"].numpy()[0].decode(): e["label"].numpy()[0, ..., 0]
                 for e in eval_elements("train_aug")}
    assert sorted(train_aug) == ["2007_000000", "2007_000001", "2007_000004", "2007_000005"]
    assert np.all(train_aug["2007_000000"][:, :2] == 255)
    assert np.all(train_aug["2007_000004"][:, :2] == 0)


def test_cityscapes_matches_records_pipeline(cityscapes_dir, data_dir, tmp_path):
    """Same elements as input_pipeline.get_dataset on records of the same files."""
    examples = []
    for i, city in enumerate(["aachen", "bochum"]):
        stem = f"{city}_{i:06d}_000019"
        image = (tf.io.gfile.GFile(os.path.join(
            cityscapes_dir, "leftImg8bit", "val", city, stem + "_leftImg8bit.png"), "rb")
            .read())
        label = tf.io.gfile.GFile(os.path.join(
            cityscapes_dir, "gtFine", "val", city, stem + "_gtFine_labelTrainIds.png"),
            "rb").read()
        examples.append(records.encode_example(image, stem, 32, 40, label, image_format="png"))
    # With its manifest: 2 examples, not the 500 of Cityscapes' val_fine.
    build_data.write_split(examples, lambda example: example, str(tmp_path), "val_fine", 1,
                           descriptors.get_descriptor("cityscapes"), progress=False)
    kwargs = dict(dataset_name="cityscapes", split="val_fine", batch_size=2,
                  crop_size=[36, 36], mean_pixel=MEAN)
    from_tfds = deeplab_tfds.get_dataset(data_dir=data_dir, manual_dir=cityscapes_dir, **kwargs)
    from_records = input_pipeline.get_dataset(dataset_dir=str(tmp_path), **kwargs)
    assert from_tfds.element_spec == from_records.element_spec
    for a, b in zip(from_tfds, from_records):
        assert sorted(a) == ["filename", "height", "image", "label", "width"]
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        assert a["image"].shape == (2, 36, 40, 3)


def test_cityscapes_training_batches(cityscapes_dir, data_dir):
    def batches(seed):
        dataset = deeplab_tfds.get_dataset(
            "cityscapes", data_dir, "train_fine", batch_size=2, manual_dir=cityscapes_dir,
            crop_size=[24, 24], is_training=True, min_scale_factor=0.5, max_scale_factor=2.0,
            scale_factor_step_size=0.25, mean_pixel=MEAN, deterministic=True, seed=seed)
        return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(3)]

    first, second = batches(3), batches(3)
    for (images, labels), (images_again, labels_again) in zip(first, second):
        assert images.shape == (2, 24, 24, 3) and images.dtype == np.float32
        assert labels.shape == (2, 24, 24, 1) and labels.dtype == np.int32
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
        # Exact colors carry their label (the labelIds image was mapped to train ids).
        exact = np.all((images == 0) | (images == 255), axis=-1) & (labels[..., 0] != 255)
        code = (images[exact] > 0).astype(np.int32) @ np.array([4, 2, 1])
        np.testing.assert_array_equal(labels[..., 0][exact], code)


def test_sharding_and_errors(cityscapes_dir, data_dir):
    names = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        dataset = deeplab_tfds.get_dataset("cityscapes", data_dir, "train_fine", batch_size=2,
                                           manual_dir=cityscapes_dir, input_context=context)
        names.append([n.decode() for batch in dataset for n in batch["filename"].numpy()])
    assert sorted(names[0] + names[1]) == [
        "aachen_000000_000019", "aachen_000002_000019", "bochum_000001_000019"]
    assert len(names[0]) == 2 and len(names[1]) == 1
    with pytest.raises(ValueError, match="no_such_split"):
        deeplab_tfds.get_dataset("cityscapes", data_dir, "no_such_split", batch_size=1,
                                 manual_dir=cityscapes_dir)
    with pytest.raises(ValueError, match="ade20k"):
        deeplab_tfds.get_dataset("ade20k", data_dir, "val", batch_size=1)
