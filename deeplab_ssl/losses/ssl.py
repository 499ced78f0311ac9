"""The structural similarity loss (SSL) of Zhao et al. 2019, paper Sec. 3.2-3.3, Eqs. 10-17.

The example weights come one of two ways, the same numbers to float32 rounding, chosen once per
loss from public facts (SSLoss.resolved_implementation): the CPU kernel (ssl_kernel.py,
TensorFlow only), or the portable path (`example_weights`, keras.ops), XLA-compiled on
TensorFlow and JAX, op by op on PyTorch. Either way the loss's sums have one gradient, the
BCE's with the weights as constants, written by hand (`_sums_with_gradient`).
"""
import math

import keras
from keras import ops

from deeplab_ssl.losses import backend
from deeplab_ssl.losses import base
from deeplab_ssl.losses import local_stats
from deeplab_ssl.losses import ssl_kernel
from deeplab_ssl.losses import ssl_statistics


def max_structural_error(window_size, sigma, c4):
    """e_max = y_nor_max - y_nor_min of Eq. 16 = 2 (1 - w_c) / (sqrt(w_c (1 - w_c)) + c4).

    y_nor is extreme when the centre pixel differs from all its neighbours (mu_y = w_c or
    1 - w_c). w_c is the centre weight of the normalized window; 4.6716 for k=3, sigma=1.5,
    c4=0.01; 0 for window_size 1.
    """
    w_c = local_stats.center_weight(window_size, sigma)
    return 2.0 * (1.0 - w_c) / (math.sqrt(w_c * (1.0 - w_c)) + c4)


