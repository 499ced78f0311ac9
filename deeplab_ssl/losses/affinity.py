"""Affinity field loss (Ke et al., ECCV 2018), non-adaptive, added to softmax cross entropy.

Follows the official code, github.com/twke18/Adaptive_Affinity_Fields:
network/aaf/losses.py `affinity_loss`, network/aaf/layers.py, pyscripts/train/train_affinity.py
(kld_margin 3.0, kld_lambda_1 = kld_lambda_2 = 1.0 in bashscripts/voc12/train_pspnet_affinity.sh).
"""
import keras
from keras import ops

from deeplab_ssl.losses import backend
from deeplab_ssl.losses import base

# The 4 offsets (dy, dx) of half the 8-neighbourhood; each pixel pair is visited once here and
# both of its directions (a -> b, b -> a) are scored, which is the official 8-neighbour sum.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))
_EPSILON = 1e-4


def _pair_slices(x, dy, dx):
    """(x at pixels a, x at neighbours b = a + (dy, dx)), for pairs inside the image."""
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    x0, x1 = max(0, -dx), max(0, dx)
    return (x[:, :height - dy, x0:width - x1], x[:, dy:, x1:width - x0])


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class AffinityFieldLoss(base.SumsLoss):
    """Softmax CE + affinity field loss on 8 neighbours at distance 1.

    p = softmax(logits) clipped to [1e-4, 1], q = 1 - p clipped likewise. For each pixel a, each
    of its 8 neighbours b inside the image with neither a nor b labelled ignore_label, and each
    class c, the binary KL divergence KL_c(b || a) = p_b log(p_b / p_a) + q_b log(q_b / q_a).
    The pair is an edge for class c when exactly one of a, b has label c:
    - edge: separating force max(0, kld_margin - KL_c);
    - not edge: grouping force KL_c.
    loss = CE + decay * (kld_lambda_1 * mean over edge triples + kld_lambda_2 * mean over
    not-edge triples), CE the softmax cross entropy averaged over valid pixels, and
    decay = 10^(-step / decay_steps) as in train_affinity.py (decay_steps 0: decay = 1).
    Sums: ce_sum, num_valid, edge_sum, num_edge, not_edge_sum, num_not_edge.

    Args:
      kld_margin: float, the margin of the separating force (3.0).
      kld_lambda_1: float, weight of the edge term.
      kld_lambda_2: float, weight of the not-edge term.
      decay_steps: int, 0 or the official num_steps of the exponential decay.
      step: the training step (see SumsLoss.set_step, which a training loop calls), read at
        each call; needed when decay_steps > 0.
      ignore_label, name, reduction, dtype: as SSLoss.
    """

    def __init__(self, kld_margin=3.0, kld_lambda_1=1.0, kld_lambda_2=1.0, decay_steps=0,
                 step=None, ignore_label=255, name="affinity_field", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kld_margin = kld_margin
        self.kld_lambda_1 = kld_lambda_1
        self.kld_lambda_2 = kld_lambda_2
        self.decay_steps = decay_steps
        self.set_step(step)
        self.ignore_label = ignore_label

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        ce = ops.sparse_categorical_crossentropy(ops.maximum(labels, 0), logits,
                                                 from_logits=True)
        probs = ops.softmax(logits)
        p = ops.clip(probs, _EPSILON, 1.0)
        q = ops.clip(1.0 - probs, _EPSILON, 1.0)
        log_p, log_q = ops.log(p), ops.log(q)
        one_hot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
        sums = {"ce_sum": ops.sum(ce * valid[..., 0]), "num_valid": ops.sum(valid),
                "edge_sum": 0.0, "num_edge": 0.0, "not_edge_sum": 0.0, "num_not_edge": 0.0}
        for dy, dx in _HALF_NEIGHBOURHOOD:
            p_a, p_b = _pair_slices(p, dy, dx)
            q_a, q_b = _pair_slices(q, dy, dx)
            log_p_a, log_p_b = _pair_slices(log_p, dy, dx)
            log_q_a, log_q_b = _pair_slices(log_q, dy, dx)
            valid_a, valid_b = _pair_slices(valid, dy, dx)
            one_hot_a, one_hot_b = _pair_slices(one_hot, dy, dx)
            log_p_ratio = log_p_b - log_p_a
            log_q_ratio = log_q_b - log_q_a
            kl_b_a = p_b * log_p_ratio + q_b * log_q_ratio
            kl_a_b = -(p_a * log_p_ratio + q_a * log_q_ratio)
            pair_valid = valid_a * valid_b
            edge = pair_valid * ops.abs(one_hot_a - one_hot_b)
            not_edge = pair_valid - edge
            separating = (ops.relu(self.kld_margin - kl_b_a)
                          + ops.relu(self.kld_margin - kl_a_b))
            sums["edge_sum"] += ops.sum(edge * separating)
            sums["not_edge_sum"] += ops.sum(not_edge * (kl_b_a + kl_a_b))
            sums["num_edge"] += 2.0 * ops.sum(edge)
            sums["num_not_edge"] += 2.0 * ops.sum(not_edge)
        return sums

    def terms(self, sums):
        return {"ce": ops.divide_no_nan(sums["ce_sum"], sums["num_valid"]),
                "affinity_edge": ops.divide_no_nan(sums["edge_sum"], sums["num_edge"]),
                "affinity_not_edge": ops.divide_no_nan(sums["not_edge_sum"],
                                                       sums["num_not_edge"])}

    def loss_from_sums(self, sums):
        terms = self.terms(sums)
        decay = 1.0
        if self.decay_steps:
            step = backend.training_step(self.step, "AffinityFieldLoss(decay_steps > 0)")
            decay = ops.power(10.0, -ops.cast(step, "float32") / float(self.decay_steps))
        affinity = (self.kld_lambda_1 * terms["affinity_edge"]
                    + self.kld_lambda_2 * terms["affinity_not_edge"])
        return terms["ce"] + decay * affinity

    def get_config(self):
        config = super().get_config()
        config.update(kld_margin=self.kld_margin, kld_lambda_1=self.kld_lambda_1,
                      kld_lambda_2=self.kld_lambda_2, decay_steps=self.decay_steps,
                      ignore_label=self.ignore_label)
        return config
