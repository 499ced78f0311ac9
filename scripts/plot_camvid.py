"""Tables and pictures of the CamVid study (docs/results.md) from the saved runs.

    python scripts/plot_camvid.py [--results results/camvid] [--docs docs] [--runs runs/camvid]

Reads results/camvid/METHOD/seedN/{eval_val.json, train_log.jsonl} (benchmarks/reproduce_camvid.sh)
and prints the markdown tables of docs/results.md: mean and standard deviation of val mIoU per
method (the layout of the paper's Table 2) and per-class IoU (Table 4). Writes in --docs:
- camvid_curves.png: each method's training loss;
- camvid_hard_fraction.png: proportion of hard examples of the SSL runs (the paper's Fig. 4);
- camvid_error_statistics.png: y_nor, p_nor and e over training (Fig. 3), once an SSL (3) run
  logged them;
- camvid_predictions.png: val images with ground truth, softmax CE and SSL predictions, where
  the checkpoints of seed 0 are still in --runs.
Needs matplotlib (`pip install -e '.[plot]'`).
"""
import argparse
import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Methods in the order of the tables, with the names the tables use.
METHODS = {"ce": "softmax CE", "bce": "sigmoid BCE", "ssim7_3": "SSIM Eq. 7 (3)",
           "ssl1": "SSL (1)", "ssl3": "SSL (3)", "ssl7": "SSL (7)",
           "ssl3_ohem_only": "SSL (3), OHEM only", "ssl3_reweight_only": "SSL (3), reweight only"}


def load_runs(results_dir):
    """{method: [(seed, eval dict, [log lines])]} of the finished runs, in METHODS order."""
    runs = {}
    for method in METHODS:
        for path in sorted(glob.glob(os.path.join(results_dir, method, "seed*", "eval_val.json"))):
            folder = os.path.dirname(path)
            with open(path) as f:
                evaluation = json.load(f)
            with open(os.path.join(folder, "train_log.jsonl")) as f:
                log = [json.loads(line) for line in f]
            runs.setdefault(method, []).append((os.path.basename(folder), evaluation, log))
    return runs


def _mean_std(values):
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), std


