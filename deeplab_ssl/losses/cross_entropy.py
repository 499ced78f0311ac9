"""Cross-entropy baselines: sigmoid BCE, softmax CE, and deeplab's top-k hard-pixel softmax CE."""
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from deeplab_ssl.losses import backend
from deeplab_ssl.losses import base


def sigmoid_cross_entropy(logits, labels, num_classes):
    """Element-wise sigmoid cross entropy BCE(y, sigmoid(x)), y the one-hot labels.

    BCE = softplus(z) with z = (1 - 2 y) x for y in {0, 1}: exact and stable for any x.

    Args:
      logits: float32 [B, H, W, C].
      labels: int32 [B, H, W], -1 at ignored pixels (y = 0 there).
      num_classes: C, int or int32 scalar.

    Returns:
      float32 [B, H, W, C].
    """
    if backend.is_tensorflow():
        # One op where keras.ops takes three passes over the logits' size (one-hot, scale,
        # shift): measured 5% of the BCE's forward time on CPU.
        signs = tf.one_hot(labels, num_classes, on_value=-1.0, off_value=1.0)
    else:
        signs = 1.0 - 2.0 * ops.one_hot(labels, num_classes)
    return ops.softplus(signs * logits)


def sigmoid_cross_entropy_sum(logits, labels, weight):
    """The weighted sum of the element-wise sigmoid cross entropy, sum(weight * BCE), with a
    fused gradient.

    On TensorFlow the gradient is written by hand (`weighted_bce_gradient`), one XLA loop,
    which spares autodiff's intermediates (time and memory): only the logits, the int labels
    and the weight are kept for it. On JAX and PyTorch it is the backend's autodiff of the sum
    (on JAX, XLA fuses forward and backward: on CPU no logits-sized temporary but the
    gradient). The weight is a constant (no gradient flows into it).

    Args:
      logits: float32 [B, H, W, C].
      labels: int32 [B, H, W], -1 at ignored pixels (y = 0 there).
      weight: float32 [B, H, W, 1] (e.g. the valid mask) or [B, H, W, C].

    Returns:
      float32 scalar.
    """
    num_classes = ops.shape(logits)[-1]
    weight = ops.stop_gradient(weight)

    def weighted_sum(logits):
        bce = sigmoid_cross_entropy(logits, labels, num_classes)
        if weight.shape[-1] == 1:
            # The classes are summed first: no logits-sized product.
            return ops.sum(ops.sum(bce, axis=-1, keepdims=True) * weight)
        return ops.sum(bce * weight)
    if not backend.is_tensorflow():
        return weighted_sum(logits)

    @tf.custom_gradient
    def sum_with_gradient(logits):
        def gradient(upstream):
            # Depending on the upstream gradient, the logits-sized tensors of the gradient are
            # made after the forward pass, not during it, which saves memory.
            return weighted_bce_gradient(upstream, weight, logits, labels)
        return weighted_sum(logits), gradient
    return sum_with_gradient(logits)


