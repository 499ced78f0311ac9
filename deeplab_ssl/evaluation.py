"""Evaluation: streaming confusion matrix, mIoU, and the reports eval.py writes;
for two-class datasets (DRIVE's vessels) also F1, sensitivity, specificity, accuracy and AUC.

Predictions come from any `inference.Predictor`: a Keras model (`inference.KerasPredictor`: single
scale, multi-scale, flipped, the path that vis.py and the exports use), a SavedModel
(`serving.SavedModelPredictor`) or a TFLite file (`tflite.TFLitePredictor`); one loop, `evaluate`,
accumulates the statistics of each.

mIoU convention (that of deeplab's `tf.metrics.mean_iou`): pixels whose ground truth is the
ignore label are left out; IoU_c = TP / (TP + FP + FN); a class with no ground-truth and no
predicted pixel (zero union) has no IoU and is left out of the mean. When the ignore label is
itself a class index (ADE20K's "other" = 0) that class is left out of the mean too: it has no
ground truth, so its IoU is 0 or undefined, and deeplab's counting it as 0 only lowers the mean.
"""
import csv
import functools
import io
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from deeplab_ssl import checkpoints, crf, errors


def confusion_matrix(labels, predictions, num_classes, ignore_label):
    """Confusion matrix of one batch, ignored pixels left out.

    Args:
        labels: integer ground truth [B, H, W] or [B, H, W, 1].
        predictions: integer predictions [B, H, W].
        num_classes: int C.
        ignore_label: int; ground-truth pixels with this value are not counted.

    Returns:
        int64 [C, C]: entry [i, j] counts pixels of ground-truth class i predicted as j.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    keep = tf.not_equal(labels, ignore_label)
    return tf.math.confusion_matrix(
        tf.boolean_mask(labels, keep), tf.boolean_mask(predictions, keep),
        num_classes=num_classes, dtype=tf.int64)


# Bins of the foreground probability's histograms, for the AUC of two-class datasets.
PROBABILITY_BINS = 1000


def foreground_statistics(labels, foreground_probabilities, predictions, ignore_label):
    """What the two-class metrics need of one batch, in additive parts (class 1: foreground).

    Args:
        labels: integer ground truth [B, H, W] or [B, H, W, 1].
        foreground_probabilities: float32 [B, H, W], the probability of class 1.
        predictions: integer predictions [B, H, W].
        ignore_label: int; ground-truth pixels with this value are not counted.

    Returns:
        dict of "probability_histogram": int64 [2, PROBABILITY_BINS], the histograms of the
        foreground probability over the background (row 0) and foreground (row 1) pixels;
        "image_f1": float32 [2], the sum of the images' foreground F1 and the number of images
        that have one (a foreground pixel in the ground truth or the prediction).
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), tf.shape(predictions))
    valid = tf.not_equal(labels, ignore_label)
    bins = tf.clip_by_value(tf.cast(foreground_probabilities * PROBABILITY_BINS, tf.int32), 0,
                            PROBABILITY_BINS - 1)
    histogram = tf.stack([tf.math.bincount(
        tf.boolean_mask(bins, tf.logical_and(valid, tf.equal(labels, label))),
        minlength=PROBABILITY_BINS, maxlength=PROBABILITY_BINS, dtype=tf.int64)
        for label in (0, 1)])
    truth = tf.cast(tf.logical_and(valid, tf.equal(labels, 1)), tf.float32)
    predicted = tf.cast(tf.logical_and(valid, tf.equal(predictions, 1)), tf.float32)
    true_positives = tf.reduce_sum(truth * predicted, axis=[1, 2])
    # 2 TP + FP + FN = |truth| + |predicted|.
    denominator = tf.reduce_sum(truth, axis=[1, 2]) + tf.reduce_sum(predicted, axis=[1, 2])
    image_f1 = tf.math.divide_no_nan(2.0 * true_positives, denominator)
    has_f1 = tf.cast(denominator > 0, tf.float32)
    return {"probability_histogram": histogram,
            "image_f1": tf.stack([tf.reduce_sum(image_f1 * has_f1), tf.reduce_sum(has_f1)])}


