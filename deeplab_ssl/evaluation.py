"""Inference (single scale, multi-scale, flipped), streaming confusion matrix and mIoU.

One inference path, `predict_probabilities`, serves eval.py, vis.py and the exported SavedModel.
It follows deeplab's `model.predict_labels_multi_scale`: for each scale in `eval_scales` the
image is resized to `(size - 1) * scale + 1`, the model runs (and again on the left-right flipped
image if `add_flipped_images`), the logits are resized back to the image size (and flipped
back), softmax probabilities are taken, and the probabilities of all runs are averaged.

Models trained with the sigmoid losses (SSL, BCE) are one-vs-rest classifiers: for a single run
the argmax of the softmax equals the argmax of the sigmoid (both equal the argmax of the logits).
For several runs we average softmax probabilities, as deeplab does for every model; averaging
sigmoids instead can pick another class where runs disagree.

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

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2


def scale_dimension(dim, scale):
    """deeplab's `utils.scale_dimension`: int32 `(dim - 1) * scale + 1`, for tensors or ints."""
    return tf.cast((tf.cast(dim, tf.float32) - 1.0) * scale + 1.0, tf.int32)


def predict_probabilities(model, images, eval_scales=(1.0,), add_flipped_images=False):
    """Class probabilities averaged over scales (and flips), as deeplab's multi-scale inference.

    Args:
        model: a keras.Model mapping float32 images [B, h, w, 3] in [0, 255] to float32 logits
            [B, h, w, C] at its input size (`deeplab_ssl.model.build_deeplab`).
        images: float32 [B, H, W, 3], raw pixel values in [0, 255].
        eval_scales: sequence of floats, the image scales to run (1.0 = as is).
        add_flipped_images: bool, also run each scale on the left-right flipped images.

    Returns:
        float32 [B, H, W, C], mean softmax probabilities.
    """
    size = tf.shape(images)[1:3]
    probabilities = []
    for scale in eval_scales:
        scaled = images
        if scale != 1.0:
            scaled = tf.image.resize(images, scale_dimension(size, scale), method="bilinear")
        for flip in (False, True) if add_flipped_images else (False,):
            logits = model(tf.reverse(scaled, [2]) if flip else scaled, training=False)
            logits = tf.cast(logits, tf.float32)
            if flip:
                logits = tf.reverse(logits, [2])
            if scale != 1.0:
                logits = tf.image.resize(logits, size, method="bilinear")
            probabilities.append(tf.nn.softmax(logits))
    return tf.add_n(probabilities) / float(len(probabilities))


def predict_labels(model, images, eval_scales=(1.0,), add_flipped_images=False):
    """int32 [B, H, W]: argmax of `predict_probabilities` (same arguments)."""
    probabilities = predict_probabilities(model, images, eval_scales, add_flipped_images)
    return tf.argmax(probabilities, axis=-1, output_type=tf.int32)


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
        model: keras.Model as for `predict_probabilities`, built under `strategy`'s scope.
        dataset: tf.data.Dataset of evaluation batches (`input_pipeline.get_dataset` with
            is_training=False): dicts with "image" float32 [B, H, W, 3] in [0, 255] and "label"
            int [B, H, W, 1] (other keys are not used); padded label pixels must carry
            `ignore_label`.
        num_classes, ignore_label: ints of the dataset descriptor.
        eval_scales, add_flipped_images: as `predict_probabilities`.
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
            lambda images: predict_probabilities(model, images, eval_scales, add_flipped_images),
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
            predictions = predict_labels(model, images, eval_scales, add_flipped_images)
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


def resolve_checkpoint(checkpoint_path):
    """A checkpoint prefix: `checkpoint_path` itself, or the latest one if it is a folder.

    Raises:
        ValueError naming the path if no checkpoint is there.
    """
    if os.path.isdir(checkpoint_path):
        latest = tf.train.latest_checkpoint(checkpoint_path)
        if latest is None:
            raise ValueError(f"no checkpoint in folder {checkpoint_path!r}")
        return latest
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
        raise ValueError(f"no checkpoint {checkpoint_path!r} (missing "
                         f"{checkpoint_path + '.index'})")
    return checkpoint_path