# One XLA loop instead of ~6 passes of TF ops over logits-sized tensors: measured 7-10% off
# the BCE's forward + backward time, and half its peak memory (benchmarks/loss_bench.py).
@tf.function(jit_compile=True)
def weighted_bce_gradient(upstream, weight, logits, labels):
    """d g sum(w BCE) / dx = g w (sigmoid(x) - y), float32 [B, H, W, C].

    Args:
      upstream: float32 scalar g.
      weight: float32 [B, H, W, 1 or C], w.
      logits: float32 [B, H, W, C], x.
      labels: int32 [B, H, W], -1 at ignored pixels (y = 0 there).
    """
    error = tf.sigmoid(logits) - tf.one_hot(labels, tf.shape(logits)[-1])
    return upstream * weight * error


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class SigmoidCrossEntropy(base.SumsLoss):
    """Sigmoid (one-vs-rest) cross entropy with ignore_label: the paper's BCE, Eq. 1's form.

    loss = sum over valid pixels and classes of BCE(y, p) / number of valid pixels (0 if none),
    with y the one-hot labels and p = sigmoid(logits).
    Sums: bce_sum, num_valid.

    Args:
      ignore_label: int, label of pixels excluded from the loss.
      from_logits: bool, y_pred holds logits (True) or sigmoid probabilities.
      name, reduction, dtype: as keras.losses.Loss (the loss is always a scalar).
    """

    def __init__(self, ignore_label=255, from_logits=True, name="sigmoid_cross_entropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = ignore_label
        self.from_logits = from_logits

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        logits = base.sigmoid_logits(logits, self.from_logits)
        bce_sum = sigmoid_cross_entropy_sum(logits, labels, valid)
        return {"bce_sum": bce_sum, "num_valid": ops.sum(valid)}

    def terms(self, sums):
        return {"bce": ops.divide_no_nan(sums["bce_sum"], sums["num_valid"])}

    def loss_from_sums(self, sums):
        return self.terms(sums)["bce"]

    def get_config(self):
        config = super().get_config()
        config.update(ignore_label=self.ignore_label, from_logits=self.from_logits)
        return config


def pixel_cross_entropy(labels, logits, valid):
    """Softmax cross entropy of each pixel, -log softmax(logits)[label], 0 at invalid pixels.

    Args:
      labels: int32 [B, H, W], -1 at invalid pixels.
      logits: float32 [B, H, W, C].
      valid: float32 [B, H, W, 1].

    Returns:
      float32 [B, H, W].
    """
    return valid[..., 0] * ops.sparse_categorical_crossentropy(
        ops.maximum(labels, 0), logits, from_logits=True)


def _largest(values, k):
    """The k largest of `values` (float32 [N]), in any order, or zeros in their place.

    Args:
      values: float32 [N], >= 0.
      k: int, or an int32 scalar known only when run (mining's schedule).

    Returns:
      float32 [k] for a static k or on TensorFlow (top_k); else float32 [N], the values in
      decreasing order past the k-th set to 0 (JAX's top_k needs a static k).
    """
    if isinstance(k, int) or backend.is_tensorflow():
        return ops.top_k(values, k, sorted=False)[0]
    decreasing = -ops.sort(-values)
    return ops.where(ops.arange(ops.shape(values)[0]) < k, decreasing, 0.0)


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class SoftmaxCrossEntropy(base.SumsLoss):
    """Softmax cross entropy with ignore_label and deeplab's optional top-k hard-pixel mining.

    Matches deeplab's `add_softmax_cross_entropy_loss_for_each_scale`
    (research/deeplab/utils/train_utils.py) for one scale, label weights 1:
    - top_k_percent_pixels == 1: loss = sum of CE over valid pixels / number of valid pixels.
    - otherwise: with N = all pixels of the batch (ignored ones included) and
      ratio = min(1, step / hard_example_mining_step) (ratio = 1 if hard_example_mining_step
      is 0), k = int((ratio * top_k_percent_pixels + 1 - ratio) * N); the k largest pixel losses
      (ignored pixels have loss 0) are summed and divided by how many of them are non-zero.
    - class_weights (deeplab's per-class `loss_weight`): each pixel's CE is multiplied by the
      weight of its label before the above (the division stays by the number of valid pixels,
      or of non-zero mined losses, as in deeplab).
    Sums: ce_sum, num_present. Under tf.distribute each replica mines its own top k, as each
    deeplab clone did; the sums are then added.

    Args:
      ignore_label: int, label of pixels excluded from the loss.
      top_k_percent_pixels: float in (0, 1], fraction of pixels kept by hard mining.
      class_weights: None, or C floats >= 0, the weight of each class's pixels (e.g.
        train_utils.median_frequency_weights).
      hard_example_mining_step: int, the step at which mining reaches top_k_percent_pixels
        (linear from 100% at step 0); 0 mines top_k_percent_pixels from the start.
      step: the training step (see SumsLoss.set_step, which a training loop calls), read at
        each call; needed only when hard_example_mining_step > 0.
      name, reduction, dtype: as keras.losses.Loss.
    """

    def __init__(self, ignore_label=255, top_k_percent_pixels=1.0, hard_example_mining_step=0,
                 step=None, class_weights=None, name="softmax_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if min(class_weights, default=0.0) < 0:
                raise ValueError(f"class_weights must be >= 0, got {class_weights}")
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
        if hard_example_mining_step < 0:
            raise ValueError("hard_example_mining_step must be >= 0, got "
                             f"{hard_example_mining_step}")
        self.ignore_label = ignore_label
        self.top_k_percent_pixels = top_k_percent_pixels
        self.hard_example_mining_step = hard_example_mining_step
        self.set_step(step)
        self.class_weights = class_weights

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        pixel_losses = pixel_cross_entropy(labels, logits, valid)
        if self.class_weights is not None:
            if len(self.class_weights) != logits.shape[-1]:
                raise ValueError(f"class_weights has {len(self.class_weights)} weights, the "
                                 f"logits {logits.shape[-1]} classes")
            pixel_losses *= ops.take(ops.convert_to_tensor(self.class_weights, "float32"),
                                     ops.maximum(labels, 0))
        return self.mined_sums(pixel_losses, valid)

    def mined_sums(self, pixel_losses, valid):
        """The sums of the loss, {"ce_sum", "num_present"}.

        Args:
          pixel_losses: float32 [B, H, W], `pixel_cross_entropy`.
          valid: float32 [B, H, W, 1].
        """
        if self.top_k_percent_pixels == 1.0:
            return {"ce_sum": ops.sum(pixel_losses), "num_present": ops.sum(valid)}
        pixel_losses = ops.reshape(pixel_losses, [-1])
        # An int, or a TensorFlow scalar where the shape is unknown when traced.
        num_pixels = ops.shape(pixel_losses)[0]
        if self.hard_example_mining_step == 0:
            fraction = np.float32(self.top_k_percent_pixels)
        else:
            step = backend.training_step(
                self.step, "SoftmaxCrossEntropy(hard_example_mining_step > 0)")
            ratio = ops.minimum(1.0, ops.cast(step, "float32")
                                / float(self.hard_example_mining_step))
            fraction = ratio * self.top_k_percent_pixels + (1.0 - ratio)
        # k = int(fraction * N) in float32, as deeplab; a Python int where both are known, as
        # JAX's top_k needs.
        if isinstance(fraction, np.float32) and isinstance(num_pixels, int):
            top_k_pixels = int(fraction * np.float32(num_pixels))
        else:
            top_k_pixels = ops.cast(fraction * ops.cast(num_pixels, "float32"), "int32")
        top_k_losses = _largest(pixel_losses, top_k_pixels)
        num_present = ops.sum(ops.cast(ops.not_equal(top_k_losses, 0.0), "float32"))
        return {"ce_sum": ops.sum(top_k_losses), "num_present": num_present}

    def terms(self, sums):
        return {"ce": ops.divide_no_nan(sums["ce_sum"], sums["num_present"])}

    def loss_from_sums(self, sums):
        return self.terms(sums)["ce"]

    def get_config(self):
        config = super().get_config()
        config.update(ignore_label=self.ignore_label,
                      top_k_percent_pixels=self.top_k_percent_pixels,
                      hard_example_mining_step=self.hard_example_mining_step,
                      class_weights=self.class_weights)
        return config
