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
