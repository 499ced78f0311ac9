"""SSIM losses of the paper's Eq. 7 (1 - SSIM) and Eq. 9 (1 - contrast-structure), baselines."""
import keras
from keras import ops

from deeplab_ssl.losses import base
from deeplab_ssl.losses import cross_entropy
from deeplab_ssl.losses import local_stats


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class SSIMLoss(base.SumsLoss):
    """ce_weight * BCE + (1 - ce_weight) * SSIM term, the SSIM taking the SSL's place in Eq. 17.

    Per class, y = one-hot labels and p = sigmoid(logits) (the paper applies the sigmoid when
    using the SSIM). Local statistics over the Gaussian window and VALID pixels only, shared with
    the SSL (local_stats.masked_local_means): mu_x, sigma_x^2, sigma_xy, with gradients through
    all of them (here, unlike the SSL, the statistics of p are differentiated).
    - Eq. 7 (contrast_structure_only=False): 1 - S1 S2 with
      S1 = (2 mu_y mu_p + C1) / (mu_y^2 + mu_p^2 + C1),
      S2 = (2 sigma_yp + C2) / (sigma_y^2 + sigma_p^2 + C2).
    - Eq. 9 (contrast_structure_only=True): 1 - S2 = (sigma_y^2 + sigma_p^2 - 2 sigma_yp) /
      (sigma_y^2 + sigma_p^2 + C2), the local form of Eq. 9.
    SSIM term = sum over valid pixels and classes of the map above / number of valid pixels
    (the form of the BCE term). BCE term as in SigmoidCrossEntropy. ce_weight=0 gives the SSIM
    loss alone. Sums: bce_sum, num_valid, ssim_sum.

    Args:
      window_size: odd int, region size (the paper compares 3 and 11).
      sigma: float, Gaussian std in pixels.
      c1, c2: stability constants, (0.01 L)^2 and (0.03 L)^2 with dynamic range L = 1.
      contrast_structure_only: bool, Eq. 9 (True) or Eq. 7 (False).
      ce_weight: float in [0, 1], weight of the BCE term.
      ignore_label, from_logits, name, reduction, dtype: as SSLoss.
    """

    def __init__(self, window_size=3, sigma=1.5, c1=0.01 ** 2, c2=0.03 ** 2,
                 contrast_structure_only=False, ce_weight=0.5, ignore_label=255,
                 from_logits=True, name="ssim", **kwargs):
        super().__init__(name=name, **kwargs)
        local_stats.gaussian_window(window_size, sigma)  # validates the window
        base.check_ce_weight(ce_weight)
        self.window_size = window_size
        self.sigma = sigma
        self.c1 = c1
        self.c2 = c2
        self.contrast_structure_only = contrast_structure_only
        self.ce_weight = ce_weight
        self.ignore_label = ignore_label
        self.from_logits = from_logits

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        logits = base.sigmoid_logits(logits, self.from_logits)
        one_hot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
        bce_sum = cross_entropy.sigmoid_cross_entropy_sum(logits, labels, valid)
        probs = ops.sigmoid(logits) * valid
        # y is binary and zero at invalid pixels: y^2 = y, y p = m y p.
        mu_y, mu_p, mean_p2, mean_yp = local_stats.masked_local_means(
            [one_hot, probs, probs * probs, one_hot * probs], valid, self.window_size,
            self.sigma)
        var_y = ops.maximum(mu_y - ops.square(mu_y), 0.0)
        var_p = ops.maximum(mean_p2 - ops.square(mu_p), 0.0)
        covariance = mean_yp - mu_y * mu_p
        structure = (2.0 * covariance + self.c2) / (var_y + var_p + self.c2)
        if self.contrast_structure_only:
            ssim = structure
        else:
            ssim = structure * (2.0 * mu_y * mu_p + self.c1) / (
                ops.square(mu_y) + ops.square(mu_p) + self.c1)
        return {
            "bce_sum": bce_sum,
            "num_valid": ops.sum(valid),
            "ssim_sum": ops.sum((1.0 - ssim) * valid),
        }

    def terms(self, sums):
        return {"bce": ops.divide_no_nan(sums["bce_sum"], sums["num_valid"]),
                "ssim": ops.divide_no_nan(sums["ssim_sum"], sums["num_valid"])}

    def loss_from_sums(self, sums):
        terms = self.terms(sums)
        return self.ce_weight * terms["bce"] + (1.0 - self.ce_weight) * terms["ssim"]

    def get_config(self):
        config = super().get_config()
        config.update(window_size=self.window_size, sigma=self.sigma, c1=self.c1, c2=self.c2,
                      contrast_structure_only=self.contrast_structure_only,
                      ce_weight=self.ce_weight, ignore_label=self.ignore_label,
                      from_logits=self.from_logits)
        return config
