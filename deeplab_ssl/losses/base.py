"""The interface every loss of the family shares: additive sums, and the loss computed from them.

A segmentation loss such as the SSL is a ratio of sums over the batch (a BCE sum over the valid
pixel count, an SSL sum over the hard-example count). Averaging per-replica ratios is not the
loss of the global batch; adding the sums first is. So every loss here exposes

    sums(y_true, y_pred) -> dict[str, float32 scalar]   additive over pieces of a batch
    loss_from_sums(sums) -> float32 scalar
    terms(sums) -> dict[str, float32 scalar]            the loss's named terms, for logs

and `cross_replica_loss` all-reduces the sums inside a replica context. A loss also says what a
training loop logs of it (`sum_statistics`, `statistics`) and takes the training step from the
loop through `set_step`, so the loop needs to know no loss.
"""
import keras
import tensorflow as tf
from keras import ops

from deeplab_ssl.losses import backend


def labels_logits_and_mask(y_true, y_pred, ignore_label):
    """Checks and standardizes a (labels, logits) pair.

    Args:
      y_true: integer (or integer-valued float) labels [B, H, W] or [B, H, W, 1].
      y_pred: logits [B, H, W, C], any float dtype.
      ignore_label: int, the label of pixels that take no part in the loss.

    Returns:
      labels: int32 [B, H, W], with ignored pixels set to -1 (so one_hot gives zeros there).
      logits: float32 [B, H, W, C].
      valid: float32 [B, H, W, 1], 1 where the label is not ignore_label.

    Raises:
      ValueError: on ranks or spatial shapes that do not fit (static shapes).
      tf.errors.InvalidArgumentError (TensorFlow) or ValueError: when a label other than
        ignore_label is outside [0, C) (see backend.check_labels).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_pred.shape) != 4:
        raise ValueError(f"y_pred must be logits [B, H, W, C]; got shape {y_pred.shape}")
    if len(y_true.shape) == 4:
        if y_true.shape[-1] not in (1, None):
            raise ValueError(f"y_true must be labels [B, H, W] or [B, H, W, 1]; "
                             f"got shape {y_true.shape}")
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != 3:
        raise ValueError(f"y_true must be labels [B, H, W] or [B, H, W, 1]; "
                         f"got shape {y_true.shape}")
    if any(a is not None and b is not None and a != b
           for a, b in zip(y_true.shape, y_pred.shape[:3])):
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ "
                         "in [B, H, W]: upsample the logits to the label size first")
    logits = ops.cast(y_pred, "float32")
    labels = ops.cast(y_true, "int32")
    is_valid = ops.not_equal(labels, ignore_label)
    labels = backend.check_labels(ops.where(is_valid, labels, -1), ops.shape(logits)[-1])
    valid = ops.cast(is_valid, "float32")[..., None]
    return labels, logits, valid


def check_ce_weight(ce_weight):
    """Raises ValueError unless the cross-entropy term's weight `ce_weight` is in [0, 1]."""
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")


def sigmoid_logits(y_pred, from_logits):
    """float32 logits [B, H, W, C] from logits or from sigmoid probabilities (clipped to 1e-7)."""
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        return y_pred
    probs = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    return ops.log(probs) - ops.log1p(-probs)


