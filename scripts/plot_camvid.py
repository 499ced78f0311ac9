"""Tables and pictures of the CamVid studies (docs/results.md) from the saved runs.

    python scripts/plot_camvid.py [--study scratch|pretrained] [--docs docs]

Reads RESULTS/METHOD/seedN/{eval_val.json, train_log.jsonl} (benchmarks/reproduce_camvid.sh,
benchmarks/reproduce_camvid_pretrained.sh) and prints the markdown tables of docs/results.md:
mean and standard deviation of val mIoU per method (the layout of the paper's Table 2, with
Welch's t against softmax CE) and per-class IoU (Table 4); for the pretrained study also the
calibration and sensitivity tables, its variants beyond the paper (RESULTS/../variants) in the
first two tables, per class where the SSL's hard examples and gradient are, and the contest of
losses (issue 28): the learning rate grid of each method (seed 0) and each method at its best
rate over its seeds, with Welch's t against CE and against the best baseline. Writes in
--docs, named after the study (camvid_ or camvid_pretrained_):
- curves.png: each method's training loss;
- hard_fraction.png: proportion of hard examples of the SSL runs (the paper's Fig. 4);
- error_statistics.png: y_nor, p_nor and e over training (Fig. 3), once an SSL (3) run
  logged them;
- class_statistics.png (pretrained): per class, the share of hard examples and of the SSL
  term's gradient over training;
- predictions.png: val images with ground truth and the predictions of softmax CE, top-k CE
  (where its checkpoint is there) and SSL (3), seed --predictions_seed (0), where those
  checkpoints are still in the study's runs/ folder.
Needs matplotlib (`pip install -e '.[plot]'`).
"""
import argparse
import glob
import json
import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

# Methods in the order of the tables, with the names the tables use.
METHODS = {"ce": "softmax CE", "bce": "sigmoid BCE", "topk_ce": "top-k CE (25%)",
           "ssim7_3": "SSIM Eq. 7 (3)", "ssl1": "SSL (1)", "ssl3": "SSL (3)", "ssl7": "SSL (7)",
           "ssl3_ohem_only": "SSL (3), OHEM only", "ssl3_reweight_only": "SSL (3), reweight only",
           "ssl3_warmup": "SSL (3) after BCE warm-up (beyond the paper)",
           "ssl_softmax": "SSL on softmax CE (beyond the paper)",
           "ssl_softmax_topk": "SSL on top-k CE (beyond the paper)",
           "ssl_softmax_topk_balanced": "SSL on top-k CE, per class (beyond the paper)",
           "ce_median_frequency": "softmax CE, median frequency weights",
           "lovasz": "Lovasz-softmax", "rmi": "RMI"}
# The learning rates of the contest's grid (benchmarks/reproduce_camvid_pretrained.sh), and the
# frozen rate of the study (configs/camvid/pretrained/train.flags).
RATES = ("0.005", "0.01", "0.02", "0.04", "0.08")
BASE_RATE = "0.01"
# The grid's value of a run whose loss became NaN or Inf (the script's `diverged` file).
DIVERGED = 0.0
# The baselines of the contest: users' choices without a structural term.
BASELINES = ("ce", "topk_ce", "bce", "ce_median_frequency", "lovasz", "rmi")
# Per study: results, checkpoints and data folders, model options, and the pictures' names.
STUDIES = {
    "scratch": dict(results="results/camvid", runs="runs/camvid", data="data/camvid_180x240",
                    model={}, prefix="camvid_",
                    title="CamVid 180x240, DeepLabv3 mobilenet_v2 from scratch"),
    "pretrained": dict(results="results/camvid_pretrained/study",
                       runs="runs/camvid_pretrained/study", data="data/camvid",
                       model=dict(decoder_output_stride=4), prefix="camvid_pretrained_",
                       title="CamVid 360x480, DeepLabv3+ mobilenet_v2 from ImageNet"),
}
THIN_CLASSES = ("pole", "signsymbol", "pedestrian", "bicyclist", "fence")


def load_runs(results_dir, methods=METHODS):
    """{method: [(seed, eval dict, [log lines])]} of the finished runs, in `methods` order."""
    runs = {}
    for method in methods:
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


