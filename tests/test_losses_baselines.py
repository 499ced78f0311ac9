"""The baselines of the loss family against hand computations and NumPy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import losses, train_utils
from test_losses import IGNORE, loss_and_gradient, np_gaussian_window, np_window_sum
from test_losses import np_ssl_reference, random_batch


def np_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)


def np_softmax_ce(labels, logits):
    """Per-pixel softmax CE, 0 at ignored pixels."""
    probs = np_softmax(np.asarray(logits, np.float64))
    safe = np.where(labels == IGNORE, 0, labels)
    ce = -np.log(np.take_along_axis(probs, safe[..., None], -1)[..., 0])
    return np.where(labels == IGNORE, 0.0, ce)


def test_sigmoid_and_softmax_cross_entropy_match_numpy():
    labels, logits = random_batch(0)
    valid = labels != IGNORE
    x = logits.astype(np.float64)
    targets = np.eye(4)[np.where(valid, labels, 0)] * valid[..., None]
    bce = np.logaddexp(0.0, x) - x * targets
    expected_bce = (bce * valid[..., None]).sum() / valid.sum()
    np.testing.assert_allclose(losses.get_loss("bce")(labels, logits).numpy(), expected_bce,
                               rtol=1e-5)
    expected_ce = np_softmax_ce(labels, logits).sum() / valid.sum()
    np.testing.assert_allclose(losses.get_loss("softmax_ce")(labels, logits).numpy(),
                               expected_ce, rtol=1e-5)


def test_bce_from_probabilities_equals_from_logits():
    labels, logits = random_batch(1)
    probs = tf.sigmoid(logits)
    np.testing.assert_allclose(losses.SigmoidCrossEntropy(from_logits=False)(labels, probs),
                               losses.SigmoidCrossEntropy()(labels, logits), rtol=1e-4)
    np.testing.assert_allclose(losses.SSLoss(from_logits=False)(labels, probs),
                               losses.SSLoss()(labels, logits), rtol=1e-4)


def test_top_k_hard_pixels_by_hand():
    labels = np.array([[[0, 1, IGNORE], [1, 0, 0]]])
    logits = np.array([[[[2.0, 0.0], [1.0, 0.5], [0.0, 9.0]],
                        [[3.0, -1.0], [0.0, 0.0], [-2.0, 1.0]]]], np.float32)
    pixel_ce = np_softmax_ce(labels, logits).ravel()  # the ignored pixel has loss 0
    # deeplab: k = int(top_k_percent_pixels * all 6 pixels) = 3; mean of the non-zero ones.
    loss = losses.get_loss("topk_ce", top_k_percent_pixels=0.5)
    assert loss(labels, logits).numpy() == pytest.approx(np.sort(pixel_ce)[-3:].mean(), rel=1e-5)
    # Gradual mining: at step 5 of 10, ratio 0.5, k = int((0.5 * 0.5 + 0.5) * 6) = 4.
    step = tf.Variable(5, dtype=tf.int64)
    loss = losses.get_loss("topk_ce", top_k_percent_pixels=0.5, hard_example_mining_step=10,
                           step=step)
    assert loss(labels, logits).numpy() == pytest.approx(np.sort(pixel_ce)[-4:].mean(), rel=1e-5)
    step.assign(0)  # all 6 pixels, 5 of them non-zero
    assert loss(labels, logits).numpy() == pytest.approx(pixel_ce.sum() / 5, rel=1e-5)
    with pytest.raises(ValueError, match="step"):
        losses.get_loss("topk_ce", hard_example_mining_step=10)(labels, logits)
    full = losses.get_loss("topk_ce", top_k_percent_pixels=1.0)(labels, logits).numpy()
    assert full == pytest.approx(pixel_ce.sum() / 5, rel=1e-5)


@pytest.mark.parametrize("name, schedule", [("ssl", dict(warmup_steps=2)),
                                            ("topk_ce", dict(hard_example_mining_step=2)),
                                            ("affinity", dict(decay_steps=2))])
def test_every_scheduled_loss_reads_the_step_given_through_set_step(name, schedule):
    labels, logits = random_batch(7)
    loss = losses.get_loss(name, **schedule)
    with pytest.raises(ValueError, match=r"set_step\(optimizer.iterations\)"):
        loss(labels, logits)
    step = tf.Variable(0, dtype=tf.int64)  # As optimizer.iterations.
    loss.set_step(step)
    at_start = loss(labels, logits).numpy()
    step.assign(2)  # Read at each call: the schedule has moved on.
    assert loss(labels, logits).numpy() != pytest.approx(at_start, rel=1e-3)


def np_ssim_loss(labels, logits, window_size, contrast_structure_only, ce_weight=0.5,
                 c1=0.01 ** 2, c2=0.03 ** 2, sigma=1.5):
    """1 - SSIM per class over valid pixels with masked Gaussian statistics, float64."""
    window = np_gaussian_window(window_size, sigma)
    x = np.asarray(logits, np.float64)
    probs = 1.0 / (1.0 + np.exp(-x))
    valid = (labels != IGNORE).astype(np.float64)
    ssim_sum = 0.0
    for b in range(x.shape[0]):
        m = valid[b]
        weight = np_window_sum(m, window)
        for c in range(x.shape[-1]):
            y = (labels[b] == c).astype(np.float64)
            p = probs[b, ..., c]

            def mean(z):
                with np.errstate(invalid="ignore", divide="ignore"):
                    return np_window_sum(m * z, window) / weight
            mu_y, mu_p = mean(y), mean(p)
            var_y, var_p = mean(y * y) - mu_y ** 2, mean(p * p) - mu_p ** 2
            cov = mean(y * p) - mu_y * mu_p
            ssim = (2 * cov + c2) / (var_y + var_p + c2)
            if not contrast_structure_only:
                ssim *= (2 * mu_y * mu_p + c1) / (mu_y ** 2 + mu_p ** 2 + c1)
            ssim_sum += ((1 - ssim) * m)[m > 0].sum()
    targets = np.eye(x.shape[-1])[np.where(labels == IGNORE, 0, labels)] * valid[..., None]
    bce = ((np.logaddexp(0.0, x) - x * targets) * valid[..., None]).sum()
    return (ce_weight * bce + (1 - ce_weight) * ssim_sum) / valid.sum()


@pytest.mark.parametrize("name,window_size", [("ssim7", 3), ("ssim7", 11), ("ssim9", 3),
                                              ("ssim9", 5)])
def test_ssim_losses_match_numpy_reference(name, window_size):
    labels, logits = random_batch(window_size)
    loss = losses.get_loss(name, window_size=window_size)
    expected = np_ssim_loss(labels, logits, window_size, name == "ssim9")
    np.testing.assert_allclose(loss(labels, logits).numpy(), expected, rtol=1e-4)


def test_ssim_of_a_perfect_prediction_is_one():
    labels, _ = random_batch(2)
    logits = np.where(np.eye(4, dtype=bool)[np.where(labels == IGNORE, 0, labels)], 30.0, -30.0)
    for name in ("ssim7", "ssim9"):
        sums = losses.get_loss(name).sums(labels, logits.astype(np.float32))
        assert abs(sums["ssim_sum"].numpy()) < 1e-3 * sums["num_valid"].numpy()


def np_affinity_loss(labels, logits, margin=3.0):
    """Literal port of the official affinity_loss (8 neighbours, pads) + softmax CE, float64."""
    x = np.asarray(logits, np.float64)
    batch, height, width, num_classes = x.shape
    probs = np_softmax(x)
    one_hot = np.eye(num_classes)[np.where(labels == IGNORE, 0, labels)]
    one_hot[labels == IGNORE] = 0
    ignored = labels == IGNORE
    pad_prob = np.pad(probs, [(0, 0), (1, 1), (1, 1), (0, 0)])
    pad_hot = np.pad(one_hot, [(0, 0), (1, 1), (1, 1), (0, 0)])
    pad_ign = np.pad(ignored, [(0, 0), (1, 1), (1, 1)], constant_values=True)
    edge_losses, not_edge_losses = [], []
    clip = lambda v: np.clip(v, 1e-4, 1.0)  # noqa: E731
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) == (1, 1):
                continue
            paired = pad_prob[:, dy:dy + height, dx:dx + width]
            pair_ignored = (pad_ign[:, dy:dy + height, dx:dx + width] | ignored)[..., None]
            edge = pad_hot[:, dy:dy + height, dx:dx + width] != one_hot
            kl = (clip(paired) * np.log(clip(paired) / clip(probs))
                  + clip(1 - paired) * np.log(clip(1 - paired) / clip(1 - probs)))
            keep = ~np.broadcast_to(pair_ignored, kl.shape)
            edge_losses.append(np.maximum(0.0, margin - kl)[edge & keep])
            not_edge_losses.append(kl[~edge & keep])
    edge_losses = np.concatenate(edge_losses)
    not_edge_losses = np.concatenate(not_edge_losses)
    ce = np_softmax_ce(labels, logits).sum() / (~ignored).sum()
    return ce + edge_losses.mean() + not_edge_losses.mean()


def test_affinity_loss_matches_official_formula():
    labels, logits = random_batch(4, shape=(2, 7, 8, 3))
    expected = np_affinity_loss(labels, logits)
    np.testing.assert_allclose(losses.get_loss("affinity")(labels, logits).numpy(), expected,
                               rtol=1e-5)


def test_affinity_loss_by_hand_on_two_pixels():
    """1x2 image, labels (0, 1): one pair, both directions, an edge for both classes."""
    labels = np.array([[[0, 1]]])
    logits = np.array([[[[1.0, 0.0], [0.0, 0.5]]]], np.float32)
    p_a = np_softmax(logits[0, 0, 0].astype(np.float64))
    p_b = np_softmax(logits[0, 0, 1].astype(np.float64))

    def kl(p, q):
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    separating = [max(0.0, 3.0 - kl(p_b[c], p_a[c])) for c in (0, 1)] + [
        max(0.0, 3.0 - kl(p_a[c], p_b[c])) for c in (0, 1)]
    ce = (-math.log(p_a[0]) - math.log(p_b[1])) / 2
    loss = losses.get_loss("affinity")
    sums = loss.sums(labels, logits)
    assert sums["num_edge"].numpy() == 4 and sums["num_not_edge"].numpy() == 0
    # No not-edge triple: that mean is 0 (divide_no_nan), as an empty mean would be skipped.
    assert loss(labels, logits).numpy() == pytest.approx(ce + np.mean(separating), rel=1e-5)
    decayed = losses.get_loss("affinity", decay_steps=10, step=tf.Variable(10.0))
    assert decayed(labels, logits).numpy() == pytest.approx(ce + 0.1 * np.mean(separating),
                                                            rel=1e-5)


@pytest.mark.parametrize("name", ["bce", "softmax_ce", "ssim7", "affinity"])
def test_gradients_match_finite_differences(name):
    labels, logits = random_batch(6, shape=(1, 5, 6, 3))
    loss = losses.get_loss(name)
    _, gradient = loss_and_gradient(loss, labels, logits)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=logits.shape)
    x = logits.astype(np.float64)
    step = 1e-2
    plus = loss(labels, (x + step * direction).astype(np.float32)).numpy()
    minus = loss(labels, (x - step * direction).astype(np.float32)).numpy()
    np.testing.assert_allclose((plus - minus) / (2 * step), (gradient * direction).sum(),
                               rtol=2e-2)


def test_get_loss_defaults_and_overrides():
    assert losses.get_loss("topk_ce").top_k_percent_pixels == 0.25
    assert losses.get_loss("ssim9").contrast_structure_only
    assert not losses.get_loss("ssim7").contrast_structure_only
    assert losses.get_loss("ssl", window_size=7).window_size == 7


def np_softmax_ssl_reference(labels, logits, top_k_percent_pixels=1.0, class_balanced=False,
                             ce_weight=0.5):
    """SoftmaxSSLoss's loss and gradient from its docstring's definition, in float64."""
    _, _, error, threshold, _ = np_ssl_reference(labels, logits, probabilities="softmax")
    is_hard = error > threshold  # e is 0 at ignored pixels
    weight, num_hard = (error * is_hard).sum(-1), is_hard.sum(-1)
    pixel_ce = np_softmax_ce(labels, logits)
    valid = labels != IGNORE
    if top_k_percent_pixels == 1.0:
        ce_coefficient = valid / valid.sum()
    else:
        k = int(np.float32(top_k_percent_pixels) * np.float32(pixel_ce.size))
        chosen = np.zeros(pixel_ce.size)
        chosen[np.argsort(-pixel_ce.ravel())[:k]] = 1.0
        chosen = chosen.reshape(pixel_ce.shape)
        ce_coefficient = chosen / np.count_nonzero(chosen * pixel_ce)
    structural_coefficient = np.zeros_like(pixel_ce)
    if class_balanced:
        classes = [c for c in range(logits.shape[-1]) if num_hard[labels == c].sum() > 0]
        for c in classes:
            structural_coefficient[labels == c] = (
                weight[labels == c] / num_hard[labels == c].sum() / len(classes))
    else:
        structural_coefficient = weight / num_hard.sum()
    coefficient = ce_weight * ce_coefficient + (1 - ce_weight) * structural_coefficient
    targets = np.eye(logits.shape[-1])[np.where(valid, labels, 0)] * valid[..., None]
    gradient = coefficient[..., None] * (np_softmax(np.asarray(logits, np.float64)) - targets)
    return (coefficient * pixel_ce).sum(), gradient


@pytest.mark.parametrize("name", ["ssl_softmax", "ssl_softmax_topk",
                                  "ssl_softmax_topk_balanced"])
def test_softmax_ssl_variants_match_numpy_reference(name):
    labels, logits = random_batch(5, shape=(2, 12, 13, 5))
    loss = losses.get_loss(name)
    expected, expected_gradient = np_softmax_ssl_reference(
        labels, logits, loss.top_k_percent_pixels, loss.class_balanced)
    value, gradient = loss_and_gradient(loss, labels, logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-9)
    # The structural term is not empty, and class balancing changes it here.
    terms = {k: float(v) for k, v in loss.terms(loss.sums(labels, logits)).items()}
    assert terms["ssl"] > 0
    other = losses.SoftmaxSSLoss(top_k_percent_pixels=loss.top_k_percent_pixels,
                                 class_balanced=not loss.class_balanced)
    assert float(other(labels, logits)) != pytest.approx(value, rel=1e-3)


def test_softmax_ssl_with_lambda_one_is_its_cross_entropy():
    labels, logits = random_batch(8)
    for top_k in (1.0, 0.25):
        value = losses.SoftmaxSSLoss(ce_weight=1.0, top_k_percent_pixels=top_k)(labels, logits)
        expected = losses.SoftmaxCrossEntropy(top_k_percent_pixels=top_k)(labels, logits)
        np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_class_weighted_cross_entropy_is_deeplabs_loss_weight():
    labels, logits = random_batch(3)
    weights = np.array([0.5, 1.0, 2.0, 4.0])
    valid = labels != IGNORE
    weighted = np_softmax_ce(labels, logits) * weights[np.where(valid, labels, 0)] * valid
    loss = losses.SoftmaxCrossEntropy(class_weights=weights.tolist())
    # deeplab divides the weighted sum by the number of valid pixels.
    assert loss(labels, logits).numpy() == pytest.approx(weighted.sum() / valid.sum(), rel=1e-5)
    top_k = np.sort(weighted.ravel())[::-1][:int(np.float32(0.25) * np.float32(weighted.size))]
    mined = losses.SoftmaxCrossEntropy(class_weights=weights.tolist(), top_k_percent_pixels=0.25)
    assert mined(labels, logits).numpy() == pytest.approx(top_k.sum() / np.count_nonzero(top_k),
                                                         rel=1e-5)
    with pytest.raises(ValueError, match="class_weights has 3 weights"):
        losses.SoftmaxCrossEntropy(class_weights=[1, 1, 1])(labels, logits)
    with pytest.raises(ValueError, match=">= 0"):
        losses.SoftmaxCrossEntropy(class_weights=[1, -1, 1, 1])


def test_median_frequency_weights_by_hand():
    # freq = 10/100, 30/100, (absent), 5/50: median 0.1.
    weights = train_utils.median_frequency_weights([10, 30, 0, 5], [100, 100, 0, 50])
    np.testing.assert_allclose(weights, [1.0, 1.0 / 3.0, 0.0, 1.0])
