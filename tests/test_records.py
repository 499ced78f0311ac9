import numpy as np
import tensorflow as tf

from deeplab_ssl.datasets import records


def test_shard_names_are_deeplabs():
    assert records.shard_filename("train", 1, 4) == "train-00001-of-00004.tfrecord"


def test_round_trip_png_image_and_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (7, 5, 1), dtype=np.uint8)
    label[0, 0, 0] = 255
    serialized = records.encode_example(
        tf.io.encode_png(image).numpy(), "a.png", 7, 5, tf.io.encode_png(label).numpy(),
        image_format="png")
    parsed = records.parse_example(tf.constant(serialized))
    np.testing.assert_array_equal(parsed["image"].numpy(), image)
    np.testing.assert_array_equal(parsed["label"].numpy(), label)
    assert parsed["filename"].numpy() == b"a.png"
    assert (int(parsed["height"]), int(parsed["width"])) == (7, 5)


def test_schema_keys_are_deeplabs():
    serialized = records.encode_example(b"x", "f.jpg", 1, 1, b"y")
    example = tf.train.Example.FromString(serialized)
    assert set(example.features.feature) == {
        "image/encoded", "image/filename", "image/format", "image/height", "image/width",
        "image/channels", "image/segmentation/class/encoded",
        "image/segmentation/class/format"}
    assert example.features.feature["image/format"].bytes_list.value == [b"jpeg"]


def test_record_written_like_deeplab_loads():
    """A tf.Example made by hand exactly as deeplab's build_data.image_seg_to_tfexample (JPEG
    image, PNG label) parses, with the label values unchanged."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (6, 8, 1), dtype=np.uint8)
    label[2:4, 3] = 255

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    jpeg = tf.io.encode_jpeg(image, quality=100).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feature(jpeg),
        "image/filename": feature(b"2007_000032"),
        "image/format": feature(b"jpeg"),
        "image/height": feature(6),
        "image/width": feature(8),
        "image/channels": feature(3),
        "image/segmentation/class/encoded": feature(tf.io.encode_png(label).numpy()),
        "image/segmentation/class/format": feature(b"png"),
    }))
    parsed = records.parse_example(tf.constant(example.SerializeToString()))
    assert parsed["image"].dtype == tf.uint8 and parsed["image"].shape == (6, 8, 3)
    np.testing.assert_array_equal(parsed["image"].numpy(), tf.io.decode_jpeg(jpeg).numpy())
    np.testing.assert_array_equal(parsed["label"].numpy(), label)
    assert parsed["filename"].numpy() == b"2007_000032"
    assert (int(parsed["height"]), int(parsed["width"])) == (6, 8)


def test_shard_pattern_matches_shard_names_only():
    import fnmatch
    pattern = records.shard_pattern("train")
    assert fnmatch.fnmatch(records.shard_filename("train", 3, 10), pattern)
    assert not fnmatch.fnmatch(records.shard_filename("train_aug", 0, 4), pattern)
    assert not fnmatch.fnmatch(records.shard_filename("train", 0, 4) + ".tmp", pattern)
