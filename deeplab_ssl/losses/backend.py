"""What the loss family does differently per Keras backend, in one place.

The losses are written with keras.ops and run on the TensorFlow, JAX and PyTorch backends
(KERAS_BACKEND). TensorFlow keeps what only it has: the SSL's CPU kernel (ssl_kernel.py), the
BCE's hand-written gradient (cross_entropy.weighted_bce_gradient; the other backends
differentiate sum(w BCE) with their autodiff), tf.distribute (base.cross_replica_loss,
SumsLoss's replica scaling), top_k with a k known only when run, and a graph assertion on the
labels' range. Every question a loss asks about its backend is a function here.
"""
import keras
import tensorflow as tf

# The messages of a label outside [0, C) that is not ignore_label (C: y_pred's last dimension).
LABEL_TOO_LARGE = ("y_true has a label >= num_classes (the last dimension of y_pred) that is "
                   "not ignore_label")
LABEL_NEGATIVE = "y_true has a negative label that is not ignore_label"


def is_tensorflow():
    """True when Keras runs on TensorFlow (KERAS_BACKEND=tensorflow, Keras' default)."""
    return keras.backend.backend() == "tensorflow"


def require_tensorflow(feature):
    """Raises ValueError naming `feature` (a str) unless Keras runs on TensorFlow."""
    if not is_tensorflow():
        raise ValueError(f"{feature} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
                         f"Keras runs on {keras.backend.backend()!r} here")


def is_jax():
    """True when Keras runs on JAX (KERAS_BACKEND=jax)."""
    return keras.backend.backend() == "jax"


def compiles_with_xla():
    """True where the losses are known to run compiled by XLA, from public facts: always on JAX
    (Keras jits its steps; so do JAX users), on TensorFlow where XLA is requested for the whole
    process (tf.config.optimizer.set_jit); never on PyTorch.

    A Keras model's own jit_compile is not visible to its loss: on TensorFlow, False here says
    only that XLA is not requested globally.
    """
    if is_jax():
        return True
    return is_tensorflow() and bool(tf.config.optimizer.get_jit())


def xla_function(function, static_argnames):
    """`function` compiled with XLA as a whole: tf.function(jit_compile=True) on TensorFlow,
    jax.jit on JAX (`static_argnames`: its Python-number arguments, which TF's tracing treats
    as constants by itself); on PyTorch, `function` itself, run op by op.

    Inside a caller's compilation (Keras' jit_compile, a jitted JAX train step) it is compiled
    as part of the caller's.
    """
    name = keras.backend.backend()
    if name == "tensorflow":
        return tf.function(function, jit_compile=True)
    if name == "jax":
        import jax
        return jax.jit(function, static_argnames=static_argnames)
    return function


def check_labels(labels, num_classes):
    """`labels`, checked to lie in [-1, num_classes): a graph assertion on TensorFlow; on other
    backends a check of the values where they are known (eager PyTorch, eager JAX), none
    inside a traced JAX function (a jitted train step), whose values are unknown when traced.

    Args:
      labels: int32 [B, H, W], -1 at ignored pixels.
      num_classes: int or int32 scalar, C.

    Returns:
      labels, the same values.

    Raises:
      tf.errors.InvalidArgumentError (TensorFlow) or ValueError: a label outside [-1, C).
    """
    if is_tensorflow():
        with tf.control_dependencies([
                tf.debugging.assert_less(labels, num_classes, message=LABEL_TOO_LARGE),
                tf.debugging.assert_greater_equal(labels, -1, message=LABEL_NEGATIVE)]):
            return tf.identity(labels)
    if is_jax():
        import jax
        if isinstance(labels, jax.core.Tracer):
            return labels
    # The extremes are reduced where the labels are (a GPU): two numbers come back, not a batch.
    largest = int(keras.ops.convert_to_numpy(keras.ops.max(labels, initial=-1)))
    if largest >= num_classes:
        raise ValueError(f"{LABEL_TOO_LARGE}: {largest} with {num_classes} classes")
    if int(keras.ops.convert_to_numpy(keras.ops.min(labels, initial=-1))) < -1:
        raise ValueError(LABEL_NEGATIVE)
    return labels


def replica_scale(loss):
    """loss / num_replicas_in_sync under a tf.distribute strategy, as Keras scales its own
    losses in fit there (it leaves a scalar loss unscaled); `loss` on the other backends, whose
    distribution (keras.distribution) computes the loss of the global batch."""
    if not is_tensorflow():
        return loss
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas > 1:
        loss = loss * (1.0 / num_replicas)
    return loss


def training_step(step, schedule):
    """The training step that a scheduled loss reads at each call.

    Args:
      step: what `loss.set_step` gave, a scalar variable such as optimizer.iterations, or None.
      schedule: str, the loss and its schedule, for the errors, e.g. "SSLoss(warmup_steps > 0)".

    Returns:
      `step`.

    Raises:
      ValueError: `step` is None; or a Keras variable on JAX, where Keras' trainer compiles the
        step with the value the variable had when traced (it passes only the model's and the
        metrics' variables into the compiled step): the schedule would stay at its first value.
    """
    if step is None:
        raise ValueError(f"{schedule} needs the training step: call "
                         "loss.set_step(optimizer.iterations)")
    if is_jax() and isinstance(step, keras.Variable):
        raise ValueError(f"{schedule} reads the training step, which Keras' JAX trainer does not "
                         "pass into its compiled step (the schedule would stay at its first "
                         "value): train it on the TensorFlow or PyTorch backend")
    return step
