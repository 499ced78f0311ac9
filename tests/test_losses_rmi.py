"""RMILoss against an independent NumPy float64 reference, finite differences, properties, edges.

The reference is written from the definition (the authors' code, github.com/ZJULearning/RMI,
losses/rmi/rmi.py, forward_sigmoid with lambda_way=1), with loops, and shares no code with
deeplab_ssl.losses.
"""
import keras
import numpy as np
import pytest

from deeplab_ssl import losses
from deeplab_ssl.losses.rmi import RMILoss
from test_losses import IGNORE, assert_edge_cases_are_finite, loss_and_gradient, random_batch

EPS = 5e-4
SHAPE = (2, 24, 28, 3)


def np_avg_pool(x, size):
    """PyTorch's avg_pool2d(x, size, stride=size, padding=size // 2) of x [H, W] (padding
    counted in the average)."""
    pad = size // 2
    padded = np.pad(x, pad)
    rows, cols = (np.array(padded.shape) - size) // size + 1
    return np.array([[padded[i * size:(i + 1) * size, j * size:(j + 1) * size].mean()
                      for j in range(cols)] for i in range(rows)])


def np_rmi_reference(labels, logits, radius=3, pool_size=4, ce_weight=0.5):
    """(loss, the authors' RMI term) in float64; the loss's RMI term is the authors' one minus
    C * 0.5 log(eps), see RMILoss."""
    x = np.asarray(logits, np.float64)
    batch, _, _, num_classes = x.shape
    valid = (labels != IGNORE).astype(np.float64)
    probs = 1.0 / (1.0 + np.exp(-x)) * valid[..., None]
    d = radius * radius
    rmi = 0.0
    for b in range(batch):
        for c in range(num_classes):
            vectors = []
            for image in ((labels[b] == c) * valid[b], probs[b, ..., c]):
                pooled = np_avg_pool(image, pool_size)
                rows, cols = pooled.shape[0] - radius + 1, pooled.shape[1] - radius + 1
                v = np.array([pooled[u:u + rows, w:w + cols].ravel()
                              for u in range(radius) for w in range(radius)])
                vectors.append(v - v.mean(axis=1, keepdims=True))
            y, p = vectors
            cov_yp = y @ p.T
            posterior = y @ y.T - cov_yp @ np.linalg.inv(p @ p.T + EPS * np.eye(d)) @ cov_yp.T
            sign, logdet = np.linalg.slogdet(posterior + EPS * np.eye(d))
            assert sign > 0
            rmi += 0.5 * logdet / d
    authors_rmi = rmi / batch  # mean over images, sum over classes
    targets = np.eye(num_classes)[np.where(valid > 0, labels, 0)] * valid[..., None]
    bce = ((np.logaddexp(0.0, x) - x * targets) * valid[..., None]).sum() / valid.sum()
    loss_rmi = authors_rmi - num_classes * 0.5 * np.log(EPS)
    return ce_weight * bce + (1 - ce_weight) * loss_rmi, authors_rmi


@pytest.mark.parametrize("radius,pool_size", [(3, 4), (3, 3), (2, 1)])
def test_matches_numpy_reference(radius, pool_size):
    labels, logits = random_batch(radius + pool_size, shape=SHAPE)
    loss = RMILoss(radius=radius, pool_size=pool_size)
    expected, authors_rmi = np_rmi_reference(labels, logits, radius, pool_size)
    np.testing.assert_allclose(loss(labels, logits).numpy(), expected, rtol=1e-5)
    terms = loss.terms(loss.sums(labels, logits))
    np.testing.assert_allclose(terms["rmi"].numpy() + 3 * 0.5 * np.log(EPS), authors_rmi,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_gradient_matches_finite_differences_of_reference(ce_weight):
    labels, logits = random_batch(6, shape=SHAPE)
    _, gradient = loss_and_gradient(RMILoss(ce_weight=ce_weight), labels, logits)
    direction = np.random.default_rng(0).normal(size=logits.shape)
    x = logits.astype(np.float64)
    step = 1e-4
    plus = np_rmi_reference(labels, x + step * direction, ce_weight=ce_weight)[0]
    minus = np_rmi_reference(labels, x - step * direction, ce_weight=ce_weight)[0]
    np.testing.assert_allclose((gradient * direction).sum(), (plus - minus) / (2 * step),
                               rtol=1e-4)


def test_matching_logits_have_lower_rmi_and_ce_weight_one_is_bce():
    labels, logits = random_batch(7, shape=SHAPE)
    loss = RMILoss()
    matching = np.where(np.eye(3, dtype=bool)[np.where(labels == IGNORE, 0, labels)], 4.0,
                        -4.0).astype(np.float32)
    rmi_matching = loss.terms(loss.sums(labels, matching))["rmi"].numpy()
    rmi_random = loss.terms(loss.sums(labels, logits))["rmi"].numpy()
    assert 0.0 <= rmi_matching < 0.5 * rmi_random
    for x in (logits, matching):
        np.testing.assert_allclose(RMILoss(ce_weight=1.0)(labels, x).numpy(),
                                   losses.SigmoidCrossEntropy()(labels, x).numpy(), rtol=1e-6)


def test_sums_add_up_over_halves_and_tf_function_with_unknown_batch():
    labels, logits = random_batch(8, shape=(4,) + SHAPE[1:])
    loss = RMILoss()
    whole = loss.sums(labels, logits)
    halves = [loss.sums(labels[i:i + 2], logits[i:i + 2]) for i in (0, 2)]
    for key, value in whole.items():
        np.testing.assert_allclose(halves[0][key] + halves[1][key], value, rtol=1e-5)
    value, gradient = loss_and_gradient(loss, labels, logits)
    traced_value, traced_gradient = loss_and_gradient(loss, labels, logits, static_batch=False)
    np.testing.assert_allclose(traced_value, value, rtol=1e-6)
    np.testing.assert_allclose(traced_gradient, gradient, rtol=1e-5, atol=1e-9)


def test_serialization_round_trip():
    loss = RMILoss(radius=2, pool_size=3, ce_weight=0.3, ignore_label=7)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is RMILoss
    assert restored.get_config() == loss.get_config()
    labels, logits = random_batch(1, shape=SHAPE)
    labels[labels == IGNORE] = 7
    np.testing.assert_allclose(restored(labels, logits).numpy(), loss(labels, logits).numpy())


def test_edge_cases_give_finite_loss_and_gradient():
    # At the default pool size: 12 x 13 pools to 4 x 4, 2 x 2 regions.
    assert_edge_cases_are_finite(RMILoss(), *random_batch(9, shape=(2, 12, 13, 3)))


def test_bad_arguments_and_small_inputs_raise():
    labels, logits = random_batch(2, shape=(2, 6, 7, 3))
    with pytest.raises(ValueError, match=r"\(6, 7\) pool to \(2, 2\)"):
        RMILoss()(labels, logits)
    assert np.isfinite(RMILoss(pool_size=1)(labels, logits).numpy())
    for argument, value in (("radius", 0), ("pool_size", 2.0), ("ce_weight", 1.5)):
        with pytest.raises(ValueError, match=argument):
            RMILoss(**{argument: value})
