"""What a training run logs: a line on the terminal, train_log.jsonl, and TensorBoard.

At each log step every worker prints a line (the loss, its terms, the learning rate, images per
second and the time left); the chief also appends the record, with the loss's statistics, to
`train_log.jsonl` and writes it as TensorBoard scalars in train_logdir. At the save steps the
chief adds TensorBoard pictures of a few examples: image, label and prediction.
"""
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from deeplab_ssl import visualization

TRAIN_LOG_NAME = "train_log.jsonl"
NUM_SUMMARY_IMAGES = 3


class TrainLog:
    """The machine-readable log `train_log.jsonl` in train_logdir: one JSON object per line.

    On resume from a checkpoint of step `resume_step`, lines of later steps (logged before the
    run was stopped, then trained again) are dropped so each step appears once.
    """

    def __init__(self, train_logdir, resume_step):
        self.path = os.path.join(train_logdir, TRAIN_LOG_NAME)
        tf.io.gfile.makedirs(train_logdir)
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                kept = [line for line in f if line.strip()
                        and json.loads(line)["step"] <= resume_step]
            temporary = self.path + ".tmp"
            with tf.io.gfile.GFile(temporary, "w") as f:
                f.write("".join(kept))
            tf.io.gfile.rename(temporary, self.path, overwrite=True)

    def append(self, record):
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TrainLogger:
    """The logs of one training run, from `start_step` (0, or the step resumed) on.

    Args:
        train_logdir: str, the run's folder.
        start_step: int, the step training starts from.
        total_steps: int, training_number_of_steps.
        batch_size: int, the global batch size, for images per second.
        is_chief: bool, whether this worker writes train_log.jsonl and TensorBoard.
        colormap: name of a `visualization` colormap for the pictures.
    """

    def __init__(self, train_logdir, start_step, total_steps, batch_size, is_chief, colormap):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.is_chief = is_chief
        self.colormap = colormap
        self._train_log = TrainLog(train_logdir, start_step) if is_chief else None
        self._writer = (tf.summary.create_file_writer(train_logdir) if is_chief
                        else tf.summary.create_noop_writer())
        self._interval_start, self._interval_step = time.perf_counter(), start_step

    def log(self, step, values, statistics):
        """Logs the step `step` (int, updates done).

        Args:
            values: dict of floats for the terminal and the files: the learning rate, the loss,
                its terms, ...
            statistics: {name: float, or list of floats (one per class)}, for the files only
                (TensorBoard scalars NAME/CLASS_INDEX for the lists).
        """
        now = time.perf_counter()
        seconds_per_step = (now - self._interval_start) / max(step - self._interval_step, 1)
        self._interval_start, self._interval_step = now, step
        record = dict(step=step, **values, images_per_second=self.batch_size / seconds_per_step)
        logging.info("step %d/%d: %s, %s left", step, self.total_steps, format_values(record),
                     _duration((self.total_steps - step) * seconds_per_step))
        record.update(statistics)
        if self._train_log:
            self._train_log.append(record)
        with self._writer.as_default(step=step):
            for name, value in record.items():
                if isinstance(value, list):
                    for index, class_value in enumerate(value):
                        tf.summary.scalar(f"{name}/{index}", class_value)
                elif name != "step":
                    tf.summary.scalar(name, value)

    def write_images(self, model, images, labels, step):
        """TensorBoard pictures of the first NUM_SUMMARY_IMAGES examples (chief only).

        Args:
            model: the keras.Model trained, called for the predictions.
            images: float32 [b, H, W, 3], one replica's images in [0, 255].
            labels: int32 [b, H, W, 1], their labels.
            step: int.
        """
        if not self.is_chief:
            return
        colormap = visualization.get_colormap(self.colormap)
        images = images[:NUM_SUMMARY_IMAGES]
        labels = tf.reshape(labels[:NUM_SUMMARY_IMAGES], tf.shape(images)[:3])
        predictions = tf.argmax(model(images, training=False), axis=-1)
        with self._writer.as_default(step=step):
            tf.summary.image("samples/image", tf.cast(images, tf.uint8),
                             max_outputs=NUM_SUMMARY_IMAGES)
            for name, label in (("label", labels), ("prediction", predictions)):
                label = label.numpy()
                label[label >= len(colormap)] = 0  # The ignore label may lie outside the map.
                colored = np.stack([visualization.label_to_color_image(one, colormap)
                                    for one in label])
                tf.summary.image(f"samples/{name}", colored, max_outputs=NUM_SUMMARY_IMAGES)

    def flush(self):
        self._writer.flush()


def loss_values(loss, metrics, num_classes):
    """What the logs show of Trainer.train_step's metrics: the loss, weight decay and total,
    the loss's terms and sum_statistics (not its raw sums, nor its log-step statistics)."""
    names = ("loss", "regularization_loss", "total_loss", *loss.terms(metrics),
             *loss.sum_statistics(metrics, num_classes))
    return {name: metrics[name] for name in names}


def format_values(values):
    """The float values of `values` (not the step, lists or dicts), for the terminal."""
    return ", ".join(f"{name} {value:.4g}" for name, value in values.items()
                     if isinstance(value, float))


def _duration(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
