"""The README's "Your own data" commands, run as written on a generated folder of images."""
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small and short, appended to the README's train.py command (later flags win).
TRAIN_OVERRIDES = ("--depth_multiplier=0.25 --train_crop_size=33,33 --train_batch_size=2 "
                   "--training_number_of_steps=2 --save_interval_steps=2 --log_steps=1 "
                   "--nosave_summaries_images")


def readme_block(heading):
    """The first ```sh block after the line that starts with `heading`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.search(r"```sh\n(.*?)```", text[text.index(heading):], re.S).group(1)


def write_folder(root, split, count):
    rng = np.random.default_rng(len(split))
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(root, folder, split))
    for i in range(count):
        label = rng.integers(0, 5, (24, 30)).astype(np.uint8)
        label[:2] = 255
        image = (label[..., None] * 50 + rng.integers(0, 20, (24, 30, 3))).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", split, f"{split}{i}.jpg"))
        Image.fromarray(label).save(os.path.join(root, "labels", split, f"{split}{i}.png"))


def test_your_own_data_runs_as_written(tmp_path):
    write_folder(tmp_path, "train", 4)
    write_folder(tmp_path, "val", 2)
    script = readme_block("**Your own data**")
    script = re.sub(r"^(\s*)python (\w+\.py)", rf"\1{sys.executable} {ROOT}/\2", script,
                    flags=re.M)
    script = re.sub(r"^(\s*)python -m", rf"\1{sys.executable} -m", script, flags=re.M)
    script = script.replace("--training_number_of_steps=30000",
                            "--training_number_of_steps=30000 " + TRAIN_OVERRIDES)
    assert TRAIN_OVERRIDES in script  # The README still trains with that flag.
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mIoU" in result.stdout
    assert (tmp_path / "exported" / "mine" / "1" / "saved_model.pb").exists()
    assert sorted(os.listdir(tmp_path / "predictions"))[:2] == ["val0_overlay.png",
                                                               "val0_prediction.png"]