def welch_t(a, b):
    """Welch's t of the means of samples a and b (positive where a's is larger) and its
    two-sided p-value, or NaNs with fewer than 2 values in either."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    result = scipy.stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def miou_table(runs):
    """Markdown: method, runs, mean and std of val mIoU, Welch's t against softmax CE (and its
    p-value), pixel accuracy (%)."""
    lines = ["| method | seeds | val mIoU (%) | std | t vs CE (p) | pixel accuracy (%) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ce = [100 * e["miou"] for _, e, _ in runs.get("ce", [])]
    for method, method_runs in runs.items():
        mious = [100 * e["miou"] for _, e, _ in method_runs]
        miou = _mean_std(mious)
        accuracy = _mean_std([100 * e["pixel_accuracy"] for _, e, _ in method_runs])
        std = f"{miou[1]:.2f}" if len(method_runs) > 1 else "-"
        t, p = welch_t(mious, ce)
        t = "" if method == "ce" else "-" if math.isnan(t) else f"{t:+.1f} ({p:.2g})"
        lines.append(f"| {METHODS[method]} | {len(method_runs)} | {miou[0]:.2f} | {std} | {t} | "
                     f"{accuracy[0]:.2f} |")
    return "\n".join(lines)


def settings_table(folder):
    """Markdown: the runs of a calibration or sensitivity folder (NAME/seed0), with val mIoU,
    the thin classes' IoU and the training time."""
    lines = ["| setting | val mIoU (%) | " + " | ".join(THIN_CLASSES) + " | training (min) |",
             "| --- | ---: |" + " ---: |" * (len(THIN_CLASSES) + 1)]
    for path in sorted(glob.glob(os.path.join(folder, "*", "seed0", "eval_val.json")),
                       key=os.path.getmtime):
        run = os.path.dirname(path)
        with open(path) as f:
            evaluation = json.load(f)
        with open(os.path.join(run, "train_seconds")) as f:
            minutes = int(f.read()) / 60
        thin = " | ".join(f"{100 * (evaluation['per_class_iou'][c] or 0):.1f}"
                          for c in THIN_CLASSES)
        lines.append(f"| {os.path.basename(os.path.dirname(run))} | "
                     f"{100 * evaluation['miou']:.2f} | {thin} | {minutes:.0f} |")
    return "\n".join(lines)


