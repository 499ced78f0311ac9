"""Tables and the picture of the DRIVE retinal-vessel study (issue 27) from its saved runs.

    python scripts/plot_drive.py [--docs docs]

Reads results/drive/ as benchmarks/reproduce_drive.sh keeps it (the layout: study_report.py):
calibration/SETTING/seed0/ and each method's runs at each learning rate (study/METHOD at the
frozen rate of configs/drive/train.flags, grid/METHOD_lrRATE at the others), their
eval_val.json (eval.py's: f1, auc, sensitivity, mean_image_f1, miou, ...) and train_seconds.
Prints the markdown tables:
- the calibration (softmax CE, seed 0): each setting's val F1 and AUC of the vessels, mIoU and
  training minutes;
- the learning rate grid: val F1 of seed 0 per method and rate, complete or in progress by
  reproduce_drive.sh's rule (METRIC=f1), the best rate of a complete grid in bold;
- each method of a complete grid at its best rate, over its seeds: mean and std of val F1,
  Welch's t (and p) of F1 against softmax CE and against Lovasz-softmax, and AUC, mIoU,
  sensitivity and the per-image mean F1 as mean +- std.
Writes --docs/drive_vessels.png: rows = the val images of data/drive richest in thin vessels,
each cropped to its WINDOW x WINDOW window with the most thin-vessel pixels of the truth; columns
= image, truth, and the vessels predicted by each method of the last table at its best rate:
the val labels that its run of the lowest seed with them kept (val_predictions/); methods with
no such run are left out, and said so on stderr. Needs matplotlib (`pip install -e '.[plot]'`).
"""
import argparse
import os
import sys
import textwrap

import numpy as np
import scipy.ndimage

import study_report

# The losses of the study (reproduce_drive.sh's GRID_METHODS) in the order of the tables, with
# the names the tables use.
METHODS = {method: study_report.METHOD_NAMES[method] for method in
           ("ce", "bce", "topk_ce", "lovasz", "ssl3", "ssl_softmax_topk_balanced")}
# F1 of the best-rate table is tested against these: (name in the header, method).
REFERENCES = [("CE", "ce"), ("Lovasz-softmax", "lovasz")]
RESULTS = "results/drive"
DATA = "data/drive"
TRAIN_FLAGS = "configs/drive/train.flags"
# Side of the square crop of the pictures, in pixels (DRIVE's images are 565 x 584).
WINDOW = 160

# The numbers of the tables, of the vessels (class 1) inside the field of view (eval.py's).
F1 = study_report.Metric("val F1", lambda e: e["f1"], "{:.4f}")
AUC = study_report.Metric("AUC", lambda e: e["auc"], "{:.4f}")
MIOU = study_report.Metric("val mIoU (%)", lambda e: 100 * e["miou"], "{:.2f}")
SENSITIVITY = study_report.Metric("sensitivity", lambda e: e["sensitivity"], "{:.4f}")
MEAN_IMAGE_F1 = study_report.Metric("mean image F1", lambda e: e["mean_image_f1"], "{:.4f}")


def calibration_table(folder):
    """Markdown: the settings of the calibration folder (folder/SETTING/seed0/), by name: the
    scales eval.py ran at, val F1, AUC, mIoU and the training's minutes."""
    metrics = (F1, AUC, MIOU)
    lines = ["| setting | eval scales | " + " | ".join(m.name for m in metrics)
             + " | training (min) |",
             "| --- | ---: |" + " ---: |" * (len(metrics) + 1)]
    for setting, evaluation, seconds in study_report.load_settings(folder):
        scales = " ".join(f"{scale:g}" for scale in study_report.eval_scales(evaluation))
        cells = [scales] + [m.number_format.format(m.value(evaluation)) for m in metrics]
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {seconds / 60:.1f} |")
    return "\n".join(lines)


def mean_std_text(metric, evaluations):
    """`metric` over the evaluations as a table cell: "mean +- std", the mean alone for one."""
    mean, std = study_report.mean_std([metric.value(e) for e in evaluations])
    text = metric.number_format.format(mean)
    return text if len(evaluations) < 2 else f"{text} +- {metric.number_format.format(std)}"


def contest_table(contest):
    """Markdown: each method of `contest` (study_report.best_rate_runs) at its best rate, over
    its seeds: val F1 (mean, std, Welch's t against REFERENCES), then AUC, mIoU, sensitivity
    and the per-image mean F1 as mean +- std."""
    columns = [(metric.name, lambda evaluations, metric=metric: mean_std_text(metric, evaluations))
               for metric in (AUC, MIOU, SENSITIVITY, MEAN_IMAGE_F1)]
    return study_report.contest_table(contest, METHODS, F1, REFERENCES, columns)


def thin_vessels(label):
    """bool [H, W]: the vessel pixels (1) of a label map on vessels narrower than 3 pixels,
    those that no 3 x 3 square of vessel pixels covers."""
    vessels = label == 1
    return vessels & ~scipy.ndimage.binary_opening(vessels, structure=np.ones((3, 3)))


