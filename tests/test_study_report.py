"""The study reports (scripts/study_report.py, scripts/plot_drive.py) on a made-up results tree:
the statistics over seeds, the learning rate grid's rule, the tables' numbers, the thin-vessel
window, and the picture grid from saved predictions."""
import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
scipy_stats = pytest.importorskip("scipy.stats")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import plot_drive  # noqa: E402
import study_report  # noqa: E402

from deeplab_ssl import visualization  # noqa: E402
from deeplab_ssl.datasets import descriptors  # noqa: E402


def test_mean_std_and_welch_t():
    a, b = [0.75, 0.76, 0.74], [0.78, 0.79, 0.80, 0.81]
    assert study_report.mean_std(a) == pytest.approx((0.75, 0.01))
    assert math.isnan(study_report.mean_std([0.7])[1])
    t, p = study_report.welch_t(a, b)
    # Welch's t by its formula, and scipy's.
    by_hand = (np.mean(a) - np.mean(b)) / math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 4)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(by_hand) == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert study_report.welch_text(a, b) == f"{t:+.1f} ({p:.2g})"
    assert math.isnan(study_report.welch_t(a, [0.8])[0])
    assert study_report.welch_text(a, [0.8], missing="-") == "-"


@pytest.mark.parametrize("scores, best, complete", [
    ({"0.01": 0.70, "0.02": 0.75, "0.04": 0.74}, "0.02", True),
    ({"0.01": 0.70, "0.02": 0.75}, "0.02", False),  # 0.04 missing.
    ({"0.01": 0.78, "0.02": 0.77, "0.04": 0.60}, "0.01", False),  # 0.005 missing.
    ({"0.005": 0.76, "0.01": 0.78, "0.02": 0.77, "0.04": 0.60}, "0.01", True),
    ({"0.01": 0.70, "0.02": 0.72, "0.04": 0.80}, "0.04", False),  # 0.08 missing.
    ({"0.01": 0.70, "0.02": 0.72, "0.04": 0.80, "0.08": 0.81}, "0.08", False),  # 0.16 missing.
    ({"0.01": 0.70, "0.02": 0.72, "0.04": 0.80, "0.08": 0.81, "0.16": 0.82}, "0.16", True),
    ({"0.0025": 0.8, "0.005": 0.76, "0.01": 0.7, "0.02": 0.6, "0.04": 0.5}, "0.0025", True),
    # A diverged run (None) counts 0, as in study_lib.sh: 0.01 is best, so 0.005 is asked.
    ({"0.01": 0.70, "0.02": None, "0.04": None}, "0.01", False),
    # Ties go to the first rate: 0.01 here, with 0.005 run below it.
    ({"0.005": 0.6, "0.01": 0.70, "0.02": 0.70, "0.04": 0.70}, "0.01", True),
])
def test_grid_rule(scores, best, complete):
    assert study_report.best_rate(scores) == best
    assert study_report.grid_complete(scores) == complete


def _run(root, stage, name, seed, f1, seconds=900, eval_scales="1"):
    """A finished run of study_lib.sh with made-up numbers derived from its F1."""
    folder = root / "results" / "drive" / stage / name / f"seed{seed}"
    folder.mkdir(parents=True)
    evaluation = dict(f1=f1, auc=f1 + 0.2, miou=f1 - 0.1, sensitivity=f1 - 0.05,
                      eval_scales=eval_scales,
                      mean_image_f1=f1 - 0.01, specificity=0.98, accuracy=0.96,
                      per_class_iou={"background": 0.9, "vessel": f1 - 0.2})
    (folder / "eval_val.json").write_text(json.dumps(evaluation))
    (folder / "train_log.jsonl").write_text(json.dumps(dict(step=10, loss=0.5)) + "\n")
    (folder / "train_seconds").write_text(f"{seconds}\n")
    return folder


def _diverged(root, name):
    folder = root / "results" / "drive" / "grid" / name / "seed0"
    folder.mkdir(parents=True)
    (folder / "diverged").write_text("non-finite loss at step 3\n")


