"""The loss family and the DeepLab models on every Keras backend: TensorFlow, JAX, PyTorch.

The tests of this file run on the backend of the process (TensorFlow in `make test`), with
the backend's own autodiff, against the NumPy references of test_losses.py and
test_losses_baselines.py; `test_on_backend[jax|torch]` runs them again in a subprocess with
KERAS_BACKEND=jax or torch (skipped where that backend is not installed), then checks that the
DeepLab logits computed there equal TensorFlow's here. `make test` installs JAX (the [jax]
extra), not PyTorch, whose CPU build comes from its own package index:
`pip install torch --index-url https://download.pytorch.org/whl/cpu`. Shapes are small: 2
shared CPU cores.
"""
import functools
import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from deeplab_ssl import losses
from deeplab_ssl.losses import ssl_statistics
from deeplab_ssl.core import utils
from deeplab_ssl.datasets import input_pipeline
from deeplab_ssl.model import build_deeplab
from test_losses import IGNORE, np_ssl_reference, random_batch
from test_losses_baselines import np_affinity_loss, np_softmax_ce, np_ssim_loss

BACKEND = keras.backend.backend()
# Set by test_on_backend for its subprocess: where the DeepLab logits computed there go.
OUTPUTS_ENV = "DEEPLAB_SSL_BACKEND_OUTPUTS"


def value_and_gradient(function, x):
    """function(x), a scalar, and its gradient w.r.t. x (numpy float32), by the backend's
    autodiff; on JAX compiled with jax.jit, as a training step is.

    Returns:
      (float, numpy float32 array of x's shape).
    """
    if BACKEND == "jax":
        import jax
        value, gradient = jax.jit(jax.value_and_grad(function))(x)
    elif BACKEND == "torch":
        x = ops.convert_to_tensor(x).requires_grad_()
        value = function(x)
        value.backward()
        gradient = x.grad
    else:
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = function(x)
        gradient = tape.gradient(value, x)
    return float(ops.convert_to_numpy(value)), ops.convert_to_numpy(gradient)


@pytest.mark.parametrize("window_size", [1, 3, 7])
def test_ssl_matches_numpy_reference(window_size):
    """The portable path (on TensorFlow too) and the backend's gradient of the BCE sums."""
    labels, logits = random_batch(window_size)
    expected, expected_gradient, _, _, expected_sums = np_ssl_reference(
        labels, logits, window_size=window_size)
    loss = losses.SSLoss(window_size=window_size, implementation="xla")
    value, gradient = value_and_gradient(lambda x: loss(labels, x), logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-9)
    sums = loss.sums(labels, logits)
    for key, expected_value in expected_sums.items():
        np.testing.assert_allclose(ops.convert_to_numpy(sums[key]), expected_value, rtol=1e-5)


@pytest.mark.parametrize("ohem,reweight", [(True, False), (False, True), (False, False)])
def test_table3_switches_match_reference(ohem, reweight):
    labels, logits = random_batch(11)
    expected, expected_gradient, *_ = np_ssl_reference(labels, logits, ohem=ohem,
                                                       reweight=reweight)
    loss = losses.SSLoss(ohem=ohem, reweight=reweight, implementation="xla")
    value, gradient = value_and_gradient(lambda x: loss(labels, x), logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-9)


def test_normalized_maps_match_reference():
    labels, logits = random_batch(3)
    *_, y_nor, p_nor = np_ssl_reference(labels, logits, return_normalized=True)
    valid = labels != IGNORE
    got = losses.SSLoss().normalized_maps(labels, logits)
    for name, expected, value in zip(("y_nor", "p_nor"), (y_nor, p_nor), got):
        np.testing.assert_allclose(ops.convert_to_numpy(value)[valid], expected[valid],
                                   rtol=1e-4, atol=1e-4, err_msg=name)


def test_baselines_match_numpy_references():
    labels, logits = random_batch(0)
    # The SSL's reference with lambda = 1 is the BCE term: the BCE and its gradient.
    bce, bce_gradient, *_ = np_ssl_reference(labels, logits, ce_weight=1.0)
    pixel_ce = np_softmax_ce(labels, logits)
    # deeplab's top k: k = int(0.25 * all pixels), the mean of the non-zero ones among them.
    top_k = np.sort(pixel_ce.ravel())[::-1][:int(np.float32(0.25) * np.float32(pixel_ce.size))]
    expected = {"bce": bce, "softmax_ce": pixel_ce.sum() / np.sum(labels != IGNORE),
                "topk_ce": top_k.sum() / np.count_nonzero(top_k),
                "ssim7": np_ssim_loss(labels, logits, 3, False),
                "ssim9": np_ssim_loss(labels, logits, 3, True),
                "affinity": np_affinity_loss(labels, logits)}
    for name, value in expected.items():
        loss = losses.get_loss(name)
        got, gradient = value_and_gradient(lambda x: loss(labels, x), logits)
        np.testing.assert_allclose(got, value, rtol=1e-4, err_msg=name)
        assert np.all(np.isfinite(gradient)), name
        if name == "bce":
            np.testing.assert_allclose(gradient, bce_gradient, rtol=1e-4, atol=1e-9)