def miou_table(runs):
    """Markdown: method, runs, mean and std of val mIoU and of pixel accuracy (%)."""
    lines = ["| method | runs | val mIoU (%) | std | pixel accuracy (%) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for method, method_runs in runs.items():
        miou = _mean_std([100 * e["miou"] for _, e, _ in method_runs])
        accuracy = _mean_std([100 * e["pixel_accuracy"] for _, e, _ in method_runs])
        std = f"{miou[1]:.2f}" if len(method_runs) > 1 else "-"
        lines.append(f"| {METHODS[method]} | {len(method_runs)} | {miou[0]:.2f} | {std} | "
                     f"{accuracy[0]:.2f} |")
    return "\n".join(lines)


def per_class_table(runs):
    """Markdown: per-class val IoU (%) per method, mean over its runs."""
    classes = list(next(iter(runs.values()))[0][1]["per_class_iou"])
    lines = ["| method | " + " | ".join(classes) + " | mIoU |",
             "| --- |" + " ---: |" * (len(classes) + 1)]
    for method, method_runs in runs.items():
        ious = [statistics.mean(100 * e["per_class_iou"][c] for _, e, _ in method_runs)
                for c in classes]
        miou = statistics.mean(100 * e["miou"] for _, e, _ in method_runs)
        lines.append(f"| {METHODS[method]} | " + " | ".join(f"{v:.1f}" for v in ious)
                     + f" | {miou:.1f} |")
    return "\n".join(lines)


def plot_curves(runs, path):
    """Each run's own objective (without weight decay) over the steps; scales differ by loss."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, (method, method_runs) in enumerate(runs.items()):
        for seed, _, log in method_runs:
            ax.plot([r["step"] for r in log], [r["loss"] for r in log], color=f"C{index}",
                    label=METHODS[method] if seed == method_runs[0][0] else None, lw=1)
    ax.set(xlabel="step", ylabel="training loss (each method's own)", yscale="log",
           title="CamVid 180x240, DeepLabv3 mobilenet_v2 from scratch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_hard_fraction(runs, path):
    """Proportion of hard examples (M / valid examples) of the SSL runs, the paper's Fig. 4."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for index, (method, method_runs) in enumerate(runs.items()):
        for seed, _, log in method_runs:
            if "hard_example_fraction" not in log[0] or method == "ssl3_reweight_only":
                continue  # Without OHEM every valid example counts as hard.
            ax.plot([r["step"] for r in log], [100 * r["hard_example_fraction"] for r in log],
                    color=f"C{index}", lw=1,
                    label=METHODS[method] if seed == method_runs[0][0] else None)
    ax.set(xlabel="step", ylabel="hard examples (%)",
           title="Proportion of hard examples, beta = 0.1 (paper's Fig. 4)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_error_statistics(runs, path, method="ssl3", smoothing=5):
    """The paper's Fig. 3 for the first run of `method` that logged it: extremes of y_nor and
    p_nor, and the max, mean and median of e over training (moving average of `smoothing`
    log lines, as the paper smooths); nothing when no run has logged them."""
    logged = [log for _, _, log in runs.get(method, []) if "error_mean" in log[0]]
    if not logged:
        return
    log = logged[0]
    window = np.ones(smoothing) / smoothing
    steps = [r["step"] for r in log][smoothing - 1:]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, style in (("y_nor_max", "C2-"), ("y_nor_min", "C2--"), ("p_nor_max", "k-"),
                        ("p_nor_min", "k--"), ("error_max", "C3-"), ("error_mean", "C0-"),
                        ("error_median", "C1-")):
        values = np.convolve([r[name] for r in log], window, mode="valid")
        ax.plot(steps, values, style, lw=1, label=name)
    ax.set(xlabel="step", ylabel="value",
           title=f"{METHODS[method]}: normalized values and e over training (paper's Fig. 3)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(runs_dir, path, methods=("ce", "ssl3"), num_images=4):
    """Val images rich in thin classes: image, ground truth, one column per method."""
    from deeplab_ssl import checkpoints, inference, visualization
    from deeplab_ssl import model as model_lib
    from deeplab_ssl.datasets import descriptors, input_pipeline
    camvid = descriptors.get_descriptor("camvid")
    thin = [camvid.class_names.index(c) for c in ("pole", "signsymbol", "pedestrian", "bicyclist")]
    examples = list(input_pipeline.get_dataset("camvid", "data/camvid_180x240", "val", 1))
    # The most thin-class pixels, from frames at least 10 apart: val is a video sequence.
    order = sorted(range(len(examples)),
                   key=lambda i: -int(np.isin(examples[i]["label"].numpy(), thin).sum()))
    chosen = []
    for i in order:
        if len(chosen) < num_images and all(abs(i - j) >= 10 for j in chosen):
            chosen.append(i)
    examples = [examples[i] for i in sorted(chosen)]
    colormap = visualization.get_colormap("camvid")
    columns = [[e["image"][0].numpy().astype(np.uint8) for e in examples],
               [visualization.label_to_color_image(e["label"][0, ..., 0].numpy(), colormap)
                for e in examples]]
    for method in methods:
        model = model_lib.build_deeplab("mobilenet_v2", camvid.num_classes)
        checkpoints.restore_model(model, os.path.join(runs_dir, f"{method}_seed0"))
        columns.append([visualization.label_to_color_image(
            inference.predict_labels(model, e["image"])[0].numpy(), colormap)
            for e in examples])
    titles = ["image", "ground truth"] + [METHODS[m] for m in methods]
    fig, axes = plt.subplots(num_images, len(columns), figsize=(3 * len(columns), 2.3 * num_images))
    for col, (title, pictures) in enumerate(zip(titles, columns)):
        for row, picture in enumerate(pictures):
            axes[row, col].imshow(picture)
            axes[row, col].axis("off")
        axes[0, col].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results/camvid")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--runs", default="runs/camvid")
    args = parser.parse_args()
    runs = load_runs(args.results)
    if not runs:
        raise SystemExit(f"no finished run under {args.results}")
    print(miou_table(runs), end="\n\n")
    print(per_class_table(runs))
    plot_curves(runs, os.path.join(args.docs, "camvid_curves.png"))
    plot_hard_fraction(runs, os.path.join(args.docs, "camvid_hard_fraction.png"))
    plot_error_statistics(runs, os.path.join(args.docs, "camvid_error_statistics.png"))
    if all(os.path.isdir(os.path.join(args.runs, f"{m}_seed0")) for m in ("ce", "ssl3")):
        plot_predictions(args.runs, os.path.join(args.docs, "camvid_predictions.png"))


if __name__ == "__main__":
    main()
