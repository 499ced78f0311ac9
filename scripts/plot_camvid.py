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
What the DRIVE report shares with it is in study_report.py. Needs matplotlib
(`pip install -e '.[plot]'`).
"""
import argparse
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import study_report  # noqa: E402

# Methods in the order of the tables.
METHODS = study_report.METHOD_NAMES
# The flags of the pretrained study's schedule, its frozen learning rate among them.
PRETRAINED_TRAIN_FLAGS = "configs/camvid/pretrained/train.flags"
# What the tables compare, and the contest's grid (benchmarks/reproduce_camvid_pretrained.sh).
MIOU = study_report.Metric("val mIoU (%)", lambda e: 100 * e["miou"], "{:.2f}")
# The baselines of the contest: users' choices without a structural term.
BASELINES = ("ce", "topk_ce", "bce", "ce_median_frequency", "lovasz", "rmi")
# Per study: results, checkpoints and data folders, the methods of its tables (the contest's
# runs at the study's rate are grid points, not rows of the study), model options, and the
# pictures' names.
STUDIES = {
    "scratch": dict(results="results/camvid", runs="runs/camvid", data="data/camvid_180x240",
                    methods=tuple(METHODS), model={}, prefix="camvid_",
                    title="CamVid 180x240, DeepLabv3 mobilenet_v2 from scratch"),
    "pretrained": dict(results="results/camvid_pretrained/study",
                       runs="runs/camvid_pretrained/study", data="data/camvid",
                       methods=("ce", "bce", "topk_ce", "ssl3", "ssl7", "ssl3_ohem_only",
                                "ssl3_warmup"),
                       model=dict(decoder_output_stride=4), prefix="camvid_pretrained_",
                       title="CamVid 360x480, DeepLabv3+ mobilenet_v2 from ImageNet"),
}
THIN_CLASSES = ("pole", "signsymbol", "pedestrian", "bicyclist", "fence")


def miou_table(runs):
    """Markdown: method, runs, mean and std of val mIoU, Welch's t against softmax CE (and its
    p-value), pixel accuracy (%)."""
    lines = ["| method | seeds | val mIoU (%) | std | t vs CE (p) | pixel accuracy (%) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ce = [100 * e["miou"] for _, e, _ in runs.get("ce", [])]
    for method, method_runs in runs.items():
        mious = [100 * e["miou"] for _, e, _ in method_runs]
        miou = study_report.mean_std(mious)
        accuracy = study_report.mean_std([100 * e["pixel_accuracy"] for _, e, _ in method_runs])
        std = f"{miou[1]:.2f}" if len(method_runs) > 1 else "-"
        t = "" if method == "ce" else study_report.welch_text(mious, ce, missing="-")
        lines.append(f"| {METHODS[method]} | {len(method_runs)} | {miou[0]:.2f} | {std} | {t} | "
                     f"{accuracy[0]:.2f} |")
    return "\n".join(lines)


def settings_table(folder):
    """Markdown: the runs of a calibration or sensitivity folder (NAME/seed0), with val mIoU,
    the thin classes' IoU and the training time."""
    lines = ["| setting | val mIoU (%) | " + " | ".join(THIN_CLASSES) + " | training (min) |",
             "| --- | ---: |" + " ---: |" * (len(THIN_CLASSES) + 1)]
    for setting, evaluation, seconds in study_report.load_settings(folder):
        thin = " | ".join(f"{100 * (evaluation['per_class_iou'][c] or 0):.1f}"
                          for c in THIN_CLASSES)
        lines.append(f"| {setting} | {100 * evaluation['miou']:.2f} | {thin} | "
                     f"{seconds / 60:.0f} |")
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
    from deeplab_ssl import visualization
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
        predictor = study_report.restored_predictor(
            os.path.join(study["runs"], f"{method}_seed{seed}"),
            dict(model_variant="mobilenet_v2", num_classes=camvid.num_classes, **study["model"]))
        columns.append([visualization.label_to_color_image(
            predictor.predict_labels(e["image"])[0].numpy(), colormap) for e in examples])
    titles = ["image", "ground truth"] + [f"{METHODS[m]}, seed {seed}" for m in methods]
    study_report.save_picture_grid(path, titles, columns)


def contest_table(contest):
    """Markdown: each method of `contest` (study_report.best_rate_runs) at its best rate, over
    its seeds: mean and std of val mIoU, Welch's t against softmax CE and against the best
    baseline (both at their best rates), and the thin classes' IoU."""
    baselines = [m for m in BASELINES if m in contest]
    best_baseline = max(baselines, key=lambda m: statistics.mean(
        MIOU.value(e) for _, e, _ in contest[m][1]), default=None)
    thin = [(c, lambda evaluations, c=c: "{:.1f}".format(statistics.mean(
        100 * (e["per_class_iou"][c] or 0) for e in evaluations))) for c in THIN_CLASSES]
    return study_report.contest_table(
        contest, METHODS, MIOU, [("CE", "ce"), (METHODS.get(best_baseline, "-"), best_baseline)],
        thin)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="scratch")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--predictions_seed", type=int, default=0,
                        help="the seed whose checkpoints predictions.png shows")
    args = parser.parse_args()
    study = STUDIES[args.study]
    os.makedirs(args.docs, exist_ok=True)
    runs = study_report.load_runs(study["results"], study["methods"])
    if args.study == "pretrained":  # The variants beyond the paper, after the paper's methods.
        runs.update(study_report.load_runs(
            os.path.join(os.path.dirname(study["results"]), "variants"), study["methods"]))
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
        base_rate = study_report.read_base_rate(PRETRAINED_TRAIN_FLAGS)
        grid = study_report.grid_scores(results, METHODS, base_rate, MIOU)
        if grid:
            print("Learning rate grid (seed 0):", study_report.grid_table(grid, METHODS, MIOU),
                  sep="\n", end="\n\n")
            contest = study_report.best_rate_runs(results, grid, base_rate)
            if contest:
                print("Each method at its best rate:", contest_table(contest), sep="\n",
                      end="\n\n")
                best_runs = {method: best for method, (_, best) in contest.items()}
                print(per_class_table(best_runs), end="\n\n")
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
