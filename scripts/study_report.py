"""What the study reports (plot_camvid.py, plot_drive.py) share: reading the runs that
benchmarks/study_lib.sh keeps, the statistics over seeds, the learning rate grid's rule and its
tables, and the picture grid of predictions.

The layout read (benchmarks/study_lib.sh):
    RESULTS/STAGE/NAME/seedN/eval_val.json      the evaluation on val (eval.py's JSON)
    RESULTS/STAGE/NAME/seedN/train_log.jsonl    the training's log lines
    RESULTS/STAGE/NAME/seedN/train_seconds      its training time
    RESULTS/STAGE/NAME/seedN/diverged           instead of the evaluation, where the loss diverged
    RESULTS/STAGE/NAME/seedN/val_predictions/   its predicted val labels (SAVE_VAL_PREDICTIONS)
    RUNS/STAGE/NAME_seedN/                      its checkpoints (train.py's train_logdir)
A method's runs at a learning rate are in the study's folder (STAGE study) at the frozen rate of
train.flags, the sensitivity stage's where it ran that rate (NAME METHOD_lrRATE), else the
grid's (STAGE grid, NAME METHOD_lrRATE).
Nothing is written but the pictures of `save_picture_grid`.
"""
import collections
import glob
import json
import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import scipy.stats  # noqa: E402

# The learning rates of the grid (study_lib.sh's RATES), in its order.
RATES = ("0.0025", "0.005", "0.01", "0.02", "0.04", "0.08", "0.16")
# The names the tables give the losses (the studies' flagfile names), in the order of the
# CamVid tables.
METHOD_NAMES = {
    "ce": "softmax CE", "bce": "sigmoid BCE", "topk_ce": "top-k CE (25%)",
    "ssim7_3": "SSIM Eq. 7 (3)", "ssl1": "SSL (1)", "ssl3": "SSL (3)", "ssl7": "SSL (7)",
    "ssl3_ohem_only": "SSL (3), OHEM only", "ssl3_reweight_only": "SSL (3), reweight only",
    "ssl3_warmup": "SSL (3) after BCE warm-up (beyond the paper)",
    "ssl_softmax": "SSL on softmax CE (beyond the paper)",
    "ssl_softmax_topk": "SSL on top-k CE (beyond the paper)",
    "ssl_softmax_topk_balanced": "SSL on top-k CE, class-balanced (beyond the paper)",
    "ce_median_frequency": "softmax CE, median frequency weights",
    "lovasz": "Lovasz-softmax", "rmi": "RMI"}
# What the grid's rule compares for a run whose loss became NaN or Inf, as study_lib.sh does.
DIVERGED = 0.0

# A number read from an evaluation: its column header, the function of the evaluation dict
# that gives it, and its format, e.g. Metric("val mIoU (%)", lambda e: 100 * e["miou"], "{:.2f}").
Metric = collections.namedtuple("Metric", "name value number_format")


def load_runs(results_dir, names):
    """{name: [(seed folder name, eval dict, [log lines])]} of the finished runs of
    results_dir/NAME/seed*/ (eval_val.json and train_log.jsonl), in the order of `names`; names
    without a finished run are left out."""
    runs = {}
    for name in names:
        for path in sorted(glob.glob(os.path.join(results_dir, name, "seed*", "eval_val.json"))):
            folder = os.path.dirname(path)
            with open(path) as f:
                evaluation = json.load(f)
            with open(os.path.join(folder, "train_log.jsonl")) as f:
                log = [json.loads(line) for line in f]
            runs.setdefault(name, []).append((os.path.basename(folder), evaluation, log))
    return runs


def load_settings(folder):
    """[(setting, eval dict, training seconds)] of the seed-0 runs of a calibration or
    sensitivity folder (folder/SETTING/seed0/eval_val.json and train_seconds), by setting name
    (the files' times, which a clone does not keep, do not order them)."""
    settings = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "seed0", "eval_val.json"))):
        run = os.path.dirname(path)
        with open(path) as f:
            evaluation = json.load(f)
        with open(os.path.join(run, "train_seconds")) as f:
            seconds = int(f.read())
        settings.append((os.path.basename(os.path.dirname(run)), evaluation, seconds))
    return settings


