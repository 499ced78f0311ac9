"""LovaszSoftmaxLoss against an independent NumPy reference, a hand computation, 1 - IoU at the
vertices, edges, and exact per-image sums over pieces of a batch.

The reference is written from the definition in the class docstring (Berman et al.'s
Algorithm 1), with loops over groups and classes in float64, and shares no code with
deeplab_ssl.losses.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl.losses.lovasz import LovaszSoftmaxLoss
from test_losses import IGNORE, loss_and_gradient, random_batch
from test_losses_baselines import np_softmax


def np_lovasz_reference(labels, logits, per_image):
    """Returns (loss, d loss / d logits, the smallest gap between two sorted errors), float64."""
    probs = np_softmax(np.asarray(logits, np.float64))
    num_classes = probs.shape[-1]
    groups = [slice(b, b + 1) for b in range(len(labels))] if per_image else [slice(None)]
    group_losses, d_probs, min_gap = [], np.zeros_like(probs), np.inf
    for group in groups:
        y = labels[group].ravel()
        p = probs[group].reshape(-1, num_classes)
        valid = np.flatnonzero(y != IGNORE)
        classes = [c for c in range(num_classes) if np.any(y[valid] == c)]
        if not classes:
            continue
        class_losses, d_p = [], np.zeros_like(p)
        for c in classes:
            fg = (y[valid] == c).astype(np.float64)
            errors = np.abs(fg - p[valid, c])
            order = np.argsort(-errors)
            min_gap = min(min_gap, np.diff(-errors[order]).min())
            gts = fg.sum()
            intersection = gts - np.cumsum(fg[order])
            union = gts + np.cumsum(1.0 - fg[order])
            jaccard = 1.0 - intersection / union
            grad = np.concatenate([jaccard[:1], np.diff(jaccard)])
            class_losses.append(errors[order] @ grad)
            d_errors = np.empty_like(errors)
            d_errors[order] = grad
            d_p[valid, c] = np.sign(p[valid, c] - fg) * d_errors / len(classes)
        group_losses.append(np.mean(class_losses))
        d_probs[group] = d_p.reshape(d_probs[group].shape)
    if not group_losses:
        return 0.0, np.zeros_like(probs), min_gap
    d_probs /= len(group_losses)
    d_logits = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    return np.mean(group_losses), d_logits, min_gap


@pytest.mark.parametrize("per_image", [False, True])
def test_matches_numpy_reference(per_image):
    labels, logits = random_batch(3, shape=(3, 9, 10, 4))
    labels[2] = IGNORE  # an all-ignore image: no group of its own
    expected, expected_gradient, min_gap = np_lovasz_reference(labels, logits, per_image)
    # No two errors so close that float32 rounding could swap them in the sort.
    assert min_gap > 1e-6
    value, gradient = loss_and_gradient(LovaszSoftmaxLoss(per_image=per_image), labels, logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-8)
    assert np.all(gradient[2] == 0.0)


def test_by_hand_on_one_row():
    """1x5 image, 2 classes, labels (0, 0, 1, 1, ignored), p_0 = (0.9, 0.4, 0.3, 0.2, any).

    Class 0: fg = (1, 1, 0, 0), errors (0.1, 0.6, 0.3, 0.2), sorted 0.6 0.3 0.2 0.1 with
    fg 1 0 0 1, gts 2: intersection 1 1 1 0, union 2 3 4 4, jaccard 1/2 2/3 3/4 1,
    grad 1/2 1/6 1/12 1/4: loss_0 = 0.3 + 0.05 + 0.2/12 + 0.025 = 47/120.
    Class 1: p_1 = 1 - p_0, the same errors, sorted fg 0 1 1 0: intersection 2 1 0 0,
    union 3 3 3 4, jaccard 1/3 2/3 1 1, grad 1/3 1/3 1/3 0: loss_1 = 1.1 / 3 = 44/120.
    Loss = 91/240, per image or per batch (one image).
    """
    labels = np.array([[[0, 0, 1, 1, IGNORE]]])
    p0 = np.array([0.9, 0.4, 0.3, 0.2, 0.5])
    logits = np.stack([np.log(p0 / (1 - p0)), np.zeros(5)], -1)[None, None].astype(np.float32)
    for per_image in (False, True):
        value = LovaszSoftmaxLoss(per_image=per_image)(labels, logits).numpy()
        assert value == pytest.approx(91 / 240, rel=1e-6)


def np_mean_iou_loss(labels, predictions):
    """1 - IoU averaged over the classes present in the valid labels, float64."""
    valid = labels != IGNORE
    present = np.unique(labels[valid])
    return np.mean([1.0 - np.sum(valid & (labels == c) & (predictions == c))
                    / np.sum(valid & ((labels == c) | (predictions == c))) for c in present])


def test_equals_one_minus_iou_at_one_hot_probabilities():
    labels, logits = random_batch(4, shape=(2, 9, 10, 4))
    predictions = np.argmax(logits, -1)
    one_hot = np.where(np.eye(4, dtype=bool)[predictions], 30.0, -30.0).astype(np.float32)
    per_batch = np_mean_iou_loss(labels, predictions)
    per_image = np.mean([np_mean_iou_loss(y, x) for y, x in zip(labels, predictions)])
    assert abs(per_batch - per_image) > 1e-3  # the two groupings differ here
    assert LovaszSoftmaxLoss()(labels, one_hot).numpy() == pytest.approx(per_batch, rel=1e-6)
    assert LovaszSoftmaxLoss(per_image=True)(labels, one_hot).numpy() == pytest.approx(
        per_image, rel=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_edges_unknown_batch_and_serialization(per_image):
    loss = LovaszSoftmaxLoss(per_image=per_image)
    labels, logits = random_batch(5, shape=(2, 6, 7, 3))
    value, gradient = loss_and_gradient(loss, np.full_like(labels, IGNORE), logits)
    assert value == 0.0 and np.all(gradient == 0.0)
    huge = np.where(np.random.default_rng(0).random(logits.shape) < 0.5, 1e4, -1e4)
    for x in (huge.astype(np.float32), logits.astype(np.float16),
              tf.cast(logits, tf.bfloat16)):
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(labels, x)
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())
        assert np.all(np.isfinite(tf.cast(tape.gradient(value, x), tf.float32).numpy()))
    expected, expected_gradient = loss_and_gradient(loss, labels, logits)
    value, gradient = loss_and_gradient(loss, labels, logits, static_batch=False)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-10)
    loss = LovaszSoftmaxLoss(per_image=per_image, ignore_label=7)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is LovaszSoftmaxLoss
    assert restored.get_config() == loss.get_config()
    assert restored.get_config()["per_image"] == per_image
    labels = np.where(labels == IGNORE, 7, labels)
    np.testing.assert_allclose(restored(labels, logits).numpy(), expected, rtol=1e-6)


def test_per_image_sums_add_over_pieces_of_a_batch():
    labels, logits = random_batch(6, shape=(4, 6, 7, 3))
    labels[1] = IGNORE
    loss = LovaszSoftmaxLoss(per_image=True)
    whole = loss.sums(labels, logits)
    first, second = loss.sums(labels[:2], logits[:2]), loss.sums(labels[2:], logits[2:])
    assert whole["num_images"].numpy() == 3.0
    for key in whole:
        np.testing.assert_allclose(first[key] + second[key], whole[key], rtol=1e-6)
    per_batch = LovaszSoftmaxLoss().sums(labels, logits)
    assert per_batch["num_images"].numpy() == 1.0