def test_top_k_schedule_with_a_step_tensor():
    """Mining's k known only when run: top_k on TensorFlow, a sort on the other backends."""
    labels = np.array([[[0, 1, IGNORE], [1, 0, 0]]])
    logits = np.array([[[[2.0, 0.0], [1.0, 0.5], [0.0, 9.0]],
                        [[3.0, -1.0], [0.0, 0.0], [-2.0, 1.0]]]], np.float32)
    pixel_ce = np_softmax_ce(labels, logits).ravel()
    # At step 5 of 10, ratio 0.5: k = int((0.5 * 0.5 + 0.5) * 6) = 4.
    loss = losses.get_loss("topk_ce", top_k_percent_pixels=0.5, hard_example_mining_step=10,
                           step=ops.convert_to_tensor(5))
    value = float(ops.convert_to_numpy(loss(labels, logits)))
    assert value == pytest.approx(np.sort(pixel_ce)[-4:].mean(), rel=1e-5)


def test_ssl_statistics_on_every_backend():
    """The statistics training logs (Fig. 3, per class) on this backend, whole batch."""
    labels, logits = random_batch(3)
    *_, error, _, _, y_nor, p_nor = np_ssl_reference(labels, logits, return_normalized=True)
    valid = labels != IGNORE
    loss = losses.SSLoss()
    maxima, sums = ssl_statistics.error_statistics(loss, labels, logits)
    figures = ssl_statistics.summarize_error_statistics(
        loss.e_max, ops.convert_to_numpy(maxima), ops.convert_to_numpy(sums))
    for name, value in {"y_nor_max": y_nor[valid].max(), "p_nor_min": p_nor[valid].min(),
                        "error_max": error[valid].max(),
                        "error_mean": error[valid].mean()}.items():
        assert figures[name] == pytest.approx(value, abs=1e-4), name
    class_sums = ops.convert_to_numpy(ssl_statistics.class_statistics(loss, labels, logits))
    assert class_sums.shape == (8, 4) and class_sums[0].sum() == valid.sum()
    hard = (error > loss.beta * loss.e_max) & valid[..., None]
    assert class_sums[2:4].sum() == hard.sum()


def test_bad_labels_and_tensorflow_only_parts_raise():
    labels, logits = random_batch(2)
    labels[0, 0, 0] = 4  # C = 4: out of range and not ignore_label
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="num_classes"):
        losses.SSLoss()(labels, logits)
    if BACKEND == "tensorflow":
        return
    labels, logits = random_batch(2)
    for name, call in [
            ("cross_replica_loss", lambda: losses.cross_replica_loss(
                losses.SSLoss(), labels, logits)),
            ("kernel", lambda: losses.SSLoss(implementation="kernel"))]:
        with pytest.raises(ValueError, match="TensorFlow backend"):
            call()
    if BACKEND == "jax":
        loss = losses.SSLoss(warmup_steps=10)
        loss.set_step(keras.Variable(0))
        with pytest.raises(ValueError, match="JAX trainer"):
            loss(labels, logits)


# (input shape, output size): up, down, the same, from and to one pixel, odd ratios.
RESIZES = [((2, 9, 11, 5), (33, 41)), ((2, 33, 41, 3), (9, 11)), ((1, 5, 7, 2), (5, 7)),
           ((3, 1, 1, 4), (17, 13)), ((2, 17, 13, 3), (1, 1)), ((2, 10, 13, 3), (37, 29))]