def batch_statistics(labels, probabilities, predictions, num_classes, ignore_label):
    """The additive statistics of one batch: "confusion" (`confusion_matrix`), and for two-class
    datasets those of `foreground_statistics`.

    Args:
        labels: integer ground truth [B, H, W] or [B, H, W, 1].
        probabilities: float32 [B, H, W, C].
        predictions: integer predictions [B, H, W].
        num_classes, ignore_label: ints.

    Returns:
        dict of tensors that add up over batches and replicas.
    """
    statistics = {"confusion": confusion_matrix(labels, predictions, num_classes, ignore_label)}
    if num_classes == 2:
        statistics.update(foreground_statistics(labels, probabilities[..., 1], predictions,
                                                ignore_label))
    return statistics


def evaluate(predictor, dataset, num_classes, ignore_label, strategy=None, crf_iterations=0):
    """Accumulates the statistics of a predictor over a whole dataset (`batch_statistics`).

    Args:
        predictor: an `inference.Predictor` (a `KerasPredictor`'s model built under the scope
            of `strategy`).
        dataset: tf.data.Dataset of evaluation batches (`input_pipeline.get_dataset` with
            is_training=False): dicts with "image" float32 [B, H, W, 3] in [0, 255] and "label"
            int [B, H, W, 1] (other keys are not used); padded label pixels must carry
            `ignore_label`.
        num_classes, ignore_label: ints of the dataset descriptor.
        strategy: optional tf.distribute.Strategy; batches are split over its replicas and the
            replicas' statistics summed. Defaults to the current strategy. A predictor that is
            not `traceable` (TFLite) runs eagerly and needs the default strategy.
        crf_iterations: int; > 0 refines each image's probabilities with a dense CRF
            (`crf.dense_crf`, needs pydensecrf2) on the host.

    Returns:
        dict of numpy arrays, the sums of `batch_statistics`: "confusion", int64 [C, C] (rows:
        ground truth, columns: prediction), and for two classes "probability_histogram" and
        "image_f1" (with a CRF, the histogram is of the network's probabilities). A predictor
        without probabilities counts its labels as one-hot probabilities: its AUC is that of
        its labels.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if crf_iterations > 0:
        crf.pydensecrf()  # A missing package fails here, not inside the graph.

    def replica_statistics(images, labels):
        def statistics():
            if predictor.has_probabilities:
                probabilities = predictor.predict(images)
            else:
                probabilities = tf.one_hot(predictor.predict_labels(images), num_classes)
            if crf_iterations > 0:
                refine = functools.partial(crf.dense_crf_batch, iterations=crf_iterations)
                predictions = tf.reshape(
                    tf.numpy_function(refine, [images, probabilities], tf.int32),
                    tf.shape(probabilities)[:-1])
            else:
                predictions = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return batch_statistics(labels, probabilities, predictions, num_classes,
                                    ignore_label)

        # The last batch can leave a replica without images; TF's CPU convolutions fail on
        # empty batches, so those replicas count nothing.
        shapes = tf.nest.map_structure(
            lambda spec: tf.zeros(spec.shape, spec.dtype),
            batch_statistics_spec(num_classes))
        return tf.cond(tf.shape(images)[0] > 0, statistics, lambda: shapes)

    def step(images, labels):
        per_replica = strategy.run(replica_statistics, (images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    if predictor.traceable:
        step = tf.function(step, reduce_retracing=True)
    totals = {}
    pairs = dataset.map(lambda batch: (batch["image"], batch["label"]))
    for images, labels in strategy.experimental_distribute_dataset(pairs):
        for name, value in step(images, labels).items():
            totals[name] = totals.get(name, 0) + value.numpy()
    return totals


def batch_statistics_spec(num_classes):
    """{name: tf.TensorSpec} of `batch_statistics` for `num_classes` classes."""
    spec = {"confusion": tf.TensorSpec([num_classes, num_classes], tf.int64)}
    if num_classes == 2:
        spec.update(probability_histogram=tf.TensorSpec([2, PROBABILITY_BINS], tf.int64),
                    image_f1=tf.TensorSpec([2], tf.float32))
    return spec


def segmentation_metrics(confusion, class_names, ignore_label=None):
    """mIoU, per-class IoU and pixel accuracy of a confusion matrix (module docstring convention).

    Args:
        confusion: int [C, C] confusion matrix (rows: ground truth, columns: prediction).
        class_names: sequence of C class names.
        ignore_label: optional int; if it is a class index, that class is left out of the mean.

    Returns:
        dict with "miou" (float, NaN if no class counts), "pixel_accuracy" (float),
        "per_class_iou" ({name: float or None when the class has zero union or is ignored}),
        "num_pixels" (int, counted pixels).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {confusion.shape} does not match "
                         f"{len(class_names)} class names")
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    counted = union > 0
    if ignore_label is not None and 0 <= ignore_label < len(class_names):
        counted[ignore_label] = False
    iou = np.where(counted, true_positives / np.maximum(union, 1.0), np.nan)
    num_pixels = confusion.sum()
    return {
        "miou": float(np.mean(iou[counted])) if counted.any() else math.nan,
        "pixel_accuracy": float(true_positives.sum() / num_pixels) if num_pixels else math.nan,
        "per_class_iou": {name: (None if np.isnan(value) else float(value))
                          for name, value in zip(class_names, iou)},
        "num_pixels": int(num_pixels),
    }