def thin_vessel_window(label, size):
    """(row slice, column slice) of the size x size window (smaller where the map is) of a
    label map with the most thin-vessel pixels (thin_vessels), the first in row-major order of
    equal ones."""
    size = min(size, *label.shape)
    # Sums of the thin pixels above and left of each position: a window's count from 4 of them.
    sums = np.pad(thin_vessels(label).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    top, left = np.unravel_index(np.argmax(counts), counts.shape)
    return slice(top, top + size), slice(left, left + size)


def prediction_folders(contest, results, base_rate):
    """{method: (the val_predictions folder of its run of the lowest seed that kept one, that
    seed)} of the methods of `contest` at their best rate; the others said on stderr."""
    folders = {}
    for method, (rate, seed_runs) in contest.items():
        run_folder = study_report.rate_folder(results, method, rate, base_rate)
        for name, _, _ in seed_runs:
            folder = os.path.join(run_folder, name, "val_predictions")
            if os.path.isdir(folder):
                folders[method] = folder, int(name[len("seed"):])
                break
        else:
            print(f"drive_vessels.png: no val_predictions in {run_folder}/seed*, "
                  f"{METHODS[method]} left out", file=sys.stderr)
    return folders


def plot_vessels(path, folders, titles, data_dir, window, num_images=3):
    """Writes the picture grid of vessel maps at `path`: rows = the `num_images` val images of
    `data_dir` with the most thin-vessel pixels in their `window` x `window` window
    (thin_vessel_window), in the order of the split, each cropped to it; columns = image,
    truth, and the predicted labels in each folder of `folders` ({method: folder of label PNGs
    named after the image files, as vis.py's raw predictions}), titled by `titles` ({method:
    title}). Pixels outside the field of view show as in the truth."""
    from PIL import Image

    from deeplab_ssl import visualization
    from deeplab_ssl.datasets import descriptors, input_pipeline
    drive = descriptors.get_descriptor("drive")
    examples = [(e["image"][0].numpy().astype(np.uint8), e["label"][0, ..., 0].numpy(),
                 os.path.splitext(os.path.basename(e["filename"][0].numpy().decode()))[0])
                for e in input_pipeline.get_dataset(drive, data_dir, "val", 1)]
    windows = [thin_vessel_window(label, window) for _, label, _ in examples]
    thin_counts = [thin_vessels(label)[crop].sum()
                   for (_, label, _), crop in zip(examples, windows)]
    richest = sorted(range(len(examples)), key=lambda i: -thin_counts[i])[:num_images]
    chosen = [(examples[i], windows[i]) for i in sorted(richest)]
    colormap = visualization.get_colormap(drive.colormap)
    columns = [[image[crop] for (image, _, _), crop in chosen],
               [visualization.label_to_color_image(label[crop], colormap)
                for (_, label, _), crop in chosen]]
    for folder in folders.values():
        column = []
        for (_, label, name), crop in chosen:
            predicted = np.asarray(Image.open(os.path.join(folder, f"{name}.png")))
            vessels = np.where(label == drive.ignore_label, label, predicted)
            column.append(visualization.label_to_color_image(vessels[crop], colormap))
        columns.append(column)
    study_report.save_picture_grid(
        path, ["image", "truth"] + [titles[m] for m in folders], columns, panel_size=(2.4, 2.6))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default="docs", help="where drive_vessels.png goes")
    args = parser.parse_args(argv)
    os.makedirs(args.docs, exist_ok=True)
    if not os.path.isdir(RESULTS):
        raise SystemExit(f"no results under {RESULTS}: run benchmarks/reproduce_drive.sh")
    print("Calibration (softmax CE, seed 0):", calibration_table(
        os.path.join(RESULTS, "calibration")), sep="\n", end="\n\n")
    base_rate = study_report.read_base_rate(TRAIN_FLAGS)
    grid = study_report.grid_scores(RESULTS, METHODS, base_rate, F1)
    if not grid:
        return
    print("Learning rate grid (seed 0):", study_report.grid_table(grid, METHODS, F1), sep="\n",
          end="\n\n")
    contest = study_report.best_rate_runs(RESULTS, grid, base_rate)
    if not contest:
        return
    print("Each method at its best rate:", contest_table(contest), sep="\n", end="\n\n")
    folders = prediction_folders(contest, RESULTS, base_rate)
    if folders:
        titles = {m: textwrap.fill(METHODS[m], 22) + f"\nlr {contest[m][0]}, seed {seed}"
                  for m, (_, seed) in folders.items()}
        plot_vessels(os.path.join(args.docs, "drive_vessels.png"),
                     {m: folder for m, (folder, _) in folders.items()}, titles, DATA, WINDOW)


if __name__ == "__main__":
    main()
