"""deeplab's utils/train_utils.py: the learning rate, gradient multipliers, initial weights;
and the optimizer and mixed-precision policy a run trains with."""
import contextlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from deeplab_ssl import checkpoints, errors
from deeplab_ssl import model as model_lib
from deeplab_ssl.core import utils

LEARNING_POLICIES = ("poly", "step")


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class DeepLabLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """deeplab's learning rate (`utils/train_utils.get_model_learning_rate`), step -> float32.

    With s = slow_start_step and t = max(step - s, 0):
      - step < s: `slow_start_learning_rate`;
      - "poly": base_learning_rate * (1 - min(t, T) / T) ** learning_power with
        T = training_number_of_steps - s (tf.train.polynomial_decay, end rate 0);
      - "step": base_learning_rate * learning_rate_decay_factor ** floor(t / learning_rate_decay_step).
    The rate used by the update of step n (0-based) is the rate at n, as in deeplab.
    """

    def __init__(self, base_learning_rate, training_number_of_steps, learning_policy="poly",
                 learning_power=0.9, slow_start_step=0, slow_start_learning_rate=1e-4,
                 learning_rate_decay_step=2000, learning_rate_decay_factor=0.1):
        if learning_policy not in LEARNING_POLICIES:
            raise errors.UserError(
                f"--learning_policy={learning_policy!r} is not one of {LEARNING_POLICIES}")
        if not 0 <= slow_start_step < training_number_of_steps:
            raise errors.UserError(
                f"--slow_start_step={slow_start_step} must be >= 0 and smaller than "
                f"--training_number_of_steps={training_number_of_steps}")
        if learning_policy == "step" and learning_rate_decay_step < 1:
            raise errors.UserError(
                f"--learning_rate_decay_step={learning_rate_decay_step} must be >= 1")
        self.base_learning_rate = float(base_learning_rate)
        self.training_number_of_steps = int(training_number_of_steps)
        self.learning_policy = learning_policy
        self.learning_power = float(learning_power)
        self.slow_start_step = int(slow_start_step)
        self.slow_start_learning_rate = float(slow_start_learning_rate)
        self.learning_rate_decay_step = int(learning_rate_decay_step)
        self.learning_rate_decay_factor = float(learning_rate_decay_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        adjusted_step = tf.maximum(step - self.slow_start_step, 0.0)
        if self.learning_policy == "poly":
            decay_steps = float(self.training_number_of_steps - self.slow_start_step)
            remaining = 1.0 - tf.minimum(adjusted_step, decay_steps) / decay_steps
            rate = self.base_learning_rate * tf.pow(remaining, self.learning_power)
        else:
            rate = self.base_learning_rate * tf.pow(
                self.learning_rate_decay_factor,
                tf.floor(adjusted_step / self.learning_rate_decay_step))
        return tf.where(step < self.slow_start_step,
                        tf.constant(self.slow_start_learning_rate, tf.float32), rate)

    def get_config(self):
        return dict(
            base_learning_rate=self.base_learning_rate,
            training_number_of_steps=self.training_number_of_steps,
            learning_policy=self.learning_policy,
            learning_power=self.learning_power,
            slow_start_step=self.slow_start_step,
            slow_start_learning_rate=self.slow_start_learning_rate,
            learning_rate_decay_step=self.learning_rate_decay_step,
            learning_rate_decay_factor=self.learning_rate_decay_factor,
        )


def make_optimizer(learning_rate, momentum, mixed_precision):
    """SGD with momentum on `learning_rate` (a DeepLabLearningRate); loss-scaled under
    `mixed_precision` "mixed_float16"."""
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@contextlib.contextmanager
def dtype_policy(name):
    """Builds layers under keras policy `name` ("none" = float32), then restores the old one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def set_batch_norm_decay(model, decay):
    """Sets the moving-average decay (keras `momentum`) of every batch norm layer of `model`."""
    if not 0 <= decay < 1:
        raise errors.UserError(f"--batch_norm_decay={decay} must be in [0, 1)")
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = decay
        set_batch_norm_decay(layer, decay)  # Nested models.


def initialize_from_checkpoint(model, tf_initial_checkpoint, initialize_last_layer=True,
                               last_layers_contain_logits_only=False):
    """deeplab's --tf_initial_checkpoint: initial weights of a run without a checkpoint yet.

    Args:
        model: keras.Model from `deeplab_ssl.model.build_deeplab`.
        tf_initial_checkpoint: one of
            - a deeplab / TF-slim checkpoint (an ImageNet backbone of deeplab's model zoo, or a
              trained DeepLab), restored by variable name (`checkpoints.load_slim_checkpoint`);
            - a checkpoint of this train.py, or its train_logdir (the latest checkpoint), e.g.
              stage 1 of the paper for stage 2: all model variables, not the optimizer or step;
            - a Keras weights file (`.weights.h5` or `.keras`).
        initialize_last_layer: bool; False keeps the initial weights of the last layers (slim
            checkpoints only), e.g. for another number of classes.
        last_layers_contain_logits_only: bool, the last layers are only the logits.
    """
    if tf_initial_checkpoint.endswith((".weights.h5", ".keras")):
        checkpoints.load_weights(model, tf_initial_checkpoint)
        logging.info("Initialized the model from %s.", tf_initial_checkpoint)
        return
    path = checkpoints.resolve_checkpoint(tf_initial_checkpoint)
    if checkpoints.is_object_based(path):
        if not initialize_last_layer:
            raise errors.UserError(
                f"--tf_initial_checkpoint={tf_initial_checkpoint} is a train.py checkpoint, "
                "which restores the whole model: --initialize_last_layer=false needs a "
                "deeplab / TF-slim checkpoint")
        checkpoints.restore_model(model, path)
        logging.info("Initialized the model from train.py checkpoint %s.", path)
    else:
        report = checkpoints.load_slim_checkpoint(
            model, path, initialize_last_layer, last_layers_contain_logits_only)
        logging.info("Initialized the model from %s", report)


def gradient_multipliers(variables, last_layer_gradient_multiplier=1.0,
                         last_layers_contain_logits_only=False):
    """deeplab's model_gradient_multipliers: one float per variable, in order.

    As deeplab's train_utils: biases get twice the gradient, variables of the last layers
    (model.get_extra_layer_scopes, matched anywhere in the slim name) get
    last_layer_gradient_multiplier times it, and biases of the last layers twice that.

    Args:
        variables: list of Keras variables of a model from build_deeplab (others: any names).
        last_layer_gradient_multiplier: float, deeplab's flag of that name.
        last_layers_contain_logits_only: bool, only the logits are last layers.
    """
    last_layers = model_lib.get_extra_layer_scopes(last_layers_contain_logits_only)
    multipliers = []
    for variable in variables:
        name = utils.slim_scope(variable.path)
        multiplier = 2.0 if name.endswith("/bias") else 1.0
        if any(scope in name for scope in last_layers):
            multiplier *= last_layer_gradient_multiplier
        multipliers.append(multiplier)
    return multipliers


def median_frequency_weights(pixel_counts, image_pixel_counts):
    """Median frequency balancing (Eigen and Fergus 2015; SegNet's and ENet's CamVid weights).

    freq_c = pixels of class c / labelled pixels of the images where c appears, and
    w_c = median over the classes of freq / freq_c, so a class at the median frequency weighs
    1 and rarer classes more. A class absent from the data gets 0 (it has no pixel to weigh).

    Args:
        pixel_counts, image_pixel_counts: arrays [C], from input_pipeline.label_histogram.

    Returns:
        list of C floats.
    """
    pixel_counts = np.asarray(pixel_counts, np.float64)
    image_pixel_counts = np.asarray(image_pixel_counts, np.float64)
    present = pixel_counts > 0
    if not present.any():
        raise errors.UserError("median frequency weights of a split without labelled pixels")
    frequency = pixel_counts[present] / image_pixel_counts[present]
    weights = np.zeros_like(pixel_counts)
    weights[present] = np.median(frequency) / frequency
    return weights.tolist()
