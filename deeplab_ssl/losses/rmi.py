"""Region mutual information (RMI) loss of Zhao, Wang, Yang, Cai, NeurIPS 2019 (arXiv:1910.12037).

Each pixel of a (downsampled) map is represented by the R x R region it starts, a d = R^2
vector; the loss maximizes a lower bound of the mutual information between the regions of the
labels Y and of the probabilities P, per image and class, modelled as Gaussians: minimizing
0.5 log det of the posterior covariance of Y given P. Constants from the authors' code
(github.com/ZJULearning/RMI, losses/rmi/rmi.py and script/train.sh): radius 3, 4x4 average
pooling with stride 4 and padding 2 (rmi_pool_way=1), _POS_ALPHA = 5e-4, lambda = 0.5.
"""
import keras
from keras import ops

from deeplab_ssl.losses import base
from deeplab_ssl.losses import cross_entropy

# The authors' _POS_ALPHA: added to the diagonals of Sigma_P and of the posterior covariance.
EPSILON = 5e-4


def pool(x, pool_size):
    """The authors' avg_pool2d(kernel = stride = pool_size, padding = pool_size // 2), whose
    zero padding counts in the average: [B, H // s + 1, W // s + 1, C] for an even s."""
    pad = pool_size // 2
    x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return ops.average_pool(x, pool_size, pool_size, padding="valid",
                            data_format="channels_last")


def regions(x, radius):
    """The R x R regions of x [B, H, W, C] that lie inside it, centred over their positions.

    Returns:
      float64 [B, H - R + 1, W - R + 1, C, R^2], x[b, i + u, j + v, c] at index R u + v of the
      last axis, minus its mean over the (H - R + 1) (W - R + 1) positions.
    """
    rows, cols = x.shape[1] - radius + 1, x.shape[2] - radius + 1
    vectors = ops.stack([x[:, u:u + rows, v:v + cols] for u in range(radius)
                         for v in range(radius)], axis=-1)
    return vectors - ops.mean(vectors, axis=(1, 2), keepdims=True)