class SumsLoss(keras.losses.Loss):
    """Base class: a keras Loss computed from additive sums over the batch.

    Subclasses implement `sums`, `terms` and `loss_from_sums`. `loss(y_true, y_pred)` returns
    the float32 scalar `loss_from_sums(sums(y_true, y_pred))`. Inside `model.fit` under a
    tf.distribute strategy it is scaled by 1 / num_replicas_in_sync like every Keras loss, so
    the SUM of the replicas' gradients is the mean of the per-replica losses' gradients
    (standard Keras semantics). For the exact loss of the global batch in a custom loop use
    `cross_replica_loss`.
    """

    def sums(self, y_true, y_pred):
        """Returns dict[str, float32 scalar] of sums additive over pieces of the batch."""
        raise NotImplementedError

    def loss_from_sums(self, sums):
        """Returns the float32 scalar loss from (local or all-reduced) `sums`."""
        raise NotImplementedError

    def terms(self, sums):
        """The terms of the loss by name, dict[str, float32 scalar], from `sums`.

        What training logs beside the loss, e.g. SSLoss's `bce` and `ssl` terms of Eq. 17.
        """
        raise NotImplementedError

    # The training step that a scheduled loss reads at each call; None until `set_step`.
    step = None

    def set_step(self, step):
        """The one hook through which a training loop gives the loss its training step.

        The loop calls it once, before training (`training.Trainer` does; with Keras' `fit`,
        call `loss.set_step(optimizer.iterations)` yourself). A loss whose definition changes
        over training reads `self.step` at each call through `backend.training_step`: SSLoss's
        warmup_steps, SoftmaxCrossEntropy's hard_example_mining_step, AffinityFieldLoss's
        decay_steps. Other losses keep it unread. Not serialized: set it again after loading.

        Args:
          step: an integer scalar variable (optimizer.iterations, int64 []) or tensor.
        """
        self.step = step

    def sum_statistics(self, sums, num_classes):
        """Figures a training loop logs at every step beside the terms, from the (global) sums:
        dict[str, float32 scalar], e.g. SSLoss's proportion of hard examples. None here."""
        del sums, num_classes
        return {}

    def statistics(self, y_true, y_pred):
        """Statistics a training loop logs at its log steps, in parts that combine over pieces of
        a batch (replicas): `sums` add up, `maxima` combine by element-wise maximum.

        Returns:
          (sums, maxima): two dicts of float32 tensors, no gradient; both empty here.
        """
        del y_true, y_pred
        return {}, {}

    def summarize_statistics(self, sums, maxima):
        """{name: float, or list of floats} from the combined (numpy) parts of `statistics`."""
        del sums, maxima
        return {}

    def call(self, y_true, y_pred):
        return self.loss_from_sums(self.sums(y_true, y_pred))

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} takes no sample_weight: invalid pixels are "
                             "given by ignore_label")
        with keras.name_scope(self.name):
            loss = self.call(y_true, y_pred)
        return backend.replica_scale(loss)


def cross_replica_loss(loss, y_true, y_pred):
    """The loss of the whole global batch, on every replica, with exact summed gradients.

    Call it in a replica context (inside `strategy.run`, or with no strategy at all). The local
    sums s are all-reduced (SUM) into G, and the loss is `loss.loss_from_sums(S)` with
    S = s + stop_gradient(G - s): its value is the loss of the global batch, and its gradient on
    replica r is dL/dS(G) * ds_r/dtheta, so the SUM of the replicas' gradients (what Keras
    optimizers all-reduce) is dL/dS(G) * dG/dtheta, the exact gradient of the global loss, for
    any loss_from_sums. Do not scale the result by 1 / num_replicas.

    Args:
      loss: a SumsLoss.
      y_true: labels of this replica's batch [b, H, W] or [b, H, W, 1].
      y_pred: logits of this replica's batch [b, H, W, C].

    Returns:
      (loss_value float32 scalar, global_sums dict[str, float32 scalar]).
    """
    if not isinstance(loss, SumsLoss):
        raise TypeError(f"cross_replica_loss needs a SumsLoss, got {type(loss).__name__}")
    backend.require_tensorflow("cross_replica_loss (tf.distribute)")
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError("cross_replica_loss must be called in a replica context "
                         "(inside strategy.run), not in a cross-replica context")
    local_sums = loss.sums(y_true, y_pred)
    global_sums = context.all_reduce(tf.distribute.ReduceOp.SUM, local_sums)
    sums = {key: value + tf.stop_gradient(global_sums[key] - value)
            for key, value in local_sums.items()}
    return loss.loss_from_sums(sums), global_sums
