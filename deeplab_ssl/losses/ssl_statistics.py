"""The SSL's statistics: the paper's Fig. 3 (extremes of y_nor and p_nor, max, mean and median of
e) and, per class, where the hard examples and the gradient of each term are.

Computed for the whole batch with keras.ops, with no gradient, so they run on every backend
(and inside a compiled step), in parts that combine over pieces of a batch (replicas): sums
add up, maxima combine by element-wise maximum. The summaries turn the combined parts (numpy)
into figures. SSLoss.statistics and SSLoss.summarize_statistics, what training logs, call them.
"""
import numpy as np
from keras import ops

# The figures of the paper's Fig. 3, from summarize_error_statistics.
ERROR_STATISTICS = ("y_nor_max", "y_nor_min", "p_nor_max", "p_nor_min", "error_max",
                    "error_mean", "error_median")
ERROR_HISTOGRAM_BINS = 1000
# Per class c, from summarize_class_statistics: lists of C floats. "in": the examples
# (pixel, c) of pixels labelled c; "out": those of the other valid pixels.
CLASS_STATISTICS = ("class_hard_fraction_in", "class_hard_fraction_out", "class_bce_gradient_in",
                    "class_bce_gradient_out", "class_ssl_gradient_in", "class_ssl_gradient_out")


def error_statistics(loss, y_true, y_pred, num_bins=ERROR_HISTOGRAM_BINS):
    """Fig. 3's statistics of a batch, over its valid examples (pixel, class).

    Args:
      loss: the SSLoss.
      y_true, y_pred: as for the loss.
      num_bins: int, bins of the histogram of e over [0, e_max].

    Returns:
      maxima: float32 [5], the maxima of y_nor, -y_nor, p_nor, -p_nor and e (-inf where the
        batch has no valid pixel).
      sums: float32 [2 + num_bins], the sum of e, the number of valid examples, and the
        histogram of e (counts; values above e_max fall in the last bin).
    """
    labels, logits, valid = loss.labels_logits_and_mask(y_true, y_pred)
    _, y_nor, p_nor = loss.structural_maps(labels, ops.stop_gradient(logits), valid)
    is_valid = ops.broadcast_to(valid > 0, ops.shape(y_nor))
    error = ops.abs(y_nor - p_nor)

    def masked_max(x):
        return ops.max(ops.where(is_valid, x, -np.inf))
    maxima = ops.stack([masked_max(y_nor), masked_max(-y_nor), masked_max(p_nor),
                        masked_max(-p_nor), masked_max(error)])
    bin_width = loss.e_max / num_bins if loss.e_max > 0 else 1.0
    # Clipped below too: NaN logits (a diverged run, stopped by training) cast to < 0.
    bins = ops.clip(ops.cast(error / bin_width, "int32"), 0, num_bins - 1)
    counted = ops.cast(is_valid, "float32")
    histogram = ops.segment_sum(ops.reshape(counted, [-1]), ops.reshape(bins, [-1]),
                                num_segments=num_bins)
    counts = ops.stack([ops.sum(error * counted), ops.sum(counted)])
    return maxima, ops.concatenate([counts, histogram], axis=0)


def summarize_error_statistics(e_max, maxima, sums):
    """Fig. 3's figures, {name in ERROR_STATISTICS: float}, from error_statistics' combined
    parts (numpy). error_median is read from the histogram: exact to one bin (e_max / bins).
    All are 0 for a batch without valid pixels."""
    maxima, sums = np.asarray(maxima, np.float64), np.asarray(sums, np.float64)
    total_error, count, histogram = sums[0], sums[1], sums[2:]
    if not count:
        return dict.fromkeys(ERROR_STATISTICS, 0.0)
    bin_width = e_max / len(histogram) if e_max > 0 else 1.0
    median_bin = int(np.searchsorted(np.cumsum(histogram), count / 2.0))
    values = [maxima[0], -maxima[1], maxima[2], -maxima[3], maxima[4],
              total_error / count, (median_bin + 0.5) * bin_width]
    return dict(zip(ERROR_STATISTICS, (float(v) for v in values)))


def class_statistics(loss, y_true, y_pred):
    """Per class, where the hard examples and the gradient of each term are: additive sums.

    For the logits' channel c, over the valid pixels labelled c (y_c = 1, "in") and the other
    valid pixels (y_c = 0, "out"). The gradient of the loss w.r.t. a logit is
    (ce_weight m / N + (1 - ce_weight) weight / M) (p - y): its first part is the BCE term's,
    its second the SSL term's. The weights are the portable path's.

    Args:
      loss: the SSLoss.
      y_true, y_pred: as for the loss.

    Returns:
      float32 [8, C], additive over pieces of a batch, rows: the number of examples in and
      out; the hard examples (f) in and out; the sum of m |p - y| in and out; the sum of
      weight |p - y| in and out.
    """
    labels, logits, valid = loss.labels_logits_and_mask(y_true, y_pred)
    weight, is_hard = loss.example_weights(labels, logits, valid)
    probs = ops.sigmoid(ops.stop_gradient(logits))
    one_hot = ops.one_hot(ops.maximum(labels, 0), probs.shape[-1]) * valid
    in_class, out_class = one_hot, valid - one_hot
    error = ops.abs(probs - one_hot)
    rows = [(in_class, out_class), (in_class * is_hard, out_class * is_hard),
            (in_class * error, out_class * error),
            (in_class * weight * error, out_class * weight * error)]
    return ops.stack([ops.sum(t, axis=(0, 1, 2)) for pair in rows for t in pair])


def summarize_class_statistics(loss, sums):
    """{name in CLASS_STATISTICS: list of C floats} from class_statistics' combined sums.

    class_hard_fraction_*: the share of the examples that are hard (f = 1; 1 without OHEM);
    class_bce_gradient_*: lambda sum(m |p - y|) / N (lambda: loss.current_ce_weight()), the L1
    norm of the BCE term's gradient w.r.t. the logits of channel c there;
    class_ssl_gradient_*: (1 - lambda) sum(weight |p - y|) / M, the SSL term's. N and M are
    those of the whole batch: N, the valid pixels; M, the hard examples (N C without OHEM).
    Each 0 where it has no example.
    """
    sums = np.asarray(sums, np.float64)
    num_valid = sums[0].sum()  # Each valid pixel is "in" exactly one class.
    num_hard = sums[2:4].sum()

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                         where=denominator > 0)
    ce_weight = float(loss.current_ce_weight())
    figures = [ratio(sums[2], sums[0]), ratio(sums[3], sums[1]),
               ce_weight * ratio(sums[4], num_valid), ce_weight * ratio(sums[5], num_valid),
               (1.0 - ce_weight) * ratio(sums[6], num_hard),
               (1.0 - ce_weight) * ratio(sums[7], num_hard)]
    return {name: [float(v) for v in values]
            for name, values in zip(CLASS_STATISTICS, figures)}