@pytest.mark.parametrize("shape,size", RESIZES)
def test_resize_bilinear_equals_tensorflow_op(shape, size):
    """core/utils.resize_bilinear (keras.ops) gives TF's numbers exactly, its gradient to
    rounding (the sums of the scattered gradient run in another order)."""
    rng = np.random.default_rng(sum(shape))
    images = rng.normal(size=shape).astype(np.float32)
    weights = rng.normal(size=(shape[0], *size, shape[3])).astype(np.float32)
    with tf.GradientTape() as tape:
        x = tf.constant(images)
        tape.watch(x)
        expected = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True)
    expected_gradient = tape.gradient(expected, x, output_gradients=tf.constant(weights))
    resized = utils.resize_bilinear(ops.convert_to_tensor(images), size)
    np.testing.assert_array_equal(ops.convert_to_numpy(resized), expected.numpy())
    layer = utils.ResizeBilinear()([images, np.zeros((shape[0], *size, 1), np.float32)])
    np.testing.assert_array_equal(ops.convert_to_numpy(layer), expected.numpy())
    _, gradient = value_and_gradient(
        lambda x: ops.sum(utils.resize_bilinear(x, size) * ops.convert_to_tensor(weights)),
        images)
    np.testing.assert_allclose(gradient, expected_gradient.numpy(), rtol=1e-5, atol=1e-5)


def tiny_model(num_classes):
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(num_classes, 3, padding="same")(inputs))


@pytest.mark.parametrize("name", ["ssl", "bce", "softmax_ce"])
def test_compile_and_fit(name):
    rng = np.random.default_rng(0)
    images = rng.random((8, 8, 8, 3)).astype(np.float32)
    labels = (images[..., :1] > 0.5).astype(np.int32) + (images[..., 1:2] > 0.5)
    labels[:, 0, 0] = IGNORE
    keras.utils.set_random_seed(0)
    model = tiny_model(3)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=losses.get_loss(name))
    history = model.fit(images, labels, batch_size=4, epochs=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


DEEPLAB_CLASSES = 10  # the demo set's classes


def deeplab_logits():
    """Logits of a DeepLabv3+ mobilenet_v2 with fixed weights (the same on every backend, not
    Keras' seeded initializers, whose random numbers differ) for fixed images.

    Returns:
      (model, numpy float32 [2, 33, 41, DEEPLAB_CLASSES]).
    """
    model = build_deeplab("mobilenet_v2", DEEPLAB_CLASSES, decoder_output_stride=4)
    rng = np.random.default_rng(0)
    values = []
    for variable in model.weights:
        name, shape = variable.path.rsplit("/", 1)[-1], tuple(variable.shape)
        if name in ("gamma", "moving_variance"):
            values.append(np.ones(shape, np.float32))
        elif name in ("beta", "moving_mean", "bias"):
            values.append(np.zeros(shape, np.float32))
        else:  # A kernel [kh, kw, in, out]: He-scaled normal, so activations keep their size.
            depthwise = "depthwise" in variable.path  # [kh, kw, in, 1]: one input each
            fan_in = np.prod(shape[:2]) if depthwise else np.prod(shape[:-1])
            values.append((rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
    model.set_weights(values)
    images = rng.uniform(0, 255, (2, 33, 41, 3)).astype(np.float32)
    return model, model.predict(images, verbose=0)  # compiled: eager JAX compiles every op


def test_deeplab_fits_batches_of_the_tf_data_pipeline(demo_dir):
    """A DeepLabv3+ with the SSL trains with compile / fit on batches of the project's tf.data
    pipeline; its logits go to test_on_backend, which compares them with TensorFlow's."""
    if BACKEND == "tensorflow":
        pytest.skip("TensorFlow's compile / fit: test_training_deeplab.py")
    model, logits = deeplab_logits()
    assert logits.shape == (2, 33, 41, DEEPLAB_CLASSES) and np.all(np.isfinite(logits))
    if os.environ.get(OUTPUTS_ENV):
        np.save(os.path.join(os.environ[OUTPUTS_ENV], "deeplab_logits.npy"), logits)
    dataset = input_pipeline.get_dataset("demo", demo_dir, "train", 2, crop_size=[49, 49],
                                         is_training=True, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss=losses.SSLoss())
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@functools.cache
def tensorflow_logits():
    """deeplab_logits' logits on TensorFlow, once for both backends."""
    return deeplab_logits()[1]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_on_backend(backend, tmp_path):
    """This file's tests in a process with KERAS_BACKEND=backend; the DeepLab logits there equal
    TensorFlow's here (different convolution code: equal to float32 rounding)."""
    if BACKEND != "tensorflow":
        pytest.skip("runs from the TensorFlow process")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, **{OUTPUTS_ENV: str(tmp_path)})
    # Shapes are tiny: XLA's compilation, not the run, takes the time (54 s -> 38 s for JAX
    # here); its optimizations move results by float32 rounding, within the tolerances.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not test_on_backend"], env=env, capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    expected = tensorflow_logits()
    assert np.abs(expected).max() > 1.0  # logits of a size: the weights keep activations
    logits = np.load(tmp_path / "deeplab_logits.npy")
    np.testing.assert_allclose(logits, expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