def restore_model(model, checkpoint_path, model_options=None):
    """Restores `model`'s variables from a train.py checkpoint (`tf.train.Checkpoint(model=...)`).

    The optimizer and other training state in the checkpoint are skipped. The model and the
    checkpoint's `model` must hold the same variables with the same shapes.

    Args:
        model: the built keras.Model.
        checkpoint_path: checkpoint prefix or a folder (the latest checkpoint in it is used).
        model_options: optional dict of the build_deeplab arguments (flags) the model was built
            with, named in the error.

    Returns:
        the checkpoint prefix that was restored.

    Raises:
        ValueError naming the checkpoint and the model options if they do not match.
    """
    checkpoint_path = resolve_checkpoint(checkpoint_path)
    try:
        in_checkpoint = _checkpoint_model_variable_count(checkpoint_path)
        in_model = sum(isinstance(trackable, (keras.Variable, tf.Variable))
                       for trackable in tf.train.TrackableView(model).descendants())
        if in_checkpoint != in_model:
            raise AssertionError(f"the checkpoint's model has {in_checkpoint} variables, "
                                 f"the model {in_model}")
        status = tf.train.Checkpoint(model=model).restore(checkpoint_path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
        options = ", ".join(f"{name}={value}" for name, value in (model_options or {}).items())
        raise ValueError(
            f"checkpoint {checkpoint_path!r} does not match the model built from the flags "
            f"({options or 'not given'}); check model_variant, decoder_output_stride, "
            f"atrous_rates and the dataset's num_classes: {error}") from error
    return checkpoint_path


def _checkpoint_model_variable_count(checkpoint_path):
    """Number of variables under the `model` object of a tf.train.Checkpoint file."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(
        tf.train.load_checkpoint(checkpoint_path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    pending = [child.node_id for child in graph.nodes[0].children if child.local_name == "model"]
    if not pending:
        raise AssertionError("the checkpoint has no `model` object")
    seen = set(pending)
    while pending:
        for child in graph.nodes[pending.pop()].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                pending.append(child.node_id)
    return sum(any(attribute.name == "VARIABLE_VALUE" for attribute in graph.nodes[node].attributes)
               for node in seen)


def checkpoint_step(checkpoint_path):
    """The training step in a checkpoint name `.../model.ckpt-STEP`, or 0 if it has none."""
    suffix = checkpoint_path.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def checkpoints_to_evaluate(checkpoint_path=None, checkpoint_dir=None, eval_interval_secs=300,
                            max_number_of_evaluations=0, timeout=None):
    """Checkpoint prefixes to evaluate: one checkpoint, or each new one in a training folder.

    Args:
        checkpoint_path: a checkpoint prefix (or a folder: its latest checkpoint); if given,
            only it is yielded.
        checkpoint_dir: training folder to watch (tf.train.checkpoints_iterator) otherwise.
        eval_interval_secs: int, at least this long between two checkpoints of the folder.
        max_number_of_evaluations: int, stop after this many; 0 means no limit.
        timeout: seconds to wait for a new checkpoint before stopping; None waits forever.

    Yields:
        str checkpoint prefixes.
    """
    if checkpoint_path:
        yield resolve_checkpoint(checkpoint_path)
        return
    if not checkpoint_dir:
        raise ValueError("give --checkpoint_path (one checkpoint) or --checkpoint_dir "
                         "(a training folder to watch)")
    for count, path in enumerate(tf.train.checkpoints_iterator(
            checkpoint_dir, min_interval_secs=eval_interval_secs, timeout=timeout), start=1):
        yield path
        if max_number_of_evaluations and count >= max_number_of_evaluations:
            return


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
    restore_model(model, checkpoint_path, model_options)
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
        write_summaries(summary_writer, metrics, checkpoint_step(checkpoint_path))
    return metrics
