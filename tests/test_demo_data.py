"""The generated demo set: deterministic, in the records' schema, and learnable from the image."""
import glob
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from deeplab_ssl.datasets import build_demo_data, descriptors, records

DEMO = descriptors.get_descriptor("demo")


def _scenes(count, seed=0):
    return [build_demo_data.make_scene(np.random.default_rng([seed, 0, i]))
            for i in range(count)]


def _shard_bytes(output_dir):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(output_dir, "*.tfrecord")))}


def test_same_seed_same_records_other_seed_other_records(tmp_path):
    kwargs = dict(num_train=5, num_val=3, height=32, width=40, progress=False)
    build_demo_data.build_demo(str(tmp_path / "a"), seed=3, **kwargs)
    build_demo_data.build_demo(str(tmp_path / "b"), seed=3, **kwargs)
    build_demo_data.build_demo(str(tmp_path / "c"), seed=4, **kwargs)
    a = _shard_bytes(tmp_path / "a")
    assert sorted(a) == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                         "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert a == _shard_bytes(tmp_path / "b")
    assert a != _shard_bytes(tmp_path / "c")


def test_records_parse_with_the_demo_descriptor_values(tmp_path):
    build_demo_data.build_demo(str(tmp_path), num_train=3, num_val=2, progress=False)
    paths = sorted(glob.glob(str(tmp_path / records.shard_pattern("train"))))
    parsed = [records.parse_example(s) for s in tf.data.TFRecordDataset(paths)]
    assert [p["filename"].numpy() for p in parsed] == [b"train_00000", b"train_00001",
                                                       b"train_00002"]
    example = parsed[1]
    assert example["image"].shape == (128, 160, 3) and example["label"].shape == (128, 160, 1)
    # Any example can be regenerated alone from (seed, split, index).
    _, label = build_demo_data.make_scene(np.random.default_rng([0, 0, 1]))
    np.testing.assert_array_equal(example["label"].numpy()[..., 0], label)


def test_generator_classes_are_the_descriptors():
    names = ("road", "sidewalk", "building", "fence", "pole", "sign", "tree", "sky", "person",
             "car")
    assert DEMO.class_names == names
    assert [getattr(build_demo_data, n.upper()) for n in names] == list(range(len(names)))


def test_scenes_have_every_class_thin_ones_and_ignore_bands():
    labels = np.stack([label for _, label in _scenes(30)])
    values = set(np.unique(labels).tolist())
    assert values == set(range(DEMO.num_classes)) | {DEMO.ignore_label}
    shares = np.bincount(labels.ravel(), minlength=256) / labels.size
    for name in ("pole", "sign", "person", "fence"):  # Thin/small: present but rare.
        assert 0.0005 < shares[DEMO.class_names.index(name)] < 0.03, name
    for name in ("road", "sky", "building", "sidewalk"):
        assert shares[DEMO.class_names.index(name)] > 0.1, name
    # Poles are thin: in most rows that cross a pole, it is at most 3 pixels wide.
    pole = labels == DEMO.class_names.index("pole")
    runs = np.diff(pole.astype(np.int8), axis=2) == 1
    widths = pole.sum(axis=2)[runs.sum(axis=2) == 1]
    assert np.median(widths) <= 3


def test_image_carries_the_class_information():
    """Nearest class-mean colour, fitted on 20 scenes, labels 10 other scenes far better than
    always answering the most common class: colours are correlated with classes."""
    scenes = _scenes(30)
    means, counts = np.zeros((DEMO.num_classes, 3)), np.zeros(DEMO.num_classes)
    for image, label in scenes[:20]:
        for c in range(DEMO.num_classes):
            means[c] += image[label == c].sum(axis=0)
            counts[c] += (label == c).sum()
    means /= counts[:, None]
    correct = majority = total = 0
    for image, label in scenes[20:]:
        valid = label != DEMO.ignore_label
        pixels = image[valid].astype(np.float64)
        guess = np.argmin(((pixels[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
        correct += (guess == label[valid]).sum()
        majority += (label[valid] == counts.argmax()).sum()
        total += valid.sum()
    assert correct / total > 1.5 * majority / total


def test_command_line_writes_the_same_bytes_as_the_api(tmp_path):
    """Also checks determinism across processes."""
    subprocess.run(
        [sys.executable, "-m", "deeplab_ssl.datasets.build_demo_data",
         f"--output_dir={tmp_path / 'cli'}", "--num_train=2", "--num_val=1", "--num_shards=1",
         "--height=24", "--width=32", "--seed=5"],
        check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    build_demo_data.build_demo(str(tmp_path / "api"), seed=5, num_train=2, num_val=1,
                               height=24, width=32, num_shards=1, progress=False)
    cli = _shard_bytes(tmp_path / "cli")
    assert sorted(cli) == ["train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
    assert cli == _shard_bytes(tmp_path / "api")