# The two-class metrics of `foreground_metrics`, in the order of the reports.
FOREGROUND_METRICS = ("f1", "mean_image_f1", "sensitivity", "specificity", "accuracy", "auc")


def histogram_auc(negatives, positives):
    """The area under the ROC curve from histograms of a score over the negatives and the
    positives (the same bins, in increasing order of score): the probability that a positive
    scores above a negative, ties (a shared bin) counting one half. Exact to the share of
    pairs that share a bin. NaN without a positive or a negative."""
    negatives = np.asarray(negatives, np.float64)
    positives = np.asarray(positives, np.float64)
    if not negatives.sum() or not positives.sum():
        return math.nan
    below = np.cumsum(negatives) - negatives  # Negatives in lower bins.
    return float(np.sum(positives * (below + 0.5 * negatives))
                 / (positives.sum() * negatives.sum()))


def foreground_metrics(statistics):
    """The metrics of two-class tasks (DRIVE's), of class 1 over the valid pixels, pooled over
    the split: F1 (= Dice), sensitivity, specificity, accuracy, AUC of its probability; and the
    mean over the images of their F1 (images without a foreground pixel in the ground truth or
    the prediction left out). NaN where undefined.

    Args:
        statistics: the dict `evaluate` returns for a two-class dataset.

    Returns:
        dict {name in FOREGROUND_METRICS: float}.
    """
    (tn, fp), (fn, tp) = np.asarray(statistics["confusion"], np.float64)

    def ratio(numerator, denominator):
        return float(numerator / denominator) if denominator else math.nan
    f1_sum, f1_count = statistics["image_f1"]
    return {"f1": ratio(2 * tp, 2 * tp + fp + fn), "mean_image_f1": ratio(f1_sum, f1_count),
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "auc": histogram_auc(*statistics["probability_histogram"])}


def format_table(metrics, title=""):
    """The metrics as a printable table: one row per class, IoU in percent, then mIoU."""
    names = list(metrics["per_class_iou"])
    width = max([len(name) for name in names] + [len("pixel accuracy")])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU (%)")
    lines.append("-" * (width + 9))
    for name, iou in metrics["per_class_iou"].items():
        lines.append(f"{name:<{width}}  {'-' if iou is None else f'{100 * iou:7.2f}':>7}")
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {100 * metrics['miou']:7.2f}")
    lines.append(f"{'pixel accuracy':<{width}}  {100 * metrics['pixel_accuracy']:7.2f}")
    if "f1" in metrics:
        foreground = names[1]
        lines.append(f"{foreground} (class 1), over the split:")
        lines.extend(f"  {name:<{width}}  {metrics[name]:.4f}" for name in FOREGROUND_METRICS)
    return "\n".join(lines)


