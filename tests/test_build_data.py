"""The record builders on tiny generated files in each dataset's layout, and their checks."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_ssl.datasets import (build_camvid_data, build_cityscapes_data, build_data,
                                  build_drive_data, build_folder_data, build_voc2012_data,
                                  descriptors, records)

H, W = 12, 16


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _label(seed, num_classes, ignore_label=None, size=(H, W)):
    label = np.random.default_rng(seed).integers(0, num_classes, size, dtype=np.uint8)
    if ignore_label is not None:
        label[0, :] = ignore_label
    return label


def _save(array, path, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if palette:  # Like VOC's SegmentationClass: the palette index is the class.
        image = image.convert("P")
        image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
        image.frombytes(array.tobytes())
    image.save(path)
    return path


def _read(output_dir, split):
    paths = sorted(glob.glob(os.path.join(output_dir, records.shard_pattern(split))))
    out = {}
    for serialized in tf.data.TFRecordDataset(paths):
        example = records.parse_example(serialized)
        out[example["filename"].numpy().decode()] = (example["image"].numpy(),
                                                     example["label"].numpy()[..., 0])
    return out


def _write_pairs(tmp_path, names, num_classes=5, ignore_label=255, image_ext="png"):
    """Folder layout: images/NAME.png + labels/NAME.png; returns {name: (image, label)}."""
    data = {}
    for i, name in enumerate(names):
        data[name] = (_image(i), _label(i, num_classes, ignore_label))
        _save(data[name][0], str(tmp_path / "images" / f"{name}.{image_ext}"))
        _save(data[name][1], str(tmp_path / "labels" / f"{name}.png"))
    return data


def _run_cli(module, **flag_values):
    """Runs `python -m deeplab_ssl.datasets.MODULE --flag=value ...`."""
    subprocess.run(
        [sys.executable, "-m", f"deeplab_ssl.datasets.{module}"]
        + [f"--{k}={v}" for k, v in flag_values.items()],
        check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _same_shards(dir_a, dir_b, names=None):
    """Shards `names` (default: all, the same in both) are equal in dir_a and dir_b."""
    if names is None:
        names = sorted(os.listdir(dir_a))
        assert names == sorted(os.listdir(dir_b))
    for name in names:  # Byte for byte: records are serialized deterministically.
        assert (dir_a / name).read_bytes() == (dir_b / name).read_bytes(), name


# The shared writer: sharding, atomic shards, checks.

def test_write_split_shards_like_deeplab_and_round_trips(tmp_path):
    data = _write_pairs(tmp_path, [f"im{i}" for i in range(5)])
    paths = build_folder_data.build_folder(
        str(tmp_path / "images"), str(tmp_path / "labels"), str(tmp_path / "out"), "train",
        descriptors.custom_descriptor(5, 255), image_format="png", num_shards=2, progress=False)
    assert [os.path.basename(p) for p in paths] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    # ceil(5 / 2) = 3 examples in the first shard, as deeplab's builders.
    assert sum(1 for _ in tf.data.TFRecordDataset(paths[0])) == 3
    read = _read(str(tmp_path / "out"), "train")
    assert sorted(read) == sorted(data)
    for name, (image, label) in data.items():
        np.testing.assert_array_equal(read[name][0], image)  # PNG: lossless, bytes kept.
        np.testing.assert_array_equal(read[name][1], label)


def _encode_index(i):
    return records.encode_example(b"x", f"{i}", 1, 1, b"y")


def _write_indices(out, split, count, num_shards, fail_at=None):
    def encode(i):
        if i == fail_at:
            raise RuntimeError("interrupted")
        return _encode_index(i)
    return build_data.write_split(list(range(count)), encode, out, split, num_shards,
                                  descriptors.custom_descriptor(5, 255), progress=False)


def test_a_failed_rebuild_keeps_the_old_split_whole(tmp_path):
    out = tmp_path / "out"
    _write_indices(str(out), "train", 8, 4)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(RuntimeError, match="interrupted"):
        _write_indices(str(out), "train", 8, 4, fail_at=5)  # In shard 2 of 4.
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_killed_build_leaves_temporary_files_that_the_next_build_removes(tmp_path):
    out = tmp_path / "out"
    _write_indices(str(out), "train", 4, 2)
    (out / "train-00000-of-00002.tfrecord.tmp").write_bytes(b"half a shard")
    _write_indices(str(out), "train", 4, 2)
    assert not list(out.glob("*.tmp*"))


def test_manifest_and_description_are_written_with_the_split(tmp_path):
    out = str(tmp_path / "out")
    _write_indices(out, "train", 5, 2)
    manifest = records.read_manifest(out, "train")
    assert manifest["num_examples"] == 5
    assert [(s["name"], s["num_examples"]) for s in manifest["shards"]] == [
        ("train-00000-of-00002.tfrecord", 3), ("train-00001-of-00002.tfrecord", 2)]
    assert all(s["bytes"] == os.path.getsize(os.path.join(out, s["name"]))
               for s in manifest["shards"])
    assert manifest["builder"] == {}
    _write_indices(out, "val", 2, 1)
    description = descriptors.read_description(out)
    assert (description.num_classes, description.ignore_label) == (5, 255)
    assert description.splits_to_sizes == {"train": 5, "val": 2}


def test_rebuild_with_other_shard_count_removes_stale_shards(tmp_path):
    out = str(tmp_path / "out")
    _write_indices(out, "train", 4, 4)
    _write_indices(out, "train_aug", 4, 1)
    _write_indices(out, "train", 4, 2)
    assert sorted(name for name in os.listdir(out) if name.endswith(".tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "train_aug-00000-of-00001.tfrecord"]


def test_size_mismatch_names_the_files(tmp_path):
    image = _save(_image(0), str(tmp_path / "a.jpg"))
    label = _save(_label(0, 5, size=(H, W + 1)), str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match=r"a\.png is 12x17.*a\.jpg is 12x16"):
        build_data.encode_pair(image, label, 5, 255)


def test_out_of_range_label_names_the_file_and_value(tmp_path):
    image = _save(_image(0), str(tmp_path / "a.jpg"))
    label = _label(0, 5, ignore_label=255)
    label[3, 3] = 7
    label_path = _save(label, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match=r"a\.png has values \[7\]"):
        build_data.encode_pair(image, label_path, 5, 255)
    # The ignore label itself is fine; another dataset's ignore label is not.
    label[3, 3] = 255
    _save(label, label_path)
    build_data.encode_pair(image, label_path, 5, 255)
    with pytest.raises(ValueError, match=r"values \[255\]"):
        build_data.encode_pair(image, label_path, 5, 11)


def test_unreadable_files_are_named(tmp_path):
    label = _save(_label(0, 5), str(tmp_path / "a.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        build_data.encode_pair(str(broken), label, 5, 255)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(_save(_image(0), str(tmp_path / "b.png")), "rb").read()[:80])
    with pytest.raises(ValueError, match=r"cannot read image .*truncated\.png"):
        build_data.encode_pair(str(truncated), label, 5, 255)
    with pytest.raises(ValueError, match=r"cannot read label .*broken\.jpg"):
        build_data.encode_pair(label, str(broken), 5, 255)
    rgb_label = _save(_image(1), str(tmp_path / "rgb_label.png"))
    with pytest.raises(ValueError, match=r"rgb_label\.png has mode RGB"):
        build_data.encode_pair(label, rgb_label, 5, 255)


def test_folder_builder_reports_images_without_labels(tmp_path):
    _write_pairs(tmp_path, ["a", "b"])
    os.remove(tmp_path / "labels" / "b.png")
    with pytest.raises(ValueError, match=r"no label in .*labels for 1 files, e.g. \['b'\]"):
        build_folder_data.build_folder(
            str(tmp_path / "images"), str(tmp_path / "labels"), str(tmp_path / "out"),
            "train", descriptors.custom_descriptor(5, 255), image_format="png", progress=False)


def test_resize_is_bilinear_for_images_and_nearest_for_labels(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 3
    label[0, 0] = 255
    image = np.repeat(label[..., None] * 60, 3, axis=2).astype(np.uint8)
    image_path = _save(image, str(tmp_path / "a.png"))
    label_path = _save(label, str(tmp_path / "labels" / "a.png"))
    example = records.parse_example(tf.constant(
        build_data.encode_pair(image_path, label_path, 5, 255, size=(6, 8))))
    resized_label = example["label"].numpy()[..., 0]
    assert resized_label.shape == (6, 8)
    assert set(np.unique(resized_label)) <= {0, 3, 255}  # Nearest: no new values.
    np.testing.assert_array_equal(resized_label[:, 4:], 3)
    assert example["image"].numpy()[3, 1, 0] == 0 and example["image"].numpy()[3, 6, 0] == 180


# Each dataset's layout.

def test_voc_palette_labels_and_sbd_train_aug(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("v0\nv1\n")
    (lists / "val.txt").write_text("v2\n")
    (lists / "trainval.txt").write_text("v0\nv1\nv2\n")
    voc_labels, sbd_labels = {}, {}
    for i, name in enumerate(["v0", "v1", "v2", "s0", "s1"]):
        _save(_image(i), str(voc / "JPEGImages" / f"{name}.jpg"))
        if name.startswith("v"):  # VOC's palette PNGs, with the 255 boundary.
            voc_labels[name] = _label(i, 21, 255)
            _save(voc_labels[name], str(voc / "SegmentationClass" / f"{name}.png"), palette=True)
    # SBD has s0, s1 and also v1 and v2 (with other labels): v2 is VOC val, so not in train_aug;
    # v1 keeps VOC's label.
    cls = tmp_path / "benchmark_RELEASE" / "dataset" / "cls"
    cls.mkdir(parents=True)
    for i, name in enumerate(["s0", "s1", "v1", "v2"]):
        sbd_labels[name] = _label(10 + i, 21)
        scipy_io.savemat(str(cls / f"{name}.mat"), {"GTcls": {
            "Segmentation": sbd_labels[name], "Boundaries": np.zeros(1),
            "CategoriesPresent": np.zeros(1)}})
    out = str(tmp_path / "out")
    written = build_voc2012_data.build_voc2012(
        str(voc / "JPEGImages"), str(voc / "SegmentationClass"), str(lists), out,
        sbd_label_folder=str(cls), num_shards=2, progress=False)
    assert sorted(written) == ["train", "train_aug", "trainval", "val"]
    assert sorted(_read(out, "trainval")) == ["v0", "v1", "v2"]
    train_aug = _read(out, "train_aug")
    assert sorted(train_aug) == ["s0", "s1", "v0", "v1"]
    for name in ["v0", "v1"]:  # Palette indices become classes; 255 stays.
        np.testing.assert_array_equal(train_aug[name][1], voc_labels[name])
    for name in ["s0", "s1"]:
        np.testing.assert_array_equal(train_aug[name][1], sbd_labels[name])
    # JPEG images are stored as read, not re-encoded.
    np.testing.assert_array_equal(train_aug["s0"][0], tf.io.decode_jpeg(
        (voc / "JPEGImages" / "s0.jpg").read_bytes()).numpy())
    # Pre-converted SegmentationClassAug PNGs (here SBD's labels for its names, VOC's for VOC's
    # val image v2) give the same train_aug.
    aug = tmp_path / "SegmentationClassAug"
    for name, label in {**sbd_labels, "v0": voc_labels["v0"]}.items():
        _save(label, str(aug / f"{name}.png"))
    build_voc2012_data.build_voc2012(
        str(voc / "JPEGImages"), str(voc / "SegmentationClass"), str(lists),
        str(tmp_path / "aug_out"), sbd_label_folder=str(aug), splits=["train_aug"],
        num_shards=2, progress=False)
    _same_shards(tmp_path / "aug_out",
                 tmp_path / "out", names=["train_aug-00000-of-00002.tfrecord",
                                          "train_aug-00001-of-00002.tfrecord"])
    # The command line writes the same shards.
    _run_cli("build_voc2012_data", image_folder=voc / "JPEGImages",
             semantic_segmentation_folder=voc / "SegmentationClass", list_folder=lists,
             sbd_label_folder=cls, num_shards=2, output_dir=tmp_path / "cli")
    _same_shards(tmp_path / "out", tmp_path / "cli")


def test_voc_missing_files_fail_before_writing(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("nowhere\n")
    with pytest.raises(ValueError, match=r"'val': 2 files missing.*nowhere\.jpg"):
        build_voc2012_data.build_voc2012(str(tmp_path), str(tmp_path), str(lists),
                                         str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_cityscapes_train_ids_and_label_ids_fallback(tmp_path):
    root = tmp_path / "cityscapes"
    train_ids = _label(0, 19, 255)
    label_ids = np.array([[7, 8, 0, 33, 26, 1, 23, 255]] * 2, np.uint8)
    for split, city, stem, label, suffix in [
            ("train", "aachen", "aachen_000000_000019", train_ids, "labelTrainIds"),
            ("val", "lindau", "lindau_000001_000019", label_ids, "labelIds")]:
        _save(np.zeros(label.shape + (3,), np.uint8),
              str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
        _save(label, str(root / "gtFine" / split / city / f"{stem}_gtFine_{suffix}.png"))
    out = str(tmp_path / "out")
    build_cityscapes_data.build_cityscapes(str(root), out, num_shards=1, progress=False)
    train = _read(out, "train_fine")
    np.testing.assert_array_equal(train["aachen_000000_000019"][1], train_ids)
    val = _read(out, "val_fine")
    np.testing.assert_array_equal(val["lindau_000001_000019"][1],
                                  [[0, 1, 255, 18, 13, 255, 10, 255]] * 2)
    build_cityscapes_data.build_cityscapes(str(root), out, splits=["trainval_fine"],
                                           num_shards=1, progress=False)
    assert sorted(_read(out, "trainval_fine")) == ["aachen_000000_000019",
                                                   "lindau_000001_000019"]
    _run_cli("build_cityscapes_data", cityscapes_root=root, num_shards=1,
             splits="train_fine,val_fine,trainval_fine", output_dir=tmp_path / "cli")
    _same_shards(tmp_path / "out", tmp_path / "cli")


def test_camvid_both_layouts_with_resize(tmp_path):
    root = tmp_path / "camvid"
    data = {}
    for split, images, labels, ext in [("train", "train/images", "train/labels", "jpg"),
                                       ("val", "val", "valannot", "png")]:
        for i in range(2):
            name = f"{split}{i}"
            # Constant on 2x2 blocks, so that halving with any nearest-neighbour rule gives
            # the blocks' values.
            data[name] = _label(i, 11, ignore_label=11, size=(H // 2, W // 2))
            _save(_image(i), str(root / images / f"{name}.{ext}"))
            _save(np.kron(data[name], np.ones((2, 2), np.uint8)),
                  str(root / labels / f"{name}.png"))
    out = str(tmp_path / "out")
    written = build_camvid_data.build_camvid(str(root), out, num_shards=1, size=(6, 8),
                                             progress=False)
    assert sorted(written) == ["train", "val"]
    for split in written:
        read = _read(out, split)
        assert sorted(read) == [f"{split}0", f"{split}1"]
        for name, (image, label) in read.items():
            assert image.shape == (6, 8, 3)
            np.testing.assert_array_equal(label, data[name])
    _run_cli("build_camvid_data", camvid_root=root, num_shards=1, resize="6,8",
             output_dir=tmp_path / "cli")
    _same_shards(tmp_path / "out", tmp_path / "cli")


def test_camvid_out_of_range_label_named(tmp_path):
    root = tmp_path / "camvid"
    _save(_image(0), str(root / "test" / "images" / "x.jpg"))
    _save(np.full((H, W), 12, np.uint8), str(root / "test" / "labels" / "x.png"))
    with pytest.raises(ValueError, match=r"x\.png has values \[12\].*ignore_label 11"):
        build_camvid_data.build_camvid(str(root), str(tmp_path / "out"), progress=False)
    assert not glob.glob(str(tmp_path / "out" / "*"))


def test_folder_command_line_with_dataset_flag(tmp_path):
    _write_pairs(tmp_path, ["a", "b", "c"], num_classes=11, ignore_label=11)
    _run_cli("build_folder_data", image_folder=tmp_path / "images",
             semantic_segmentation_folder=tmp_path / "labels", image_format="png",
             dataset="camvid", split="val", num_shards=1, resize="6,8",
             output_dir=tmp_path / "out")
    read = _read(str(tmp_path / "out"), "val")
    assert sorted(read) == ["a", "b", "c"] and read["a"][0].shape == (6, 8, 3)


def _write_drive(root, folder, numbers):
    """DRIVE's layout: TIFF images, GIF vessel maps (0 / 255) and GIF field-of-view masks.

    Returns {image name: expected label}: 1 vessel, 0 background, 255 outside the field of view.
    """
    expected = {}
    for number in numbers:
        rng = np.random.default_rng(int(number))
        vessels = np.where(rng.random((H, W)) < 0.2, 255, 0).astype(np.uint8)
        mask = np.full((H, W), 255, np.uint8)
        mask[:2] = mask[:, :3] = 0  # Outside the field of view.
        for sub, name, array in (("images", f"{number}_{folder}.tif", _image(int(number))),
                                 ("1st_manual", f"{number}_manual1.gif", vessels),
                                 ("mask", f"{number}_{folder}_mask.gif", mask)):
            _save(array, str(root / folder / sub / name))
        expected[f"{number}_{folder}"] = np.where(mask == 0, 255, vessels // 255)
    return expected


def test_drive_layout_builds_its_splits_with_the_field_of_view_ignored(tmp_path):
    root = tmp_path / "DRIVE"
    training = _write_drive(root, "training", [str(n) for n in range(34, 41)])
    test = _write_drive(root, "test", ["01", "02"])
    out = tmp_path / "out"
    written = build_drive_data.build_drive(str(root), str(out), progress=False)
    assert sorted(written) == ["test", "train", "trainval", "val"]
    val_names = [f"{n}_training" for n in build_drive_data.VAL_IMAGES]
    assert sorted(_read(str(out), "val")) == val_names
    assert sorted(_read(str(out), "train")) == ["34_training", "35_training"]
    assert sorted(_read(str(out), "trainval")) == sorted(training)
    for name, (image, label) in {**_read(str(out), "trainval"), **_read(str(out), "test")}.items():
        number, folder = name.split("_")
        np.testing.assert_array_equal(image, _image(int(number)))  # TIFF -> lossless PNG.
        np.testing.assert_array_equal(label, {**training, **test}[name])
    assert set(np.unique(label)) == {0, 1, 255}
    _run_cli("build_drive_data", drive_root=root, splits="val", output_dir=tmp_path / "cli")
    _same_shards(out, tmp_path / "cli", names=["val-00000-of-00001.tfrecord"])


def test_drive_missing_files_are_named(tmp_path):
    root = tmp_path / "DRIVE"
    _write_drive(root, "training", ["36"])
    os.remove(root / "training" / "mask" / "36_training_mask.gif")
    with pytest.raises(ValueError, match=r"36_training_mask\.gif is missing"):
        build_drive_data.build_drive(str(root), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match=r"no DRIVE images in .*test"):
        build_drive_data.build_drive(str(root), str(tmp_path / "out"), splits=["test"],
                                     progress=False)
