"""Evaluation: streaming confusion matrix, mIoU, dense CRF, and the reports eval.py writes.

Predictions come from `deeplab_ssl.inference` (single scale, multi-scale, flipped), the same
path that vis.py and the exported SavedModel use.

mIoU convention (that of deeplab's `tf.metrics.mean_iou`): pixels whose ground truth is the
ignore label are left out; IoU_c = TP / (TP + FP + FN); a class with no ground-truth and no
predicted pixel (zero union) has no IoU and is left out of the mean. When the ignore label is
itself a class index (ADE20K's "other" = 0) that class is left out of the mean too: it has no
ground truth, so its IoU is 0 or undefined, and deeplab's counting it as 0 only lowers the mean.
"""
import csv
import io
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from deeplab_ssl import checkpoints, inference


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


def evaluate(model, dataset, num_classes, ignore_label, eval_scales=(1.0,),
             add_flipped_images=False, strategy=None, crf_iterations=0):
    """Accumulates the confusion matrix of `model` over a whole dataset.

    Args:
        model: keras.Model as for `inference.predict_probabilities`, built under the scope of
            `strategy`.
        dataset: tf.data.Dataset of evaluation batches (`input_pipeline.get_dataset` with
            is_training=False): dicts with "image" float32 [B, H, W, 3] in [0, 255] and "label"
            int [B, H, W, 1] (other keys are not used); padded label pixels must carry
            `ignore_label`.
        num_classes, ignore_label: ints of the dataset descriptor.
        eval_scales, add_flipped_images: as `inference.predict_probabilities`.
        strategy: optional tf.distribute.Strategy; batches are split over its replicas and the
            replicas' matrices summed. Defaults to the current strategy.
        crf_iterations: int; > 0 refines each image's probabilities with a dense CRF
            (`dense_crf`, needs pydensecrf2) on the host, one replica.

    Returns:
        numpy int64 [C, C] confusion matrix (rows: ground truth, columns: prediction).
    """
    strategy = strategy or tf.distribute.get_strategy()
    total = np.zeros((num_classes, num_classes), dtype=np.int64)

    if crf_iterations > 0:
        predict = tf.function(
            lambda images: inference.predict_probabilities(model, images, eval_scales,
                                                         add_flipped_images),
            reduce_retracing=True)
        for batch in dataset:
            probabilities = predict(batch["image"]).numpy()
            predictions = np.stack([
                dense_crf(image, probability, crf_iterations)
                for image, probability in zip(batch["image"].numpy(), probabilities)])
            total += confusion_matrix(batch["label"], predictions, num_classes,
                                      ignore_label).numpy()
        return total

    def replica_confusion(images, labels):
        def batch_confusion():
            predictions = inference.predict_labels(model, images, eval_scales,
                                                   add_flipped_images)
            return confusion_matrix(labels, predictions, num_classes, ignore_label)

        # The last batch can leave a replica without images; TF's CPU convolutions fail on
        # empty batches, so those replicas count nothing.
        return tf.cond(tf.shape(images)[0] > 0, batch_confusion,
                       lambda: tf.zeros([num_classes, num_classes], tf.int64))

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        per_replica = strategy.run(replica_confusion, (images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    pairs = dataset.map(lambda batch: (batch["image"], batch["label"]))
    for images, labels in strategy.experimental_distribute_dataset(pairs):
        total += step(images, labels).numpy()
    return total


def dense_crf(image, probabilities, iterations, gaussian_sxy=3, gaussian_compat=3,
              bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4):
    """Dense CRF refinement (Krähenbühl & Koltun) through pydensecrf2.

    Defaults are DeepLab-v2's PASCAL values (pos_w 3, pos_xy_std 3, bi_w 4, bi_xy_std 67,
    bi_rgb_std 3).

    Args:
        image: [H, W, 3] pixel values in [0, 255].
        probabilities: float [H, W, C] class probabilities.
        iterations: int, mean-field iterations.

    Returns:
        int32 [H, W] labels.

    Raises:
        ImportError saying how to install pydensecrf2 if it is missing.
    """
    try:
        from pydensecrf import densecrf, utils
    except ImportError as error:
        raise ImportError(
            "--crf_iterations needs the pydensecrf2 package: "
            "pip install pydensecrf2 (or pip install 'deeplab-ssl[crf]')") from error
    height, width, num_classes = probabilities.shape
    crf = densecrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(utils.unary_from_softmax(
        np.ascontiguousarray(np.transpose(probabilities, (2, 0, 1)), dtype=np.float32)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, compat=bilateral_compat,
        rgbim=np.ascontiguousarray(np.clip(image, 0, 255), dtype=np.uint8))
    refined = np.asarray(crf.inference(iterations), dtype=np.float32)
    return refined.reshape(num_classes, height, width).argmax(axis=0).astype(np.int32)


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
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    _write_atomically(csv_path, buffer.getvalue())
    return json_path, csv_path


def write_summaries(writer, metrics, step):
    """TensorBoard scalars: `miou`, `pixel_accuracy` and `iou/<class name>` at `step`."""
    with writer.as_default(step=step):
        tf.summary.scalar("miou", metrics["miou"])
        tf.summary.scalar("pixel_accuracy", metrics["pixel_accuracy"])
        for name, iou in metrics["per_class_iou"].items():
            if iou is not None:
                tf.summary.scalar(f"iou/{name.replace(' ', '_')}", iou)
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
        raise ValueError("give --checkpoint_path (one checkpoint) or --checkpoint_dir "
                         "(a training folder to watch)")
    if not tf.io.gfile.isdir(checkpoint_dir):
        raise FileNotFoundError(f"no folder {checkpoint_dir!r} (--checkpoint_dir)")
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


def evaluate_checkpoint(model, checkpoint_path, dataset, descriptor, split, eval_scales=(1.0,),
                        add_flipped_images=False, crf_iterations=0, model_options=None,
                        summary_writer=None, strategy=None):
    """Restores, evaluates and reports one checkpoint; what eval.py does per checkpoint.

    Prints the table, writes `<checkpoint>.eval_<split>_...json/.csv` next to the checkpoint
    and, with a `summary_writer`, TensorBoard scalars at the checkpoint's step.

    Args:
        model: the built keras.Model (under `strategy`'s scope).
        checkpoint_path: checkpoint prefix to restore.
        dataset: evaluation batches, as for `evaluate`.
        descriptor: the dataset's `descriptors.DatasetDescriptor`.
        split: str, the split's name, for the report.
        eval_scales, add_flipped_images, crf_iterations, strategy: as `evaluate`.
        model_options: the model's build_deeplab arguments, for the error of a mismatched
            checkpoint.
        summary_writer: optional tf.summary writer.

    Returns:
        the metrics dict of `segmentation_metrics`.
    """
    checkpoints.restore_model(model, checkpoint_path, model_options)
    confusion = evaluate(model, dataset, descriptor.num_classes, descriptor.ignore_label,
                         eval_scales, add_flipped_images, strategy, crf_iterations)
    metrics = segmentation_metrics(confusion, descriptor.class_names, descriptor.ignore_label)
    print(format_table(metrics, f"{descriptor.name} {split}: {checkpoint_path} "
                                f"(scales {list(eval_scales)}, flipped {add_flipped_images})"))
    prefix = results_path_prefix(checkpoint_path, split, eval_scales, add_flipped_images,
                                 crf_iterations)
    write_results(metrics, prefix, extra={
        "checkpoint": checkpoint_path, "dataset": descriptor.name, "split": split,
        "eval_scales": " ".join(f"{scale:g}" for scale in eval_scales),
        "add_flipped_images": add_flipped_images, "crf_iterations": crf_iterations})
    if summary_writer is not None:
        write_summaries(summary_writer, metrics, checkpoints.checkpoint_step(checkpoint_path))
    return metrics