def _write_atomically(path, text):
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def results_path_prefix(checkpoint_path, split, eval_scales=(1.0,), add_flipped_images=False,
                        crf_iterations=0):
    """Path prefix of a checkpoint's result files, e.g. `.../ckpt-30000.eval_val_ms1.0`.

    The inference settings are part of the name so that runs with other settings do not
    overwrite each other.
    """
    scales = "-".join(f"{scale:g}" for scale in eval_scales)
    suffix = f".eval_{split}_ms{scales}"
    if add_flipped_images:
        suffix += "_flip"
    if crf_iterations:
        suffix += f"_crf{crf_iterations}"
    return checkpoint_path + suffix


def write_results(metrics, path_prefix, extra=None):
    """Writes `metrics` as `<path_prefix>.json` and a one-row `<path_prefix>.csv`.

    The CSV row reads like a row of the paper's tables: the `extra` fields (e.g. checkpoint,
    split), then mIoU, pixel accuracy and each class's IoU, in percent. Files are written to a
    temporary name and renamed.

    Returns:
        (json_path, csv_path).
    """
    extra = dict(extra or {})
    json_path, csv_path = path_prefix + ".json", path_prefix + ".csv"
    _write_atomically(json_path, json.dumps({**extra, **metrics}, indent=2) + "\n")
    row = dict(extra)
    row["mIoU"] = f"{100 * metrics['miou']:.2f}"
    row["pixel_accuracy"] = f"{100 * metrics['pixel_accuracy']:.2f}"
    for name, iou in metrics["per_class_iou"].items():
        row[name] = "" if iou is None else f"{100 * iou:.2f}"
    row.update((name, f"{metrics[name]:.4f}") for name in FOREGROUND_METRICS if name in metrics)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    _write_atomically(csv_path, buffer.getvalue())
    return json_path, csv_path


def write_summaries(writer, metrics, step):
    """TensorBoard scalars: `miou`, `pixel_accuracy`, `iou/<class name>` and the two-class
    metrics as `foreground/<name>` at `step`."""
    with writer.as_default(step=step):
        tf.summary.scalar("miou", metrics["miou"])
        tf.summary.scalar("pixel_accuracy", metrics["pixel_accuracy"])
        for name, iou in metrics["per_class_iou"].items():
            if iou is not None:
                tf.summary.scalar(f"iou/{name.replace(' ', '_')}", iou)
        for name in FOREGROUND_METRICS:
            if name in metrics:
                tf.summary.scalar(f"foreground/{name}", metrics[name])
    writer.flush()