def check_arguments(beta, c4, ce_weight):
    """Raises ValueError naming beta, c4 or ce_weight where it is out of its range."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if not c4 > 0:
        raise ValueError(f"c4 must be > 0, got {c4}")
    base.check_ce_weight(ce_weight)


def one_hot(labels, num_classes):
    """float32 [B, H, W, C], y: the one-hot labels, 0 at the label -1 (int32 [B, H, W])."""
    return ops.cast(labels[..., None] == ops.arange(num_classes, dtype="int32"), "float32")


def structural_maps(labels, probs, valid, window_size, sigma, c4):
    """y (one-hot), y_nor and p_nor of the SSLoss docstring, with keras.ops (any backend).

    The window sums are k x k sums of shifted values of the zero-padded m p and of the padded
    labels, which XLA fuses with the statistics into one loop: the only map it keeps is the
    padded m p (separable sums keep three maps of column sums).

    Args:
      labels: int32 [B, H, W], -1 at invalid pixels.
      probs: float32 [B, H, W, C], probabilities (C static).
      valid: float32 [B, H, W, 1], m.
      window_size, sigma, c4: Python numbers.

    Returns:
      float32 [B, H, W, C] each; y, y_nor and p_nor are 0, 1 and 1 at invalid pixels.
    """
    labels_one_hot = one_hot(labels, probs.shape[-1])
    if window_size == 1:
        # The window is the pixel: x - mu = 0 and sigma = 0, so x_nor = c4 / c4 = 1 exactly
        # (var_p = p^2 - p^2 need not round to 0 where XLA fuses a product into an FMA).
        return labels_one_hot, ops.ones_like(probs), ops.ones_like(probs)
    radius = window_size // 2
    height, width = ops.shape(probs)[1], ops.shape(probs)[2]
    masked_probs = probs * valid
    padded_probs = ops.pad(masked_probs, [[0, 0], [radius, radius], [radius, radius], [0, 0]])
    padded_labels = ops.pad(labels, [[0, 0], [radius, radius], [radius, radius]],
                            constant_values=-1)
    sum_m = sum_y = sum_p = sum_p2 = 0.0
    for row, column, weight in local_stats.window_taps(window_size, sigma):
        tap_labels = padded_labels[:, row:row + height, column:column + width]
        tap_probs = padded_probs[:, row:row + height, column:column + width]
        # In a window holding one class c, sum(w m) and sum(w m y_c) are the same additions:
        # sum(w m) - sum(w m y_c) is exactly 0 there and var_y = mu_y mu_(1-y) is exactly 0
        # (mu_y (1 - mu_y) would round to ~6e-8: sqrt(var_y) = 2% of c4).
        sum_m += ops.where(tap_labels >= 0, weight, 0.0)[..., None]
        sum_y += weight * one_hot(tap_labels, probs.shape[-1])
        sum_p += weight * tap_probs
        sum_p2 += weight * ops.square(tap_probs)  # m p^2 = (m p)^2: m is 0 or 1.
    # sum(w m) >= w_c > 0 at valid pixels; m / sum(w m) zeroes the invalid ones.
    inverse_weight = ops.divide_no_nan(valid, sum_m)
    mu_y = sum_y * inverse_weight
    sigma_y = ops.sqrt(mu_y * ((sum_m - sum_y) * inverse_weight))
    mu_p = sum_p * inverse_weight
    sigma_p = ops.sqrt(ops.maximum(sum_p2 * inverse_weight - ops.square(mu_p), 0.0))
    y_nor = (labels_one_hot - mu_y + c4) / (sigma_y + c4)
    p_nor = (masked_probs - mu_p + c4) / (sigma_p + c4)
    return labels_one_hot, y_nor, p_nor


def example_weights(labels, probs, valid, window_size, sigma, c4, threshold, reweight):
    """The SSL's example weights and hard examples, with keras.ops: the portable path.

    Args:
      labels, probs, valid, window_size, sigma, c4: as structural_maps.
      threshold: Python float beta e_max (OHEM: f = e > threshold), or None (f = m).
      reweight: Python bool, weight = e f (else f).

    Returns:
      one_hot, weight, f: float32 [B, H, W, C], 0 at invalid pixels.
    """
    labels_one_hot, y_nor, p_nor = structural_maps(labels, probs, valid, window_size, sigma, c4)
    error = ops.abs(y_nor - p_nor)
    if threshold is None:
        is_hard = ops.broadcast_to(valid, ops.shape(error))
    else:
        # e > beta e_max >= 0: never at invalid pixels, where e = 0.
        is_hard = ops.cast(error > threshold, "float32")
    return labels_one_hot, error * is_hard if reweight else is_hard, is_hard


def _weights_and_sums(labels, logits, valid, window_size, sigma, c4, threshold, reweight):
    """The portable path's example weights and forward sums, one image at a time: XLA's
    temporaries are a few maps of one image, not of the batch.

    Args:
      labels: int32 [B, H, W], -1 at invalid pixels.
      logits: float32 [B, H, W, C], no gradient.
      valid: float32 [B, H, W, 1].
      window_size, sigma, c4, threshold, reweight: as example_weights.

    Returns:
      weight: float32 [B, H, W, C], 0 at invalid pixels.
      sums: float32 [3]: sum(m BCE), sum(weight BCE), M = sum(f).
    """
    height, width, num_classes = ops.shape(logits)[1], ops.shape(logits)[2], logits.shape[-1]

    def add_image(index, state):
        weight, sums = state
        image_labels = ops.slice(labels, [index, 0, 0], [1, height, width])
        image_logits = ops.slice(logits, [index, 0, 0, 0], [1, height, width, num_classes])
        image_valid = ops.slice(valid, [index, 0, 0, 0], [1, height, width, 1])
        probs = ops.sigmoid(image_logits)
        image_one_hot, image_weight, _ = example_weights(
            image_labels, probs, image_valid, window_size, sigma, c4, threshold, reweight)
        # M = sum(f) from what the loop keeps anyway, not from f, a map of its own: with OHEM,
        # f = 1 exactly where the weight is not 0 (e > beta e_max >= 0); without, f = m.
        if threshold is None:
            num_hard = num_classes * ops.sum(image_valid)
        else:
            num_hard = ops.sum(ops.sign(image_weight))
        # BCE = softplus((1 - 2 y) x) = max((1 - 2 y) x, 0) - log(max(p, 1 - p)): one log
        # instead of softplus's exp and log, and as stable, since max(p, 1 - p) >= 0.5.
        bce = (ops.relu((1.0 - 2.0 * image_one_hot) * image_logits)
               - ops.log(ops.maximum(probs, 1.0 - probs)))
        # The classes summed first: no broadcast of m kept as an image-sized map.
        image_sums = ops.stack([ops.sum(ops.sum(bce, axis=-1, keepdims=True) * image_valid),
                                ops.sum(bce * image_weight), num_hard])
        return ops.slice_update(weight, [index, 0, 0, 0], image_weight), sums + image_sums
    return ops.fori_loop(0, ops.shape(logits)[0], add_image,
                         (ops.zeros_like(logits), ops.zeros([3], "float32")))


def _bce_gradient(upstream, logits, labels, valid, weight):
    """d (g_0 sum(m BCE) + g_1 sum(weight BCE)) / dx = (g_0 m + g_1 weight) (p - y), float32
    [B, H, W, C], the weights constants.

    Args:
      upstream: float32 [3], the gradients g of the sums (g_2, of the count M, is unused).
      logits: float32 [B, H, W, C], x.
      labels: int32 [B, H, W], -1 at invalid pixels (y = 0 there).
      valid: float32 [B, H, W, 1], m.
      weight: float32 [B, H, W, C].
    """
    signs = 1.0 - 2.0 * one_hot(labels, logits.shape[-1])
    # p - y = (1 - 2 y) sigmoid((1 - 2 y) x): 1 - p to full precision where y = 1.
    return (upstream[0] * valid + upstream[1] * weight) * signs * ops.sigmoid(signs * logits)


# XLA fuses the window sums and the ~30 element-wise passes of the weights into a few loops.
# Inside a caller's XLA compilation (Keras' jit_compile, a jitted JAX step) these functions are
# compiled as part of the caller's.
_WINDOW_ARGUMENTS = ("window_size", "sigma", "c4")
_xla_structural_maps = backend.xla_function(structural_maps, _WINDOW_ARGUMENTS)
_xla_example_weights = backend.xla_function(
    example_weights, _WINDOW_ARGUMENTS + ("threshold", "reweight"))
_xla_weights_and_sums = backend.xla_function(
    _weights_and_sums, _WINDOW_ARGUMENTS + ("threshold", "reweight"))
_xla_bce_gradient = backend.xla_function(_bce_gradient, ())


def _sums_with_gradient(weights_and_sums, logits, labels, valid):
    """The sums of `weights_and_sums`, with the SSL's gradient w.r.t. `logits`.

    The gradient is one pass that keeps the weights alone (no intermediate of autodiff): on
    TensorFlow, where the kernel's weights have no gradient, and on JAX, where autodiff of the
    portable path would keep its maps for the backward pass.

    Args:
      weights_and_sums: function of the logits (no gradient) -> (weight float32 [B, H, W, C],
        sums float32 [3]: sum(m BCE), sum(weight BCE), M).
      logits: float32 [B, H, W, C].
      labels: int32 [B, H, W], -1 at invalid pixels.
      valid: float32 [B, H, W, 1].

    Returns:
      float32 [3], the sums.
    """
    @ops.custom_gradient
    def sums_of(logits):
        weight, sums = weights_and_sums(ops.stop_gradient(logits))

        def gradient(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass it positionally, PyTorch by name.
                (upstream,) = args
            return _xla_bce_gradient(upstream, logits, labels, valid, weight)
        return sums, gradient
    return sums_of(logits)


# SSLoss's ways to compute its weights.
IMPLEMENTATIONS = ("auto", "kernel", "xla")


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class SSLoss(base.SumsLoss):
    """Structural similarity loss, Eq. 17: ce_weight * BCE + (1 - ce_weight) * SSL.

    Exact definition, for y_true labels [B, H, W] or [B, H, W, 1] and y_pred [B, H, W, C]:
    - y = one-hot labels, p = sigmoid(logits), computed in float32 whatever the logits dtype;
      a pixel labelled ignore_label is invalid; m is the valid mask.
    - Local statistics over a k x k Gaussian window w (sum 1, std sigma), VALID pixels only,
      pixels outside the image being invalid: mu = sum(w m x) / sum(w m),
      var = sum(w m x^2) / sum(w m) - mu^2, clamped at 0 (for binary y, var_y = mu_y - mu_y^2,
      computed as mu_y mu_(1-y) to be exactly 0 in one-class windows).
    - x_nor = (x - mu_x + c4) / (sqrt(var_x) + c4) for x in {y, p};  e = |y_nor - p_nor|
      (Eq. 10), a constant for the gradient (stop-gradient), as the paper says.
    - e_max = 2 (1 - w_c) / (sqrt(w_c (1 - w_c)) + c4), w_c the window's centre weight
      (Eq. 16; 4.6716 for k=3, sigma=1.5).
    - f = valid and e > beta * e_max (Eq. 11); ohem=False: f = valid.  weight = e f;
      reweight=False: weight = f.
    - BCE(y, p) element-wise sigmoid cross entropy, from logits (stable for any logits).
      BCE term = sum of BCE over classes and valid pixels / number of valid pixels.
    - SSL term = sum(weight * BCE) / M with M = sum(f) (Eq. 12-13); 0 when M = 0. With
      window_size 1 the window is the pixel itself, so y_nor = p_nor = 1, e = 0, e_max = 0 and
      no example is hard: the SSL term is 0 and the loss is ce_weight * BCE.
    - total = ce_weight * BCE term + (1 - ce_weight) * SSL term (Eq. 17). 0 for an all-ignore
      batch (gradient 0).
    The gradient w.r.t. the logits is (ce_weight m / N + (1 - ce_weight) weight / M) (p - y).
    Float32 note: where the valid p of a window are (nearly) equal, var_p is ~0 and its
    rounding noise (~1e-8) under the square root moves e by up to ~0.02.

    Sums (additive over pieces of the batch): bce_sum, num_valid (valid pixels), ssl_sum,
    num_hard (M). In a custom distributed loop, base.cross_replica_loss gives the exact loss
    of the global batch; hard_example_fraction(sums, C) is the paper's Fig. 4 proportion.

    Args:
      window_size: odd int, the region size k (paper: 3).
      sigma: float, Gaussian std in pixels (paper: 1.5).
      beta: float in [0, 1), hard-example threshold factor (paper: 0.1).
      c4: float, stability constant of Eq. 10 (paper: 0.01).
      ce_weight: float in [0, 1], the paper's lambda (0.5).
      ignore_label: int, label of invalid pixels.
      from_logits: bool, y_pred holds logits (True) or sigmoid probabilities.
      ohem: bool, drop easy examples (f); Table 3's OHEM switch.
      reweight: bool, weight hard examples by e; Table 3's Reweight switch.
      warmup_steps: int >= 0, beyond the paper: for the first `warmup_steps` training steps the
        loss is the BCE term alone (ce_weight 1), then Eq. 17. The paper fine-tunes models that
        already predict every class; from a backbone alone, the SSL term sees no hard example
        inside the region of a class the model misses and suppresses the class around it
        (docs/results.md). Needs the training step (`set_step`: the Trainer calls it; with
        `fit`, call `loss.set_step(optimizer.iterations)`). 0: the paper's loss.
      implementation: how the weights are computed, the same numbers either way (to float32
        rounding): "kernel", the CPU kernel of ssl_kernel.py (~2x faster on CPU; built by
        `python -m deeplab_ssl.losses.build_kernel`; TensorFlow only, no GPU and no XLA
        version); "xla", the portable path, XLA-compiled (CPU and GPU, every backend); "auto",
        resolved once, at the loss's first call (resolved_implementation; get_config keeps
        "auto"): the kernel when Keras runs on TensorFlow, the kernel is built, no GPU is
        visible and XLA is not requested globally (tf.config.optimizer.set_jit), else "xla".
        A loss cannot see its model's jit_compile: with `model.compile(jit_compile=True)` on a
        TensorFlow without a GPU, pass implementation="xla" (XLA does not compile the kernel:
        "Detected unsupported operations ... SslWeights", the op's name saying so). Keras'
        default, jit_compile="auto", compiles with XLA only where a GPU is visible, where
        "auto" takes the XLA path: `model.compile(loss=SSLoss())` needs nothing more. The
        statistics (structural_error, and ssl_statistics' Fig. 3 and per-class figures, on
        every backend) take the portable path.
      name, reduction, dtype: as keras.losses.Loss (the loss is always a scalar).
    """

    def __init__(self, window_size=3, sigma=1.5, beta=0.1, c4=0.01, ce_weight=0.5,
                 ignore_label=255, from_logits=True, ohem=True, reweight=True, warmup_steps=0,
                 implementation="auto", name="ssl", **kwargs):
        super().__init__(name=name, **kwargs)
        check_arguments(beta, c4, ce_weight)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                             f"{implementation!r}")
        if implementation == "kernel":
            backend.require_tensorflow("SSLoss(implementation='kernel'), the CPU kernel,")
        self.window_size = window_size
        self.sigma = sigma
        self.beta = beta
        self.c4 = c4
        self.ce_weight = ce_weight
        self.ignore_label = ignore_label
        self.from_logits = from_logits
        self.ohem = ohem
        self.reweight = reweight
        self.warmup_steps = warmup_steps
        self.implementation = implementation
        self._resolved_implementation = None
        self.e_max = max_structural_error(window_size, sigma, c4)

    def normalized_maps(self, y_true, y_pred):
        """y_nor and p_nor of Eq. 10, float32 [B, H, W, C] each, 1 at invalid pixels; no gradient.

        Args:
          y_true, y_pred: as for the loss.
        """
        labels, logits, valid = self.labels_logits_and_mask(y_true, y_pred)
        _, y_nor, p_nor = self.structural_maps(labels, ops.stop_gradient(logits), valid)
        return y_nor, p_nor

    def structural_error(self, y_true, y_pred):
        """e of Eq. 10, float32 [B, H, W, C], 0 at invalid pixels; no gradient.

        Args:
          y_true, y_pred: as for the loss.
        """
        y_nor, p_nor = self.normalized_maps(y_true, y_pred)
        return ops.abs(y_nor - p_nor)

    def sum_statistics(self, sums, num_classes):
        return {"hard_example_fraction": self.hard_example_fraction(sums, num_classes)}

    def statistics(self, y_true, y_pred):
        """Fig. 3's statistics and the per-class ones (ssl_statistics), whole batch."""
        maxima, error_sums = ssl_statistics.error_statistics(self, y_true, y_pred)
        return ({"error_sums": error_sums,
                 "class_sums": ssl_statistics.class_statistics(self, y_true, y_pred)},
                {"error_maxima": maxima})

    def summarize_statistics(self, sums, maxima):
        """ERROR_STATISTICS (floats) and CLASS_STATISTICS (lists of C floats)."""
        return {**ssl_statistics.summarize_error_statistics(
                    self.e_max, maxima["error_maxima"], sums["error_sums"]),
                **ssl_statistics.summarize_class_statistics(self, sums["class_sums"])}

    def labels_logits_and_mask(self, y_true, y_pred):
        """int32 labels [B, H, W] (-1 invalid), float32 logits [B, H, W, C], valid [B, H, W, 1]."""
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        return labels, base.sigmoid_logits(logits, self.from_logits), valid

    def structural_maps(self, labels, logits, valid):
        """y, y_nor and p_nor, float32 [B, H, W, C], from labels_logits_and_mask's tensors."""
        return _xla_structural_maps(labels, ops.sigmoid(logits), valid, self.window_size,
                                    self.sigma, self.c4)

    def threshold(self):
        """beta e_max, the threshold of the hard examples (a Python float), or None without
        OHEM."""
        return self.beta * self.e_max if self.ohem else None

    def example_weights(self, labels, logits, valid):
        """The portable path's weight and f, float32 [B, H, W, C] each (no gradient), from
        labels_logits_and_mask's tensors."""
        _, weight, is_hard = _xla_example_weights(
            labels, ops.sigmoid(ops.stop_gradient(logits)), valid, self.window_size,
            self.sigma, self.c4, self.threshold(), self.reweight)
        return weight, is_hard

    def sums(self, y_true, y_pred):
        labels, logits, valid = self.labels_logits_and_mask(y_true, y_pred)
        bce_sum, ssl_sum, num_hard = ops.unstack(_sums_with_gradient(
            lambda logits: self._weights_and_sums(labels, logits, valid), logits, labels,
            valid))
        return {"bce_sum": bce_sum, "num_valid": ops.sum(valid), "ssl_sum": ssl_sum,
                "num_hard": num_hard}

    def resolved_implementation(self):
        """"kernel" or "xla": `implementation`, with "auto" resolved at the first call from
        public facts (see the class docstring), then kept."""
        if self._resolved_implementation is None:
            use_kernel = self.implementation == "kernel" or (
                self.implementation == "auto" and backend.is_tensorflow()
                and not backend.compiles_with_xla() and ssl_kernel.available())
            self._resolved_implementation = "kernel" if use_kernel else "xla"
        return self._resolved_implementation

    def _weights_and_sums(self, labels, logits, valid):
        """The example weights and the forward sums of the loss: the kernel's, or the portable
        path's.

        Args:
          labels: int32 [B, H, W], -1 at invalid pixels.
          logits: float32 [B, H, W, C], no gradient.
          valid: float32 [B, H, W, 1].

        Returns:
          weight: float32 [B, H, W, C] (see the class docstring).
          sums: float32 [3], sum(m BCE), sum(weight BCE), M over the batch.
        """
        if self.resolved_implementation() == "kernel":
            return ssl_kernel.ssl_weights(
                logits, labels, valid, local_stats.gaussian_1d(self.window_size, self.sigma),
                self.c4, self.ohem, self.threshold() or 0.0, self.reweight)
        return _xla_weights_and_sums(labels, logits, valid, self.window_size, self.sigma,
                                     self.c4, self.threshold(), self.reweight)

    def terms(self, sums):
        return {"bce": ops.divide_no_nan(sums["bce_sum"], sums["num_valid"]),
                "ssl": ops.divide_no_nan(sums["ssl_sum"], sums["num_hard"])}

    def current_ce_weight(self):
        """lambda now: 1 during the warm-up steps, else ce_weight (a float32 scalar)."""
        if not self.warmup_steps:
            return ops.convert_to_tensor(self.ce_weight, "float32")
        step = backend.training_step(self.step, "SSLoss(warmup_steps > 0)")
        return ops.where(ops.cast(step, "int32") < self.warmup_steps, 1.0,
                         ops.convert_to_tensor(self.ce_weight, "float32"))

    def loss_from_sums(self, sums):
        terms = self.terms(sums)
        ce_weight = self.current_ce_weight()
        return ce_weight * terms["bce"] + (1.0 - ce_weight) * terms["ssl"]

    @staticmethod
    def hard_example_fraction(sums, num_classes):
        """M / (valid pixels * C): the proportion of hard examples (paper Fig. 4), float32.

        Args:
          sums: the dict of `sums` (or of base.cross_replica_loss's global sums).
          num_classes: int C.
        """
        return ops.divide_no_nan(sums["num_hard"], sums["num_valid"] * float(num_classes))

    def get_config(self):
        config = super().get_config()
        config.update(window_size=self.window_size, sigma=self.sigma, beta=self.beta,
                      c4=self.c4, ce_weight=self.ce_weight, ignore_label=self.ignore_label,
                      from_logits=self.from_logits, ohem=self.ohem, reweight=self.reweight,
                      warmup_steps=self.warmup_steps, implementation=self.implementation)
        return config