def mean_std(values):
    """(mean, sample standard deviation) of the values; the deviation is NaN for one value."""
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), std


def welch_t(a, b):
    """Welch's t of the means of samples a and b (positive where a's is larger) and its
    two-sided p-value, or NaNs with fewer than 2 values in either."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    result = scipy.stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def welch_text(a, b, missing=""):
    """Welch's t of samples a and b and its p-value as a table cell, "+2.3 (0.014)"; `missing`
    where either has fewer than 2 values."""
    t, p = welch_t(a, b)
    return missing if math.isnan(t) else f"{t:+.1f} ({p:.2g})"


def read_base_rate(train_flags):
    """The frozen learning rate of a study, the --base_learning_rate of its train.flags, as
    written there (e.g. "0.01"), as study_lib.sh reads it."""
    with open(train_flags) as f:
        for line in f:
            if line.startswith("--base_learning_rate="):
                return line.strip().split("=", 1)[1]
    raise ValueError(f"no --base_learning_rate in {train_flags}")


def rate_folder(results, method, rate, base_rate):
    """The folder of `method`'s runs at learning `rate` (study_lib.sh's rate_dir): the study's
    at `base_rate`, the sensitivity stage's where it ran that rate, else the grid's.
    `results`: the study's results folder (study_lib.sh's OUT)."""
    if rate == base_rate:
        return os.path.join(results, "study", method)
    sensitivity = os.path.join(results, "sensitivity", f"{method}_lr{rate}")
    return sensitivity if os.path.isdir(sensitivity) else os.path.join(
        results, "grid", f"{method}_lr{rate}")


def load_rate_runs(results, method, rate, base_rate):
    """[(seed folder name, eval dict, [log lines])] of `method` at `rate`, seeds in order."""
    folder = rate_folder(results, method, rate, base_rate)
    name = os.path.basename(folder)
    return load_runs(os.path.dirname(folder), [name]).get(name, [])


def grid_scores(results, methods, base_rate, metric):
    """{method: {rate: `metric` of its seed 0 on val, None where it diverged}}, rates in RATES
    order, of the `methods` with a grid (runs at 2 rates or more, not only the study's one)."""
    grid = {}
    for method in methods:
        scores = {}
        for rate in RATES:
            seed0 = [e for seed, e, _ in load_rate_runs(results, method, rate, base_rate)
                     if seed == "seed0"]
            if seed0:
                scores[rate] = metric.value(seed0[0])
            elif os.path.exists(os.path.join(rate_folder(results, method, rate, base_rate),
                                              "seed0", "diverged")):
                scores[rate] = None
        if len(scores) >= 2:
            grid[method] = scores
    return grid


def rule_score(score):
    """A score of `grid_scores` as the rule compares it: DIVERGED for a diverged run."""
    return DIVERGED if score is None else score


def best_rate(scores):
    """The rate of the best score of a grid {rate: score} (study_lib.sh's best_rate: the
    first of equal ones in RATES order)."""
    return max(scores, key=lambda rate: rule_score(scores[rate]))


def grid_complete(scores):
    """Whether a grid {rate: score} has every rate the rule asks for (study_lib.sh's
    run_grid): 0.01, 0.02 and 0.04, and the next rate of RATES past the lowest or the highest
    rate run where that end is the best."""
    if not {"0.01", "0.02", "0.04"} <= set(scores):
        return False
    ran = [index for index, rate in enumerate(RATES) if rate in scores]
    best = RATES.index(best_rate(scores))
    at_top = best == ran[-1] and best < len(RATES) - 1
    at_bottom = best == ran[0] and best > 0
    return not (at_top or at_bottom)


def grid_table(grid, names, metric):
    """Markdown: the score of seed 0 per method of `grid` (grid_scores) and learning rate,
    the best in bold where the grid is complete. `names`: {method: name in the table}."""
    rates = [rate for rate in RATES if any(rate in scores for scores in grid.values())]
    lines = ["| method | " + " | ".join(f"lr {rate}" for rate in rates) + " | grid |",
             "| --- |" + " ---: |" * len(rates) + " --- |"]
    for method, scores in grid.items():
        complete = grid_complete(scores)
        best = best_rate(scores)
        cells = ["" if rate not in scores else "diverged" if scores[rate] is None else
                 (f"**{metric.number_format}**" if rate == best and complete
                  else metric.number_format).format(scores[rate])
                 for rate in rates]
        lines.append(f"| {names[method]} | " + " | ".join(cells)
                     + f" | {'complete' if complete else 'in progress'} |")
    return "\n".join(lines)


def best_rate_runs(results, grid, base_rate):
    """{method: (best rate, its runs [(seed folder name, eval dict, [log lines])])} of the
    methods of `grid` (grid_scores) whose grid is complete, in its order (but those whose best
    rate diverged: all did)."""
    contest = {}
    for method, scores in grid.items():
        if grid_complete(scores):
            rate = best_rate(scores)
            runs = load_rate_runs(results, method, rate, base_rate)
            if runs:  # Not where every rate diverged.
                contest[method] = (rate, runs)
    return contest


def contest_table(contest, names, metric, references, columns):
    """Markdown: each method of `contest` (best_rate_runs) at its rate, over its seeds: the
    rate, the number of seeds, mean and std of `metric`, Welch's t of it (and p) against each
    method of `references`, then `columns`.

    Args:
        contest: {method: (rate, runs)}, as best_rate_runs.
        names: {method: its name in the table}.
        metric: a Metric, the compared one.
        references: [(name in the header, method or None)]: a column "t vs NAME (p)" each,
            empty in the method's own row and where either has fewer than 2 seeds.
        columns: [(header, function of a method's eval dicts giving its cell)].
    """
    values = {method: [metric.value(e) for _, e, _ in runs]
              for method, (_, runs) in contest.items()}
    header = (["method", "lr", "seeds", metric.name, "std"]
              + [f"t vs {name} (p)" for name, _ in references] + [h for h, _ in columns])
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method, (rate, runs) in contest.items():
        mean, std = mean_std(values[method])
        std = metric.number_format.format(std) if len(runs) > 1 else "-"
        tests = ["" if method == other else welch_text(values[method], values.get(other, []))
                 for _, other in references]
        cells = [names[method], rate, str(len(runs)), metric.number_format.format(mean), std]
        cells += tests + [cell([e for _, e, _ in runs]) for _, cell in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_scales(evaluation):
    """The image scales of an evaluation JSON of eval.py (its "eval_scales", e.g. "1 1.5"), as a
    tuple of floats; (1.0,) where it names none."""
    return tuple(float(scale) for scale in evaluation.get("eval_scales", "1").split())


def restored_predictor(train_logdir, options, scales=(1.0,)):
    """An inference.KerasPredictor (eval.py's at `scales`, no flips) of the latest checkpoint of
    a training folder; its model built with the options train.py wrote there
    (model_options.json), else with `options` (build_deeplab's arguments)."""
    from deeplab_ssl import checkpoints, common, inference
    from deeplab_ssl import model as model_lib
    options = common.read_model_options(train_logdir) or options
    model = model_lib.build_deeplab(**options)
    checkpoints.restore_model(model, train_logdir, options)
    return inference.KerasPredictor(model, scales)


def save_picture_grid(path, titles, columns, panel_size=(3, 2.3)):
    """Writes a PNG of pictures in columns: `columns` [[uint8 [H, W, 3]] per row] under
    `titles` (one per column), each panel `panel_size` (width, height) inches."""
    rows = len(columns[0])
    fig, axes = plt.subplots(rows, len(columns), squeeze=False,
                             figsize=(panel_size[0] * len(columns), panel_size[1] * rows))
    for col, (title, pictures) in enumerate(zip(titles, columns)):
        for row, picture in enumerate(pictures):
            axes[row, col].imshow(picture)
            axes[row, col].axis("off")
        axes[0, col].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
