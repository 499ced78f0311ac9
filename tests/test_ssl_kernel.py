"""The SSL's CPU kernel: the same weights and sums as the portable path, its errors, its build.

Its agreement with the NumPy reference is in test_losses.py (both implementations).
"""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import losses
from deeplab_ssl.losses import local_stats, ssl_kernel
from test_losses import IGNORE, random_batch


def sums_and_gradient(loss, labels, logits):
    """SSLoss's sums [sum(m BCE), sum(weight BCE), M] and its gradient w.r.t. the logits,
    (ce_weight m / N + (1 - ce_weight) weight / M) (p - y), which holds the weights."""
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        sums = loss.sums(labels, logits)
        value = loss.loss_from_sums(sums)
    sums = np.array([sums[name].numpy() for name in ("bce_sum", "ssl_sum", "num_hard")])
    return sums, tape.gradient(value, logits).numpy()


def kernel_weights_and_sums(loss, labels, logits):
    """The kernel's weights [B, H, W, C] and sums, as NumPy."""
    labels, logits, valid = losses.base.labels_logits_and_mask(labels, logits, IGNORE)
    threshold = loss.beta * loss.e_max
    weight, sums = ssl_kernel.ssl_weights(
        logits, labels, valid, local_stats.gaussian_1d(loss.window_size, loss.sigma), loss.c4,
        loss.ohem, threshold, loss.reweight)
    return weight.numpy(), sums.numpy()


# 70 rows: the kernel's units of 32 rows, and a last one of 6.
@pytest.mark.parametrize("window_size", [1, 3, 5, 7, 11])
@pytest.mark.parametrize("ohem,reweight", [(True, True), (True, False), (False, True),
                                           (False, False)])
def test_kernel_equals_xla_path(window_size, ohem, reweight):
    labels, logits = random_batch(window_size, (2, 70, 45, 5))
    options = dict(window_size=window_size, ohem=ohem, reweight=reweight)
    kernel_sums, kernel_gradient = sums_and_gradient(
        losses.SSLoss(implementation="kernel", **options), labels, logits)
    xla_sums, xla_gradient = sums_and_gradient(
        losses.SSLoss(implementation="xla", **options), labels, logits)
    np.testing.assert_allclose(kernel_sums, xla_sums, rtol=1e-5)
    scale = np.abs(xla_gradient).max()
    np.testing.assert_allclose(kernel_gradient, xla_gradient, rtol=1e-4, atol=2e-5 * scale)
    if ohem and window_size > 1:
        assert 0 < kernel_sums[2] < (labels != IGNORE).sum() * 5


@pytest.mark.parametrize("shape,window_size", [((1, 3, 2, 2), 11), ((2, 1, 1, 3), 3),
                                               ((1, 5, 40, 1), 7)])
def test_kernel_on_images_smaller_than_the_window(shape, window_size):
    rng = np.random.default_rng(window_size)
    labels = rng.integers(0, shape[-1], shape[:3]).astype(np.int32)
    logits = rng.normal(size=shape).astype(np.float32)
    values = [losses.SSLoss(window_size=window_size, implementation=implementation)(
        labels, logits).numpy() for implementation in ("kernel", "xla")]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)


def test_kernel_results_do_not_depend_on_the_batch_split():
    """Bit for bit: an image's weights, alone or in a batch (replicas get pieces of the global
    batch; one image of [37, 29, 5] starts rows at other alignments than the batch does)."""
    labels, logits = random_batch(2, (4, 37, 29, 5))
    loss = losses.SSLoss(implementation="kernel")
    batch_weight, batch_sums = kernel_weights_and_sums(loss, labels, logits)
    piece_sums = 0.0
    for begin, end in ((0, 1), (1, 3), (3, 4)):
        weight, sums = kernel_weights_and_sums(loss, labels[begin:end], logits[begin:end])
        np.testing.assert_array_equal(weight, batch_weight[begin:end])
        piece_sums += sums
    np.testing.assert_allclose(piece_sums, batch_sums, rtol=1e-6)


def test_kernel_gives_nan_for_nan_logits():
    """A diverged run must show a NaN loss (training stops on it), not a finite one."""
    labels, logits = random_batch(0, (1, 9, 8, 3))
    logits[0, 4, 4, 1] = np.nan
    loss = losses.SSLoss(implementation="kernel")
    assert np.isnan(loss(labels, logits).numpy())


def test_kernel_checks_shapes():
    logits = tf.zeros([1, 6, 7, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be"):
        ssl_kernel.ssl_weights(logits, tf.zeros([1, 6, 6], tf.int32), tf.ones([1, 6, 7, 1]),
                               [0.25, 0.5, 0.25], 0.01, True, 0.4, True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid must be"):
        ssl_kernel.ssl_weights(logits, tf.zeros([1, 6, 7], tf.int32), tf.ones([1, 6, 7]),
                               [0.25, 0.5, 0.25], 0.01, True, 0.4, True)


def test_unknown_implementation_raises():
    with pytest.raises(ValueError, match="implementation"):
        losses.SSLoss(implementation="cuda")


@pytest.fixture
def without_kernel(monkeypatch, tmp_path):
    """ssl_kernel as on a machine where the kernel is not built."""
    monkeypatch.setattr(ssl_kernel, "library_path", lambda: tmp_path / "missing.so")
    ssl_kernel.load.cache_clear()
    yield
    monkeypatch.undo()
    ssl_kernel.load.cache_clear()


def test_without_kernel_auto_is_the_xla_path_and_kernel_says_how_to_build(without_kernel):
    labels, logits = random_batch(1, (1, 12, 10, 3))
    assert not ssl_kernel.available()
    expected = losses.SSLoss(implementation="xla")(labels, logits).numpy()
    assert losses.SSLoss()(labels, logits).numpy() == expected
    with pytest.raises(RuntimeError, match="python -m deeplab_ssl.losses.build_kernel"):
        losses.SSLoss(implementation="kernel")(labels, logits)


def test_build_writes_a_loadable_library(tmp_path):
    path = ssl_kernel.build(tmp_path / "kernel.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel.so"]
    # In a new process: this one has the op registered from the installed library already.
    program = f"""
import tensorflow as tf
library = tf.load_op_library({str(path)!r})
_, sums = library.ssl_weights(
    tf.zeros([1, 4, 4, 2]), tf.zeros([1, 4, 4], tf.int32), tf.ones([1, 4, 4, 1]),
    window=[0.25, 0.5, 0.25], c4=0.01, ohem=True, threshold=0.4, reweight=True)
print(float(sums[0]))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            check=True)
    # sigmoid(0) = 0.5: the BCE of each of the 32 examples is log 2.
    assert float(result.stdout.split()[-1]) == pytest.approx(32 * np.log(2.0), rel=1e-6)


def test_build_failure_names_the_source_and_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="ssl_kernel.cc failed"):
        ssl_kernel.build(tmp_path / "kernel.so", compiler="false")
    with pytest.raises(RuntimeError, match="Cannot run the compiler"):
        ssl_kernel.build(tmp_path / "kernel.so", compiler=str(tmp_path / "no-such-compiler"))
    assert not list(tmp_path.iterdir())
