"""Loading deeplab / TF-slim checkpoints by name, and Keras weight files.

The checkpoints are written here the way TF-slim wrote them (a tf.compat.v1 Saver over
variables named like deeplab's, in a graph), since nothing can be downloaded.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import checkpoints, errors
from deeplab_ssl.model import build_deeplab

OPTIONS = dict(depth_multiplier=0.5, atrous_rates=[6, 12, 18], decoder_output_stride=4)


def _model(num_classes=3):
    return build_deeplab("mobilenet_v2", num_classes, **OPTIONS)


def _write_slim_checkpoint(prefix, values):
    """Writes {name: array} as a TF1 checkpoint with exactly these variable names."""
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(value, name=name) for name, value in values.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix)


def _random_values(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(0.5, 1.5, variable.shape).astype(np.float32)
            for name, variable in checkpoints.slim_variables(model).items()}


@pytest.fixture(scope="module")
def model_zoo_checkpoint(tmp_path_factory):
    """A deeplab-style checkpoint of OPTIONS' mobilenet_v2 model with 3 classes, plus the
    global_step and Momentum slots deeplab writes, without one batch norm variable."""
    values = _random_values(_model())
    del values["MobilenetV2/expanded_conv_3/expand/BatchNorm/gamma"]
    extra = {"global_step": np.int64(1000),
             "MobilenetV2/Conv/weights/Momentum": values["MobilenetV2/Conv/weights"]}
    prefix = _write_slim_checkpoint(str(tmp_path_factory.mktemp("zoo") / "model.ckpt"),
                                    {**values, **extra})
    keras.backend.clear_session()
    return prefix, values


def test_round_trip_values_equal(model_zoo_checkpoint):
    prefix, values = model_zoo_checkpoint
    model = _model()
    report = checkpoints.load_slim_checkpoint(model, prefix)
    variables = checkpoints.slim_variables(model)
    assert sorted(report.loaded) == sorted(values)
    assert report.missing == ["MobilenetV2/expanded_conv_3/expand/BatchNorm/gamma"]
    assert report.unused == ["MobilenetV2/Conv/weights/Momentum", "global_step"]
    assert not report.skipped and not report.wrong_shape
    for name, value in values.items():
        np.testing.assert_array_equal(variables[name].numpy(), value, err_msg=name)
    np.testing.assert_array_equal(  # the missing variable keeps its initial value
        variables["MobilenetV2/expanded_conv_3/expand/BatchNorm/gamma"].numpy(), 1.0)
    assert "1 missing" in str(report) and prefix in str(report)


def test_directory_loads_its_latest_checkpoint(model_zoo_checkpoint):
    prefix, values = model_zoo_checkpoint
    model = _model()
    report = checkpoints.load_slim_checkpoint(model, os.path.dirname(prefix))
    assert report.checkpoint == prefix
    assert len(report.loaded) == len(values)


def test_other_num_classes_needs_initialize_last_layer_false(model_zoo_checkpoint):
    prefix, values = model_zoo_checkpoint
    model = _model(num_classes=7)
    with pytest.raises(ValueError,
                       match="(?s)initialize_last_layer.*wrong shape: logits/semantic/weights"):
        checkpoints.load_slim_checkpoint(model, prefix)
    logits_kernel = model.get_layer("logits.semantic").kernel.numpy()
    report = checkpoints.load_slim_checkpoint(model, prefix, initialize_last_layer=False,
                                              last_layers_contain_logits_only=True)
    assert report.skipped == ["logits/semantic/weights", "logits/semantic/biases"]
    np.testing.assert_array_equal(model.get_layer("logits.semantic").kernel.numpy(),
                                  logits_kernel)
    np.testing.assert_array_equal(model.get_layer("aspp0").kernel.numpy(),
                                  values["aspp0/weights"])


def test_initialize_last_layer_false_skips_the_whole_head(model_zoo_checkpoint):
    prefix, values = model_zoo_checkpoint
    model = _model()
    report = checkpoints.load_slim_checkpoint(model, prefix, initialize_last_layer=False)
    assert {"aspp0/weights", "image_pooling/weights", "concat_projection/weights",
            "decoder/feature_projection0/weights", "logits/semantic/biases"} <= set(
                report.skipped)
    assert all(name.startswith("MobilenetV2/") for name in report.loaded)
    assert not np.array_equal(model.get_layer("aspp0").kernel.numpy(), values["aspp0/weights"])


def test_missing_variables_can_be_an_error(model_zoo_checkpoint):
    prefix, _ = model_zoo_checkpoint
    model = _model()
    before = model.get_layer("aspp0").kernel.numpy()
    with pytest.raises(ValueError, match="expanded_conv_3/expand/BatchNorm/gamma"):
        checkpoints.load_slim_checkpoint(model, prefix, ignore_missing_vars=False)
    np.testing.assert_array_equal(model.get_layer("aspp0").kernel.numpy(), before)


def test_checkpoint_of_another_backbone_is_an_error(tmp_path):
    prefix = _write_slim_checkpoint(str(tmp_path / "model.ckpt"), {
        "resnet_v1_101/conv1/weights": np.zeros((7, 7, 3, 64), np.float32)})
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5)
    with pytest.raises(ValueError, match="another model_variant"):
        checkpoints.load_slim_checkpoint(model, prefix)


def test_object_based_checkpoint_is_explained(tmp_path):
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5)
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="tf.train.Checkpoint"):
        checkpoints.load_slim_checkpoint(model, prefix)


def test_missing_checkpoint_names_the_path(tmp_path):
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5)
    with pytest.raises(errors.UserError, match="nowhere.ckpt"):
        checkpoints.load_slim_checkpoint(model, str(tmp_path / "nowhere.ckpt"))
    with pytest.raises(errors.UserError, match="no checkpoint in folder"):
        checkpoints.load_slim_checkpoint(model, str(tmp_path))


def test_resolver_finds_the_latest_checkpoint_or_none_where_missing_is_ok(tmp_path):
    # A training run's train_logdir: not made yet, empty, then holding checkpoints.
    logdir = str(tmp_path / "train")
    assert checkpoints.resolve_checkpoint(logdir, missing_ok=True) is None
    os.makedirs(logdir)
    assert checkpoints.resolve_checkpoint(logdir, missing_ok=True) is None
    with pytest.raises(errors.UserError, match="no checkpoint in folder"):
        checkpoints.resolve_checkpoint(logdir)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(1)), logdir, 2,
                                         checkpoint_name="model.ckpt")
    manager.save(checkpoint_number=3)
    latest = manager.save(checkpoint_number=7)
    assert checkpoints.resolve_checkpoint(logdir, missing_ok=True) == latest
    assert checkpoints.resolve_checkpoint(latest) == latest
    assert checkpoints.checkpoint_step(latest) == 7


def test_keras_weights_file(tmp_path):
    model = _model()
    path = str(tmp_path / "deeplab.weights.h5")
    model.save_weights(path)
    other = _model()
    checkpoints.load_weights(other, path)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="deeplab.weights.h5"):
        checkpoints.load_weights(_model(num_classes=7), path)
    with pytest.raises(errors.UserError, match="absent.weights.h5"):
        checkpoints.load_weights(other, str(tmp_path / "absent.weights.h5"))


IMAGENET_MOBILENET_V2 = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "weights",
    "mobilenet_v2_1.0_224", "mobilenet_v2_1.0_224.ckpt")


@pytest.mark.skipif(not os.path.exists(IMAGENET_MOBILENET_V2 + ".index"),
                    reason="deeplab's ImageNet mobilenet_v2 checkpoint is not at ../shared/weights "
                           "(a clone outside this workplace does not have it)")
@pytest.mark.parametrize("decoder_output_stride", [None, 4])
def test_imagenet_mobilenet_v2_checkpoint_loads_completely(decoder_output_stride):
    """The model zoo's initial checkpoint of `mobilenet_v2`: every backbone variable loads."""
    model = build_deeplab("mobilenet_v2", 11, decoder_output_stride=decoder_output_stride)
    report = checkpoints.load_slim_checkpoint(model, IMAGENET_MOBILENET_V2,
                                              initialize_last_layer=False)
    assert not report.missing and not report.wrong_shape
    assert len(report.loaded) == 255
    backbone = {name for name in checkpoints.slim_variables(model)
                if name.startswith("MobilenetV2/")}
    assert set(report.loaded) == backbone
    reader = tf.train.load_checkpoint(IMAGENET_MOBILENET_V2)
    name = "MobilenetV2/Conv/weights"
    np.testing.assert_array_equal(checkpoints.slim_variables(model)[name].numpy(),
                                  reader.get_tensor(name))
    keras.backend.clear_session()
