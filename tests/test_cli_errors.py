"""The programs refuse bad input in one line, `error: ...` with exit status 2, no traceback, and
print nothing of TensorFlow's start-up first."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import deeplab_ssl
from deeplab_ssl import errors
from deeplab_ssl import model as model_lib
from deeplab_ssl.datasets import build_data, descriptors, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FLAGS = ["--model_variant=mobilenet_v2", "--depth_multiplier=0.25"]


def refusal(command, *must_name):
    """Runs `command` (arguments after the Python executable) as a user would, without
    TF_CPP_MIN_LOG_LEVEL, and checks the refusal; returns its error line."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    # The lines but progress bars (a build's, the program's own output).
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "img/s]" not in line]
    assert result.returncode == errors.EXIT_STATUS, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not any(deeplab_ssl._STARTUP_NOISE.search(line) for line in lines), lines
    assert len(lines) <= 3 and lines[-1].startswith("error: "), lines
    for name in must_name:
        assert name in lines[-1], lines
    return lines[-1]


def _png(array):
    return tf.io.encode_png(array).numpy()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A train.py-like folder: a 10-class checkpoint of step 1, no model_options.json."""
    folder = tmp_path_factory.mktemp("train")
    model = model_lib.build_deeplab("mobilenet_v2", 10, depth_multiplier=0.25)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(folder), 1,
                               checkpoint_name="model.ckpt").save(checkpoint_number=1)
    return folder


def test_builders_name_the_bad_file(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "labels" / "a.png")  # RGB
    build = ["-m", "deeplab_ssl.datasets.build_folder_data", f"--image_folder={tmp_path}/images",
             f"--semantic_segmentation_folder={tmp_path}/labels", "--num_classes=3",
             f"--output_dir={tmp_path}/out"]
    refusal(build, "labels/a.png", "mode RGB")
    assert not (tmp_path / "out").exists()  # A failed build leaves no empty folder.
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "a.png")
    refusal(build, "cannot read image", "images/a.jpg")


def test_eval_names_the_split_and_the_flag(checkpoint_dir, tmp_path):
    # A missing folder and model flags that do not fit: test_eval_cli.py. A killed build left
    # only temporary files.
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "val-00000-of-00001.tfrecord.tmp").write_bytes(b"")
    refusal(["eval.py", *MODEL_FLAGS, "--dataset=demo", f"--dataset_dir={tmp_path}/killed",
             f"--checkpoint_dir={checkpoint_dir}", "--max_number_of_evaluations=1"],
            "'val'", "temporary files")
    # A typo'd flag: absl's suggestion, in the same form.
    refusal(["eval.py", f"--checkpoint_dir={checkpoint_dir}", "--eval_batch_sise=2"],
            "eval_batch_sise", "eval_batch_size")


def test_train_names_a_label_outside_the_classes(tmp_path):
    label = np.zeros((40, 40, 1), np.uint8)
    label[5, 5] = 12  # demo has 10 classes, ignore label 255
    example = records.encode_example(_png(np.zeros((40, 40, 3), np.uint8)), "odd.png", 40, 40,
                                     _png(label), image_format="png")
    build_data.write_split([example] * 4, lambda e: e, str(tmp_path / "data"), "train", 1,
                           descriptors.get_descriptor("demo"), progress=False)
    refusal(["train.py", *MODEL_FLAGS, "--dataset=demo", f"--dataset_dir={tmp_path}/data",
             f"--train_logdir={tmp_path}/train", "--train_crop_size=33,33",
             "--train_batch_size=2", "--training_number_of_steps=2"],
            "bad data: label value 12 in odd.png", "--ignore_label")


# train.py with the split checked whole at the start (as before a shard was damaged), then a
# shard truncated: TensorFlow's DataLossError names no file.
DAMAGED_DURING_TRAINING = """
import glob, runpy, sys
from deeplab_ssl.datasets import input_pipeline
data = sys.argv[1]
real = input_pipeline.complete_shards
whole = real(data, "train")
shard = sorted(glob.glob(data + "/train-*.tfrecord"))[0]
content = open(shard, "rb").read()
open(shard, "wb").write(content[:len(content) // 2])
checks = []
def checked_before_the_damage(*args, **kwargs):
    checks.append(args)
    return whole if len(checks) == 1 else real(*args, **kwargs)
input_pipeline.complete_shards = checked_before_the_damage
sys.argv = ["train.py"] + sys.argv[2:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_shard_damaged_during_training_is_named(demo_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in os.listdir(demo_dir):
        (data / name).write_bytes((tmp_path.parent / demo_dir / name).read_bytes())
    refusal(["-c", DAMAGED_DURING_TRAINING, str(data), *MODEL_FLAGS, "--dataset=demo",
             f"--dataset_dir={data}", f"--train_logdir={tmp_path}/train",
             "--train_crop_size=33,33", "--train_batch_size=2", "--training_number_of_steps=50"],
            "shard", "train-00000-of-", "damaged", "--skip_bad_records")
