"""Backbones against independent reference implementations, with the same random weights.

- resnet_v1_50 against TF-slim's own nets/resnet_v1 (the code deeplab's resnet_v1_beta branched
  from), built in a TF1 graph, its checkpoint loaded by name with `load_slim_checkpoint`: this
  checks names, padding, strides and atrous rates (output stride 8: rates 2 and 4).
- mobilenet_v2 against keras.applications.MobileNetV2 (alpha 1), weights copied in order.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import checkpoints
from deeplab_ssl.core import feature_extractor

HEIGHT, WIDTH = 33, 41


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (2, HEIGHT, WIDTH, 3)).astype(np.float32)


def _backbone(variant, output_stride):
    images = keras.Input((HEIGHT, WIDTH, 3))
    features, _ = feature_extractor.extract_features(images, variant, output_stride=output_stride)
    return keras.Model(images, features)


def _slim_batch_norm(inputs, scope=None):
    """slim.batch_norm in inference mode with its variable names (slim's own needs tf_keras)."""
    with tf.compat.v1.variable_scope(scope, "BatchNorm"):
        def variable(name, trainable=True):
            return tf.compat.v1.get_variable(name, [inputs.shape[-1]], trainable=trainable)
        return tf.nn.batch_normalization(
            inputs, variable("moving_mean", False), variable("moving_variance", False),
            variable("beta"), variable("gamma"), 1e-5)


@pytest.mark.parametrize("output_stride", [8])
def test_resnet_v1_50_matches_tf_slim(tmp_path, output_stride):
    slim = pytest.importorskip("tf_slim")
    from tf_slim.nets import resnet_v1

    images = _images()
    rng = np.random.default_rng(1)
    prefix = str(tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, (None, None, None, 3))
        with slim.arg_scope([slim.conv2d], activation_fn=tf.nn.relu,
                            normalizer_fn=_slim_batch_norm), \
                slim.arg_scope([slim.max_pool2d], padding="SAME"):
            net, _ = resnet_v1.resnet_v1_50(inputs, num_classes=None, is_training=False,
                                            global_pool=False, output_stride=output_stride)
        assignments = []
        for variable in tf.compat.v1.global_variables():
            shape = variable.shape.as_list()
            if variable.name.endswith(("moving_variance:0", "gamma:0")):
                value = rng.uniform(0.5, 1.5, shape)
            elif variable.name.endswith("weights:0"):
                value = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:-1])), shape)
            else:
                value = rng.normal(0.0, 0.1, shape)
            assignments.append(variable.assign(value.astype(np.float32)))
        with tf.compat.v1.Session() as session:
            session.run(assignments)
            # deeplab feeds resnet_v1_50 mean-subtracted images; the Keras model does it inside.
            mean = np.float32(feature_extractor.mean_pixel("resnet_v1_50"))
            expected = session.run(net, {inputs: images - mean})
            tf.compat.v1.train.Saver().save(session, prefix)

    model = _backbone("resnet_v1_50", output_stride)
    report = checkpoints.load_slim_checkpoint(model, prefix, ignore_missing_vars=False)
    assert not report.unused and len(report.loaded) == len(model.weights)
    features = model(images, training=False).numpy()
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    keras.backend.clear_session()


def test_mobilenet_v2_matches_keras_applications():
    model = _backbone("mobilenet_v2", None)
    reference = keras.applications.MobileNetV2(input_shape=(HEIGHT, WIDTH, 3), alpha=1.0,
                                               include_top=False, weights=None)
    reference = keras.Model(reference.input, reference.get_layer("block_16_project_BN").output)
    rng = np.random.default_rng(2)
    values = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if w.path.endswith(
        ("gamma", "moving_variance")) else rng.normal(0, 0.2, w.shape).astype(np.float32)
        for w in reference.weights]
    reference.set_weights(values)
    # Same layers in the same order: Conv, then expand (from block 1), depthwise, project.
    assert [tuple(w.shape) for w in model.weights] == [tuple(v.shape) for v in values]
    model.set_weights(values)
    images = _images(3)
    expected = reference(images / 127.5 - 1.0, training=False).numpy()
    np.testing.assert_allclose(model(images, training=False), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    keras.backend.clear_session()