def _cells(output, first_cell):
    """The cells of the markdown row of `output` whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{output}")


@pytest.fixture(scope="module")
def tiny_drive(tmp_path_factory):
    """A folder of DRIVE-like val records of 5 images 40 x 48, 36_training to 40_training: for
    the picture grid."""
    from deeplab_ssl.datasets import build_data, descriptors
    root = tmp_path_factory.mktemp("tiny_drive")
    drive = descriptors.get_descriptor("drive")
    rng = np.random.default_rng(0)
    items = []
    for i in range(5):
        image = rng.integers(0, 256, size=(40, 48, 3)).astype(np.uint8)
        label = np.zeros((40, 48), np.uint8)
        label[:, 10 + i] = 1  # A thin vessel.
        label[20:26, :] = 1  # A thick one.
        label[:2] = 255  # Outside the field of view.
        items.append((f"{36 + i}_training", image, label))
    build_data.write_split(items, lambda item: build_data.encode_arrays(*item, 2, 255),
                           str(root / "data"), "val", 1, drive, progress=False)
    return root / "data"


def test_drive_tables_and_picture(tmp_path, monkeypatch, capsys, tiny_drive):
    (tmp_path / "configs" / "drive").mkdir(parents=True)
    (tmp_path / "configs" / "drive" / "train.flags").write_text(
        "--output_stride=16\n--base_learning_rate=0.01\n")
    # The calibration, finished in the order os8, then os16: listed by name.
    for index, (setting, f1, seconds, scales) in enumerate((
            ("os8_crop321", 0.78, 900, "1"), ("os16_crop321_scale2", 0.80, 870, "2"))):
        folder = _run(tmp_path, "calibration", setting, 0, f1, seconds, scales)
        os.utime(folder / "eval_val.json", (1000 + index, 1000 + index))
    # softmax CE: best at 0.02 (seeds 0-2), a complete grid; evaluated at twice the size.
    _run(tmp_path, "study", "ce", 0, 0.70)
    for seed, f1 in enumerate((0.75, 0.76, 0.74)):
        _run(tmp_path, "grid", "ce_lr0.02", seed, f1, eval_scales="2")
    _run(tmp_path, "grid", "ce_lr0.04", 0, 0.74)
    # Lovasz: 0.01 beats 0.02, so 0.005 was run; best at the frozen rate (study/).
    for seed, f1 in enumerate((0.78, 0.79, 0.80)):
        _run(tmp_path, "study", "lovasz", seed, f1)
    _run(tmp_path, "grid", "lovasz_lr0.02", 0, 0.77)
    _run(tmp_path, "grid", "lovasz_lr0.04", 0, 0.60)
    _run(tmp_path, "grid", "lovasz_lr0.005", 0, 0.76)
    # top-k CE: best at 0.04 with 0.08 run: complete, one seed.
    for rate, f1 in (("0.02", 0.72), ("0.04", 0.80), ("0.08", 0.79)):
        _run(tmp_path, "grid", f"topk_ce_lr{rate}", 0, f1)
    _run(tmp_path, "study", "topk_ce", 0, 0.70)
    # SSL (3): diverged at 0.02 and 0.04, 0.005 not run yet: in progress.
    _run(tmp_path, "study", "ssl3", 0, 0.70)
    _diverged(tmp_path, "ssl3_lr0.02")
    _diverged(tmp_path, "ssl3_lr0.04")
    # sigmoid BCE: 0.04 not run yet.
    _run(tmp_path, "study", "bce", 0, 0.71)
    _run(tmp_path, "grid", "bce_lr0.02", 0, 0.73)
    # softmax CE's predicted val labels, kept by its seeds 1 (all vessel) and 2 at its best
    # rate; the others kept none.
    for seed, predicted in ((1, 1), (2, 0)):
        folder = tmp_path / "results" / "drive" / "grid" / "ce_lr0.02" / f"seed{seed}"
        (folder / "val_predictions").mkdir()
        for i in range(5):
            visualization.save_png(np.full((40, 48), predicted),
                                   folder / "val_predictions" / f"{36 + i}_training.png")
    (tmp_path / "data").mkdir()
    os.symlink(tiny_drive, tmp_path / "data" / "drive")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plot_drive, "WINDOW", 24)
    pictures, save_picture_grid = [], study_report.save_picture_grid
    monkeypatch.setattr(study_report, "save_picture_grid", lambda path, titles, columns, **kw: (
        pictures.append((titles, columns)) or save_picture_grid(path, titles, columns, **kw)))
    plot_drive.main(["--docs", str(tmp_path)])
    output, errors = capsys.readouterr()

    assert output.index("os16_crop321_scale2") < output.index("os8_crop321")
    assert _cells(output, "os16_crop321_scale2") == [
        "os16_crop321_scale2", "2", "0.8000", "1.0000", "70.00", "14.5"]
    assert _cells(output, "softmax CE")[1:] == ["", "0.7000", "**0.7500**", "0.7400", "",
                                                "complete"]
    assert _cells(output, "Lovasz-softmax")[1:] == ["0.7600", "**0.7800**", "0.7700", "0.6000",
                                                    "", "complete"]
    assert _cells(output, "top-k CE (25%)")[1:] == ["", "0.7000", "0.7200", "**0.8000**",
                                                    "0.7900", "complete"]
    assert _cells(output, "SSL (3)")[1:] == ["", "0.7000", "diverged", "diverged", "",
                                             "in progress"]
    assert _cells(output, "sigmoid BCE")[-1] == "in progress"

    contest = output[output.index("Each method at its best rate:"):]
    assert _cells(contest, "method") == [
        "method", "lr", "seeds", "val F1", "std", "t vs CE (p)", "t vs Lovasz-softmax (p)",
        "AUC", "val mIoU (%)", "sensitivity", "mean image F1"]
    ce, lovasz = [0.75, 0.76, 0.74], [0.78, 0.79, 0.80]
    expected = scipy_stats.ttest_ind(ce, lovasz, equal_var=False)
    against_lovasz = f"{expected.statistic:+.1f} ({expected.pvalue:.2g})"
    assert against_lovasz.startswith("-4.9 ")
    assert _cells(contest, "softmax CE") == [
        "softmax CE", "0.02", "3", "0.7500", "0.0100", "", against_lovasz, "0.9500 +- 0.0100",
        "65.00 +- 1.00", "0.7000 +- 0.0100", "0.7400 +- 0.0100"]
    assert _cells(contest, "Lovasz-softmax")[:7] == [
        "Lovasz-softmax", "0.01", "3", "0.7900", "0.0100",
        f"{-expected.statistic:+.1f} ({expected.pvalue:.2g})", ""]
    # One seed: no std, no t.
    assert _cells(contest, "top-k CE (25%)") == [
        "top-k CE (25%)", "0.04", "1", "0.8000", "-", "", "", "1.0000", "70.00", "0.7500",
        "0.7900"]
    assert "SSL (3)" not in contest and "sigmoid BCE" not in contest

    # The picture: image, truth and softmax CE's seed 1, the 3 images richest in thin vessels;
    # its vessels everywhere but outside the field of view, shown as in the truth.
    [(titles, columns)] = pictures
    assert titles == ["image", "truth", "softmax CE\nlr 0.02, seed 1"]
    drive = descriptors.get_descriptor("drive")
    colormap = visualization.get_colormap(drive.colormap)
    for truth, predicted in zip(columns[1], columns[2]):
        assert truth.shape == predicted.shape == (24, 24, 3)
        outside = (truth == colormap[drive.ignore_label]).all(-1)
        assert outside.any() and not outside.all()
        assert (predicted[outside] == colormap[drive.ignore_label]).all()
        assert (predicted[~outside] == colormap[1]).all()
    for method in ("top-k CE (25%)", "Lovasz-softmax"):
        assert f"{method} left out" in errors
    import matplotlib.image
    picture = matplotlib.image.imread(tmp_path / "drive_vessels.png")
    assert picture.shape[:2] == (3 * 260, 3 * 240)


def test_thin_vessel_window():
    label = np.zeros((60, 80), np.uint8)
    label[:, 5:10] = 1  # A thick vessel, 5 wide: not thin.
    label[30:50, 60] = 1  # A 1-pixel vessel, 20 long.
    label[40, 20:30] = 1  # A 1-pixel vessel, 10 long.
    label[0] = 255
    thin = plot_drive.thin_vessels(label)
    assert thin.sum() == 30 and not thin[:, 5:10].any()
    rows, columns = plot_drive.thin_vessel_window(label, 20)
    assert thin[rows, columns].sum() == 20 and columns.start <= 60 < columns.stop
    assert (rows.start, columns.start) == (30, 41)  # The first of the windows holding it all.
    # At most the map's size: 60 x 60, holding both thin vessels from column 1.
    assert plot_drive.thin_vessel_window(label, 100) == (slice(0, 60), slice(1, 61))