def class_statistics_table(runs, method="ssl3", last=4):
    """Markdown: per class, the mean over `method`'s runs and their last `last` log steps of the
    hard-example shares and of the SSL term's share of the gradient, in and out of the class."""
    logs = [[r for r in log if "class_hard_fraction_in" in r][-last:]
            for _, _, log in runs.get(method, [])]
    logs = [log for log in logs if log]
    if not logs:
        return ""
    classes = list(runs[method][0][1]["per_class_iou"])

    def mean(name, index):
        return statistics.mean(r[name][index] for log in logs for r in log)

    lines = ["| class | hard (%) in | hard (%) out | SSL share of gradient in | out |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for index, name in enumerate(classes):
        shares = []
        for side in ("in", "out"):
            ssl, bce = (mean(f"class_{term}_gradient_{side}", index) for term in ("ssl", "bce"))
            shares.append(ssl / (ssl + bce) if ssl + bce else 0.0)
        lines.append(f"| {name} | {100 * mean('class_hard_fraction_in', index):.2f} | "
                     f"{100 * mean('class_hard_fraction_out', index):.2f} | "
                     f"{shares[0]:.2f} | {shares[1]:.2f} |")
    return "\n".join(lines)


def plot_class_statistics(runs, path, method="ssl3", classes=THIN_CLASSES + ("car", "road")):
    """Per class over training (`method`'s first run): the share of its pixels' examples that
    are hard, and the SSL term's share of the gradient on them and around them."""
    logged = [log for _, _, log in runs.get(method, []) if "class_hard_fraction_in" in log[-1]]
    if not logged:
        return
    log = [r for r in logged[0] if "class_hard_fraction_in" in r]
    names = list(runs[method][0][1]["per_class_iou"])
    steps = [r["step"] for r in log]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for color, name in enumerate(classes):
        index = names.index(name)
        axes[0].plot(steps, [100 * r["class_hard_fraction_in"][index] for r in log],
                     color=f"C{color}", label=name)
        for axis, side in zip(axes[1:], ("in", "out")):
            shares = [r[f"class_ssl_gradient_{side}"][index]
                      / max(r[f"class_ssl_gradient_{side}"][index]
                            + r[f"class_bce_gradient_{side}"][index], 1e-12) for r in log]
            axis.plot(steps, shares, color=f"C{color}", label=name)
    axes[0].set(xlabel="step", ylabel="hard examples among the class's pixels (%)")
    axes[1].set(xlabel="step", ylabel="SSL term's share of the gradient", ylim=(0, 1),
                title="on the class's pixels (pushing it up)")
    axes[2].set(xlabel="step", ylim=(0, 1), title="on the other pixels (pushing it down)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{METHODS[method]}, per class (seed {runs[method][0][0][4:]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def plot_curves(runs, path, title):
    """Each run's own objective (without weight decay) over the steps; scales differ by loss."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, (method, method_runs) in enumerate(runs.items()):
        for seed, _, log in method_runs:
            ax.plot([r["step"] for r in log], [r["loss"] for r in log], color=f"C{index}",
                    label=METHODS[method] if seed == method_runs[0][0] else None, lw=1)
    ax.set(xlabel="step", ylabel="training loss (each method's own)", yscale="log", title=title)
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
    ax.axhline(1.5, color="gray", ls="--", lw=1, label="paper, late in training (~1.5%)")
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


def plot_predictions(study, path, methods, seed, num_images=4):
    """Val images rich in thin classes: image, ground truth, one column per method (its run of
    the given seed)."""
    from deeplab_ssl import checkpoints, inference, visualization
    from deeplab_ssl import model as model_lib
    from deeplab_ssl.datasets import descriptors, input_pipeline
    camvid = descriptors.get_descriptor("camvid")
    thin = [camvid.class_names.index(c) for c in THIN_CLASSES]
    examples = list(input_pipeline.get_dataset("camvid", study["data"], "val", 1))
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
        model = model_lib.build_deeplab("mobilenet_v2", camvid.num_classes, **study["model"])
        checkpoints.restore_model(model, os.path.join(study["runs"], f"{method}_seed{seed}"))
        columns.append([visualization.label_to_color_image(
            inference.predict_labels(model, e["image"])[0].numpy(), colormap)
            for e in examples])
    titles = ["image", "ground truth"] + [f"{METHODS[m]}, seed {seed}" for m in methods]
    fig, axes = plt.subplots(num_images, len(columns), figsize=(3 * len(columns), 2.3 * num_images))
    for col, (title, pictures) in enumerate(zip(titles, columns)):
        for row, picture in enumerate(pictures):
            axes[row, col].imshow(picture)
            axes[row, col].axis("off")
        axes[0, col].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rate_folder(results, method, rate):
    """The folder of `method`'s runs at learning `rate` (as reproduce_camvid_pretrained.sh's
    rate_dir): the study's at the frozen rate, the sensitivity stage's where it ran that rate,
    else the grid's. `results`: the pretrained study's results/camvid_pretrained."""
    if rate == BASE_RATE:
        return os.path.join(results, "study", method)
    sensitivity = os.path.join(results, "sensitivity", f"{method}_lr{rate}")
    return sensitivity if os.path.isdir(sensitivity) else os.path.join(
        results, "grid", f"{method}_lr{rate}")


def load_rate_runs(results, method, rate):
    """[(seed, eval dict, [log lines])] of `method` at `rate`, seeds in order."""
    folder = rate_folder(results, method, rate)
    return load_runs(os.path.dirname(folder), methods=[os.path.basename(folder)]).get(
        os.path.basename(folder), [])


def best_rates(results):
    """{method: (best rate, {rate: val mIoU % of seed 0})} of the methods with a grid."""
    grid = {}
    for method in METHODS:
        mious = {}
        for rate in RATES:
            seed0 = [e for seed, e, _ in load_rate_runs(results, method, rate) if seed == "seed0"]
            if seed0:
                mious[rate] = 100 * seed0[0]["miou"]
            elif os.path.exists(os.path.join(rate_folder(results, method, rate), "seed0",
                                              "diverged")):
                mious[rate] = DIVERGED
        if len(mious) >= 2:  # A grid, not the study's one rate.
            grid[method] = (max(mious, key=mious.get), mious)
    return grid


def grid_complete(mious):
    """Whether a grid {rate: val mIoU} has every rate the rule asks for: 0.01, 0.02 and 0.04;
    0.005 where 0.01 beats 0.02; 0.08 where 0.04 beats the others."""
    if not {"0.01", "0.02", "0.04"} <= set(mious):
        return False
    if mious["0.01"] > mious["0.02"] and "0.005" not in mious:
        return False
    return max(mious, key=mious.get) != "0.04" or "0.08" in mious


def grid_table(grid):
    """Markdown: val mIoU (%) of seed 0 per method and learning rate, the best in bold where
    the grid is complete."""
    lines = ["| method | " + " | ".join(f"lr {rate}" for rate in RATES) + " | grid |",
             "| --- |" + " ---: |" * len(RATES) + " --- |"]
    for method, (best, mious) in grid.items():
        complete = grid_complete(mious)
        cells = ["" if rate not in mious else "diverged" if mious[rate] == DIVERGED else
                 ("**{:.2f}**" if rate == best and complete else "{:.2f}").format(mious[rate])
                 for rate in RATES]
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells)
                     + f" | {'complete' if complete else 'in progress'} |")
    return "\n".join(lines)


def contest_table(results, grid):
    """Markdown: each method at its best rate, over its seeds: mean and std of val mIoU,
    Welch's t against softmax CE and against the best baseline (both at their best rates),
    and the thin classes' IoU; and the runs by method ({method: runs})."""
    runs = {method: load_rate_runs(results, method, best)
            for method, (best, mious) in grid.items() if grid_complete(mious)}
    mious = {method: [100 * e["miou"] for _, e, _ in method_runs]
             for method, method_runs in runs.items()}
    baselines = [m for m in BASELINES if m in mious]
    best_baseline = max(baselines, key=lambda m: statistics.mean(mious[m]), default=None)
    lines = ["| method | lr | seeds | val mIoU (%) | std | t vs CE (p) | t vs "
             f"{METHODS.get(best_baseline, '-')} (p) | " + " | ".join(THIN_CLASSES) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(THIN_CLASSES)]
    for method, values in mious.items():
        mean, std = _mean_std(values)
        tests = []
        for other in ("ce", best_baseline):
            t, p = welch_t(values, mious.get(other, []))
            tests.append("" if method == other or math.isnan(t) else f"{t:+.1f} ({p:.2g})")
        thin = " | ".join("{:.1f}".format(statistics.mean(
            100 * (e["per_class_iou"][c] or 0) for _, e, _ in runs[method])) for c in THIN_CLASSES)
        std = f"{std:.2f}" if len(values) > 1 else "-"
        lines.append(f"| {METHODS[method]} | {grid[method][0]} | {len(values)} | {mean:.2f} | "
                     f"{std} | {tests[0]} | {tests[1]} | {thin} |")
    return "\n".join(lines), runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="scratch")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--predictions_seed", type=int, default=0,
                        help="the seed whose checkpoints predictions.png shows")
    args = parser.parse_args()
    study = STUDIES[args.study]
    runs = load_runs(study["results"])
    if args.study == "pretrained":  # The variants beyond the paper, after the paper's methods.
        runs.update(load_runs(os.path.join(os.path.dirname(study["results"]), "variants")))
    if not runs:
        raise SystemExit(f"no finished run under {study['results']}")
    print(miou_table(runs), end="\n\n")
    print(per_class_table(runs), end="\n\n")
    if args.study == "pretrained":
        for stage in ("calibration", "sensitivity"):
            print(settings_table(os.path.join(os.path.dirname(study["results"]), stage)),
                  end="\n\n")
        for method in ("ssl3", "ssl3_warmup"):
            if method in runs:
                print(f"{METHODS[method]}:", class_statistics_table(runs, method), sep="\n",
                      end="\n\n")
        plot_class_statistics(runs, os.path.join(args.docs,
                                                 study["prefix"] + "class_statistics.png"))
        results = os.path.dirname(study["results"])
        grid = best_rates(results)
        if grid:
            print("Learning rate grid (seed 0):", grid_table(grid), sep="\n", end="\n\n")
            table, contest_runs = contest_table(results, grid)
            print("Each method at its best rate:", table, sep="\n", end="\n\n")
            print(per_class_table(contest_runs), end="\n\n")
    docs = os.path.join(args.docs, study["prefix"])
    plot_curves(runs, docs + "curves.png", study["title"])
    plot_hard_fraction(runs, docs + "hard_fraction.png")
    plot_error_statistics(runs, docs + "error_statistics.png")
    seed = args.predictions_seed
    methods = [m for m in ("ce", "topk_ce", "ssl3")
               if os.path.isdir(os.path.join(study["runs"], f"{m}_seed{seed}"))]
    if "ce" in methods and "ssl3" in methods:
        plot_predictions(study, docs + "predictions.png", methods, seed)


if __name__ == "__main__":
    main()