def rmi_per_image_and_class(one_hot, probs, radius, pool_size):
    """0.5 / d log det(I + M / eps) for each image and class, in float64 (as the authors: the
    covariances are sums over thousands of positions, and M a difference of them).

    Args:
      one_hot: float32 [B, H, W, C], y, 0 at invalid pixels.
      probs: float32 [B, H, W, C], p, 0 at invalid pixels.
      radius, pool_size: Python ints.

    Returns:
      float64 [B, C], >= 0.

    Raises:
      ValueError: the pooled height or width is unknown when traced or smaller than radius.
    """
    y, p = pool(one_hot, pool_size), pool(probs, pool_size)
    pooled = tuple(y.shape[1:3])
    if None in pooled or min(pooled) < radius:
        raise ValueError(f"RMILoss needs pooled maps of at least radius x radius = {radius} x "
                         f"{radius} (known when traced): labels of size "
                         f"{tuple(one_hot.shape[1:3])} pool to {pooled} with pool_size "
                         f"{pool_size}")
    y, p = (regions(ops.cast(x, "float64"), radius) for x in (y, p))

    def covariance(a, b):  # sum over positions of a b^T: [B, C, d, d]
        return ops.einsum("bijcd,bijce->bcde", a, b)
    cov_yp = covariance(y, p)
    identity = ops.eye(radius * radius, dtype="float64")
    posterior = covariance(y, y) - ops.matmul(
        cov_yp, ops.solve(covariance(p, p) + EPSILON * identity, ops.swapaxes(cov_yp, -1, -2)))
    cholesky = ops.cholesky(identity + posterior / EPSILON)
    return ops.sum(ops.log(ops.diagonal(cholesky, axis1=-2, axis2=-1)), axis=-1) / (
        radius * radius)


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class RMILoss(base.SumsLoss):
    """ce_weight * BCE + (1 - ce_weight) * RMI term, the authors' lambda_way=1 total.

    Exact definition, for y_true labels [B, H, W] or [B, H, W, 1] and y_pred [B, H, W, C]
    (any float dtype, computed in float32; the RMI's covariances in float64):
    - y = one-hot labels, p = sigmoid(logits) per class; both 0 at ignored pixels.
    - y and p are average-pooled, kernel = stride = s = pool_size, zero padding s // 2 on each
      side counted in the average (PyTorch's avg_pool2d(s, s, s // 2)): [B, H', W', C] with
      H' = (H + 2 (s // 2) - s) // s + 1 (H // 4 + 1 for s = 4; s = 1: no pooling).
    - Per image and class, the n = (H' - R + 1) (W' - R + 1) regions R x R inside the pooled
      map give d = R^2 vectors Y, P [d, n], centred over the n positions (no padding).
      Sigma_Y = Y Y^T, Sigma_P = P P^T, Sigma_YP = Y P^T (not divided by n, as the authors);
      M = Sigma_Y - Sigma_YP (Sigma_P + eps I)^-1 Sigma_YP^T, eps = 5e-4; M is positive
      semidefinite (a Schur complement).
    - rmi(b, c) = 0.5 / d log det(I + M / eps) >= 0, by Cholesky. The authors' value is
      0.5 / d log det(M + eps I) = rmi(b, c) + 0.5 log eps: a constant per class apart (-3.80),
      same gradient; the shift makes rmi 0 where the pooled y is constant (a class absent from
      the image, an all-ignore image). Gradients flow through P's covariances; Y is a constant.
      Left out, under 1e-6 relative: the authors' + 1e-6 on p (a shift, cancelled by the
      centring but at the padded borders) and + 1e-8 on the Cholesky diagonal (>= 0.022).
    - RMI term = sum over classes, mean over the B images of rmi(b, c) (the authors' _IS_SUM=1:
      `rmi_now.view([-1, C]).mean(dim=0)`, then summed over classes).
    - BCE term as SigmoidCrossEntropy: sum of BCE over valid pixels and classes / valid pixels
      (the authors divide by valid pixels + 1).
    - total = ce_weight * BCE term + (1 - ce_weight) * RMI term: 0 for an all-ignore batch
      (gradient 0); ce_weight = 1 gives SigmoidCrossEntropy.
    Inputs whose pooled H' or W' is smaller than R, or unknown when traced, raise ValueError.

    Sums (additive over pieces of the batch): bce_sum, num_valid (valid pixels), rmi_sum (sum
    of rmi over images and classes), num_images. Terms: bce, rmi.

    Args:
      radius: int >= 1, R, the side of the regions (the authors' rmi_radius).
      pool_size: int >= 1, s, the average pooling's kernel and stride (rmi_pool_size,
        rmi_pool_stride).
      ce_weight: float in [0, 1], weight of the BCE term (the authors' weight_lambda).
      ignore_label, from_logits, name, reduction, dtype: as SSLoss.
    """

    def __init__(self, radius=3, pool_size=4, ce_weight=0.5, ignore_label=255,
                 from_logits=True, name="rmi", **kwargs):
        super().__init__(name=name, **kwargs)
        for argument, value in (("radius", radius), ("pool_size", pool_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be an int >= 1, got {value!r}")
        base.check_ce_weight(ce_weight)
        self.radius = radius
        self.pool_size = pool_size
        self.ce_weight = ce_weight
        self.ignore_label = ignore_label
        self.from_logits = from_logits

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        logits = base.sigmoid_logits(logits, self.from_logits)
        bce_sum = cross_entropy.sigmoid_cross_entropy_sum(logits, labels, valid)
        one_hot = ops.one_hot(ops.maximum(labels, 0), logits.shape[-1]) * valid
        rmi = rmi_per_image_and_class(one_hot, ops.sigmoid(logits) * valid, self.radius,
                                      self.pool_size)
        return {
            "bce_sum": bce_sum,
            "num_valid": ops.sum(valid),
            "rmi_sum": ops.cast(ops.sum(rmi), "float32"),
            "num_images": ops.cast(ops.shape(logits)[0], "float32"),
        }

    def terms(self, sums):
        return {"bce": ops.divide_no_nan(sums["bce_sum"], sums["num_valid"]),
                "rmi": ops.divide_no_nan(sums["rmi_sum"], sums["num_images"])}

    def loss_from_sums(self, sums):
        terms = self.terms(sums)
        return self.ce_weight * terms["bce"] + (1.0 - self.ce_weight) * terms["rmi"]

    def get_config(self):
        config = super().get_config()
        config.update(radius=self.radius, pool_size=self.pool_size, ce_weight=self.ce_weight,
                      ignore_label=self.ignore_label, from_logits=self.from_logits)
        return config
