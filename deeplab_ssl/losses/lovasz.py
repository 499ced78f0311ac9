"""The Lovasz-softmax loss of Berman, Rannen Triki, Blaschko, CVPR 2018 ("The Lovasz-Softmax
loss: A tractable surrogate for the optimization of the intersection-over-union measure in
neural networks"): the Lovasz extension of the per-class Jaccard loss 1 - IoU, a convex
surrogate of the IoU that equals 1 - IoU at one-hot probabilities (the paper's Algorithm 1, its
authors' `lovasz_softmax` with classes="present").
"""
import keras
from keras import ops

from deeplab_ssl.losses import base


def lovasz_group_losses(labels, logits, valid, per_image):
    """The Lovasz-softmax loss of each group of pixels, sorted for all groups and classes at once.

    Args:
      labels: int32 [B, H, W], -1 at ignored pixels.
      logits: float32 [B, H, W, C].
      valid: float32 [B, H, W, 1].
      per_image: bool, a group is an image (G = B) or the whole batch (G = 1).

    Returns:
      (losses float32 [G], the mean of loss_c over the classes present in the group, 0 for a
      group with no valid pixel; has_valid float32 [G], 1 where the group has a valid pixel).
    """
    num_classes = ops.shape(logits)[-1]
    fg = ops.one_hot(labels, num_classes)  # zeros at ignored pixels
    # Ignored pixels: errors 0 sort after every positive error and add 0 to the dot product.
    errors = valid * ops.abs(fg - ops.softmax(logits, axis=-1))
    groups = ops.shape(logits)[0] if per_image else 1
    # [G, C, N]: one sort along the last axis per group and class.
    errors, fg = (ops.transpose(ops.reshape(x, [groups, -1, num_classes]), [0, 2, 1])
                  for x in (errors, fg))
    order = ops.argsort(-errors, axis=-1)
    sorted_errors = ops.take_along_axis(errors, order, axis=-1)
    sorted_fg = ops.stop_gradient(ops.take_along_axis(fg, order, axis=-1))
    gts = ops.sum(fg, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(sorted_fg, axis=-1)
    union = gts + ops.cumsum(1.0 - sorted_fg, axis=-1)  # >= 1
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
    class_losses = ops.sum(sorted_errors * grad, axis=-1)  # [G, C]
    present = ops.cast(gts[..., 0] > 0, "float32")
    num_present = ops.sum(present, axis=-1)
    losses = ops.divide_no_nan(ops.sum(class_losses * present, axis=-1), num_present)
    return losses, ops.cast(num_present > 0, "float32")


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class LovaszSoftmaxLoss(base.SumsLoss):
    """Lovasz-softmax: the convex surrogate of the per-class IoU (Jaccard) of Berman et al.

    Exact definition, for y_true labels [B, H, W] or [B, H, W, 1] and y_pred logits [B, H, W, C]:
    - p = softmax(logits) in float32 whatever the logits dtype; a pixel labelled ignore_label
      is invalid.
    - A group is one image (per_image=True) or the whole batch (per_image=False). For each
      class c of a group, over its valid pixels: fg = 1 where the label is c, errors =
      |fg - p_c|; errors sorted in decreasing order, fg permuted alike; gts = sum(fg),
      intersection = gts - cumsum(fg), union = gts + cumsum(1 - fg),
      jaccard = 1 - intersection / union, grad = jaccard with grad[1:] = jaccard[1:] -
      jaccard[:-1] (the Lovasz extension's gradient of the Jaccard loss, a constant: the
      gradient flows through the sorted errors); loss_c = dot(sorted errors, grad).
    - The loss of a group is the mean of loss_c over the classes present in its valid labels
      (gts > 0, the reference code's classes="present"); a group with no valid pixel counts
      for nothing.
    - loss = the mean of the group losses over the groups with a valid pixel; 0 (gradient 0)
      for an all-ignore batch.
    At one-hot p it is 1 - IoU of the hard prediction, averaged over the present classes.

    Sums: lovasz_sum (the sum of the group losses), num_images (the number of groups with a
    valid pixel). per_image=True: additive over pieces of a batch, so base.cross_replica_loss
    gives the exact loss of the global batch. per_image=False: the Jaccard of a batch is not
    additive; the sums hold the loss of this (replica's) batch and 1 (0 if all ignored), so
    across replicas the loss is the mean of the replicas' batch losses, not the loss of the
    global batch.

    Args:
      per_image: bool, the loss of each image averaged (True) or of the batch as one (False).
      ignore_label: int, label of pixels excluded from the loss.
      name, reduction, dtype: as keras.losses.Loss (the loss is always a scalar).
    """

    def __init__(self, per_image=False, ignore_label=255, name="lovasz_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        self.per_image = per_image
        self.ignore_label = ignore_label

    def sums(self, y_true, y_pred):
        labels, logits, valid = base.labels_logits_and_mask(y_true, y_pred, self.ignore_label)
        losses, has_valid = lovasz_group_losses(labels, logits, valid, self.per_image)
        return {"lovasz_sum": ops.sum(losses), "num_images": ops.sum(has_valid)}

    def terms(self, sums):
        return {"lovasz": ops.divide_no_nan(sums["lovasz_sum"], sums["num_images"])}

    def loss_from_sums(self, sums):
        return self.terms(sums)["lovasz"]

    def get_config(self):
        config = super().get_config()
        config.update(per_image=self.per_image, ignore_label=self.ignore_label)
        return config