def checkpoints_to_evaluate(checkpoint_path=None, checkpoint_dir=None, eval_interval_secs=300,
                            max_number_of_evaluations=0, timeout=None, log_interval_secs=300):
    """Checkpoint prefixes to evaluate: one checkpoint, or each new one of a training folder.

    Args:
        checkpoint_path: a checkpoint prefix (or a folder: its latest checkpoint); if given,
            only it is yielded.
        checkpoint_dir: otherwise, a training folder. With max_number_of_evaluations 1 its
            latest checkpoint is yielded at once; else the folder is watched (eval.py's watch
            mode) and each new checkpoint yielded, waiting for the first one if need be.
        eval_interval_secs: int, at least this long between two checkpoints of the folder.
        max_number_of_evaluations: int, stop after this many; 0 means no limit.
        timeout: seconds to wait for a new checkpoint before stopping; None waits forever.
        log_interval_secs: while waiting, a log line this often.

    Yields:
        str checkpoint prefixes.

    Raises:
        ValueError: neither argument given.
        FileNotFoundError: naming the path, where there is no such checkpoint or folder, or no
            checkpoint in the folder for a single evaluation.
    """
    if checkpoint_path:
        yield checkpoints.resolve_checkpoint(checkpoint_path)
        return
    if not checkpoint_dir:
        raise errors.UserError("give --checkpoint_path (one checkpoint) or --checkpoint_dir "
                               "(a training folder to watch)")
    if not tf.io.gfile.isdir(checkpoint_dir):
        raise errors.UserError(f"no folder {checkpoint_dir!r} (--checkpoint_dir)")
    if max_number_of_evaluations == 1:
        yield checkpoints.resolve_checkpoint(checkpoint_dir)
        return
    last, count = None, 0
    waiting_since = next_log = time.monotonic()
    while True:
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        if latest is not None and latest != last:
            last, count = latest, count + 1
            yield latest
            if max_number_of_evaluations and count >= max_number_of_evaluations:
                return
            time.sleep(eval_interval_secs)
            waiting_since = next_log = time.monotonic()
            continue
        waited = time.monotonic() - waiting_since
        if timeout is not None and waited >= timeout:
            logging.info("No new checkpoint in %s for %d s (--eval_timeout_secs): stopping.",
                         checkpoint_dir, waited)
            return
        if time.monotonic() >= next_log:
            logging.info("Waiting for a %s checkpoint in %s (%d min so far).",
                         "new" if last else "first", checkpoint_dir, waited // 60)
            next_log += log_interval_secs
        time.sleep(min(max(eval_interval_secs, 1), 10))


def evaluate_and_report(predictor, dataset, descriptor, split, model_path,
                        model_kind="checkpoint", eval_scales=(1.0,), add_flipped_images=False,
                        crf_iterations=0, summary_writer=None, strategy=None):
    """Evaluates and reports one model; what eval.py does per checkpoint or export.

    Prints the table, writes `<model_path>.eval_<split>_...json/.csv` next to the model and,
    with a `summary_writer`, TensorBoard scalars at the checkpoint's step.

    Args:
        predictor: the `inference.Predictor` that runs the model.
        dataset, crf_iterations, strategy: as `evaluate`.
        descriptor: the dataset's `descriptors.DatasetDescriptor`.
        split: str, the split's name, for the report.
        model_path: str, what `predictor` runs: a checkpoint prefix (restored), a SavedModel
            folder or a .tflite file.
        model_kind: "checkpoint", "saved_model" or "tflite": the results' field naming
            `model_path`. An export fixed its own inference: its results record no scales.
        eval_scales, add_flipped_images: a checkpoint's inference (its `KerasPredictor`'s),
            for the report and the names of the files.
        summary_writer: optional tf.summary writer, for checkpoints.

    Returns:
        the metrics dict of `segmentation_metrics`, with `foreground_metrics` for two-class
        datasets.
    """
    statistics = evaluate(predictor, dataset, descriptor.num_classes, descriptor.ignore_label,
                          strategy, crf_iterations)
    metrics = segmentation_metrics(statistics["confusion"], descriptor.class_names,
                                   descriptor.ignore_label)
    if descriptor.num_classes == 2:
        metrics.update(foreground_metrics(statistics))
    title = f"{descriptor.name} {split}: {model_path}"
    extra = {model_kind: model_path, "dataset": descriptor.name, "split": split}
    if model_kind == "checkpoint":
        title += f" (scales {list(eval_scales)}, flipped {add_flipped_images})"
        extra.update(eval_scales=" ".join(f"{scale:g}" for scale in eval_scales),
                     add_flipped_images=add_flipped_images)
    extra["crf_iterations"] = crf_iterations
    print(format_table(metrics, title))
    write_results(metrics, results_path_prefix(model_path, split, eval_scales,
                                               add_flipped_images, crf_iterations), extra)
    if summary_writer is not None:
        write_summaries(summary_writer, metrics, checkpoints.checkpoint_step(model_path))
    return metrics
