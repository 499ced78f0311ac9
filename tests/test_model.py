"""DeepLabv3 / v3+ builder: shapes, atrous output strides, decoder, frozen batch norm, weight
decay, serialization, mixed precision and parameter counts of every variant.

Each variant is built once at output stride 16 (module cache). Output stride 8 is checked on
bare backbones of one variant per root / block code path: the 101-layer ResNets and
Xception-65 / 71 differ from ResNet-50 and Xception-41 only in their block tables, turned into
atrous units by the same stack_blocks_dense (Xception-71's table is checked at stride 16). Inputs are small (33x41) to keep the suite fast on 2 shared cores.
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import checkpoints
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.model import build_deeplab

VARIANTS = feature_extractor.MODEL_VARIANTS
NUM_CLASSES = 5
HEIGHT, WIDTH = 33, 41


def _options(variant):
    """The paper's settings: ASPP rates 6, 12, 18 and multi-grid (1, 2, 4), decoder at 4."""
    if variant == "mobilenet_v2":
        return dict(decoder_output_stride=4)
    return dict(atrous_rates=[6, 12, 18], multi_grid=[1, 2, 4], decoder_output_stride=4)


_MODELS = {}


def _model(variant):
    if variant not in _MODELS:
        _MODELS[variant] = build_deeplab(variant, NUM_CLASSES, output_stride=16,
                                         **_options(variant))
    return _MODELS[variant]


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _MODELS.clear()
    keras.backend.clear_session()


def _images(batch=2, height=HEIGHT, width=WIDTH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


def _outputs(model, layer_names, images):
    """Values of the named layers' outputs for `images` (a view on the same layers)."""
    probe = keras.Model(model.input, [model.get_layer(name).output for name in layer_names])
    return probe(images, training=False)


def _backbone_layers(model, variant):
    """Layers of the backbone, named after its slim scope (MobilenetV2, resnet_v1_50, ...)."""
    scope = "MobilenetV2" if variant == "mobilenet_v2" else variant.replace("_beta", "")
    return [layer for layer in model.layers if layer.name.startswith(scope + ".")]


def _max_dilation(layers):
    return max(layer.dilation_rate[0] for layer in layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_stride_16_shapes_and_decoder(variant):
    model = _model(variant)
    logits = model(_images(), training=False)
    assert logits.shape == (2, HEIGHT, WIDTH, NUM_CLASSES)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    aspp, low_level, decoded = _outputs(
        model, ["concat_projection", "decoder.feature_projection0",
                "decoder.decoder_conv1_pointwise"], _images())
    assert aspp.shape[1:3] == (math.ceil(HEIGHT / 16), math.ceil(WIDTH / 16))
    assert low_level.shape[1:3] == (math.ceil(HEIGHT / 4), math.ceil(WIDTH / 4))
    assert decoded.shape[1:] == (math.ceil(HEIGHT / 4), math.ceil(WIDTH / 4), 256)
    # Output stride 16 = one stride turned into rate 2; multi_grid (1, 2, 4) gives 2 * 4 = 8.
    expected_rate = 2 if variant == "mobilenet_v2" else 8
    assert _max_dilation(_backbone_layers(model, variant)) == expected_rate


@pytest.mark.parametrize("variant", ["mobilenet_v2", "resnet_v1_50", "resnet_v1_50_beta",
                                     "xception_41"])
def test_output_stride_8_backbone(variant):
    images = keras.Input((None, None, 3))
    features, _ = feature_extractor.extract_features(images, variant, output_stride=8,
                                                     multi_grid=[1, 2, 4])
    backbone = keras.Model(images, features)
    out = backbone(_images(batch=1), training=False)
    assert out.shape[1:3] == (math.ceil(HEIGHT / 8), math.ceil(WIDTH / 8))
    assert out.shape[3] == (320 if variant == "mobilenet_v2" else 2048)
    assert _max_dilation(backbone.layers) == (4 if variant == "mobilenet_v2" else 16)
    keras.backend.clear_session()


@pytest.mark.parametrize("height,width", [(513, 513), (321, 257), (1, 1)])
def test_any_input_size(height, width):
    model = _model("mobilenet_v2")
    assert model(_images(1, height, width), training=False).shape == (1, height, width,
                                                                     NUM_CLASSES)


def test_deeplab_v3_has_no_decoder():
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5)
    names = [layer.name for layer in model.layers]
    assert not [name for name in names if name.startswith("decoder")]
    assert {"image_pooling", "aspp0", "concat_projection", "logits.semantic"} <= set(names)
    assert not [name for name in names if name.startswith("aspp1")]
    assert model(_images(1), training=False).shape == (1, HEIGHT, WIDTH, 3)


def test_aspp_branches_follow_flags():
    model = build_deeplab("mobilenet_v2", 3, atrous_rates=[6, 12, 18], depth_multiplier=0.5,
                          aspp_with_separable_conv=False, add_image_level_feature=False,
                          decoder_output_stride=4, decoder_use_separable_conv=False)
    names = {layer.name for layer in model.layers}
    assert {"aspp1", "aspp2", "aspp3", "decoder.decoder_conv0.decoder_conv0_1",
            "decoder.decoder_conv0.decoder_conv0_2"} <= names
    assert "image_pooling" not in names
    assert [model.get_layer("aspp%d" % i).dilation_rate for i in (1, 2, 3)] == [
        (6, 6), (12, 12), (18, 18)]
    assert model.get_layer("concat_projection").kernel.shape == (1, 1, 3 * 256 + 256, 256)


def test_logits_without_aspp_batch_norm_sum_atrous_branches():
    model = build_deeplab("mobilenet_v2", 3, atrous_rates=[6, 12], depth_multiplier=0.5,
                          aspp_with_batch_norm=False, logits_kernel_size=3)
    names = {layer.name for layer in model.layers}
    assert {"logits.semantic", "logits.semantic_1"} <= names
    assert not [name for name in names if name.startswith(("aspp", "concat_projection"))]
    assert model.get_layer("logits.semantic_1").dilation_rate == (12, 12)
    assert model(_images(1), training=False).shape == (1, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(model_variant="resnet_v2_50"), "Unknown model_variant"),
    (dict(model_variant="resnet_v1_50", output_stride=12), "output_stride"),
    (dict(model_variant="xception_65", output_stride=6), "output_stride"),
    (dict(model_variant="mobilenet_v2", output_stride=64), "output_stride"),
    (dict(model_variant="mobilenet_v2", decoder_output_stride=2), "decoder_output_stride"),
    (dict(model_variant="mobilenet_v2", logits_kernel_size=3), "logits_kernel_size"),
    (dict(model_variant="resnet_v1_50", multi_grid=[1, 2]), "multi_grid"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_deeplab(num_classes=3, **kwargs)
    keras.backend.clear_session()


@pytest.mark.parametrize("variant", VARIANTS)
def test_preprocessing_maps_mean_pixel_to_zero(variant):
    mean = feature_extractor.mean_pixel(variant)
    expected = ([123.15, 115.90, 103.06] if variant in ("resnet_v1_50", "resnet_v1_101")
                else [127.5] * 3)
    assert mean == pytest.approx(expected)
    image = np.broadcast_to(np.float32(mean), (1, 2, 2, 3))
    preprocessed = _model(variant).get_layer("preprocess")(image)
    np.testing.assert_allclose(preprocessed, 0.0, atol=1e-5)


def _batch_norms(model):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _train_step(model, images, labels):
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


@pytest.mark.parametrize("fine_tune_batch_norm", [False, True])
def test_fine_tune_batch_norm(fine_tune_batch_norm):
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5, decoder_output_stride=4,
                          atrous_rates=[6, 12, 18], fine_tune_batch_norm=fine_tune_batch_norm)
    norms = _batch_norms(model)
    stats = [w.numpy() for layer in norms for w in (layer.moving_mean, layer.moving_variance)]
    kernel = model.get_layer("logits.semantic").kernel.numpy()
    images = _images(2, 17, 17)
    labels = np.random.default_rng(0).integers(0, 3, (2, 17, 17))
    _train_step(model, images, labels)
    new_stats = [w.numpy() for layer in norms for w in (layer.moving_mean, layer.moving_variance)]
    changed = [not np.array_equal(a, b) for a, b in zip(stats, new_stats)]
    assert not np.array_equal(kernel, model.get_layer("logits.semantic").kernel.numpy())
    # gamma and beta train either way, as in deeplab (slim's is_training=False batch norm).
    trainable = {id(v) for v in model.trainable_variables}
    assert all(id(w) in trainable for layer in norms for w in (layer.gamma, layer.beta))
    if fine_tune_batch_norm:
        assert all(changed)
    else:
        assert not any(changed)
        # Frozen batch norms run in inference mode: training=True only adds dropout.
        probe = keras.Model(model.input, model.get_layer("concat_projection.BatchNorm").output)
        np.testing.assert_allclose(probe(images, training=True), probe(images, training=False),
                                   rtol=1e-5, atol=1e-5)


def test_weight_decay_is_slim_l2_on_conv_kernels_only():
    weight_decay = 4e-5
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5, atrous_rates=[6, 12, 18],
                          decoder_output_stride=4, weight_decay=weight_decay)
    kernels = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers
                   if isinstance(layer, keras.layers.DepthwiseConv2D))
    assert len(model.losses) == len(kernels)
    # slim.l2_regularizer(wd): wd * sum(w ** 2) / 2.
    expected = sum(weight_decay * np.sum(np.square(k.numpy())) / 2 for k in kernels)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-4)


def test_keras_file_round_trip(tmp_path):
    model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5, atrous_rates=[6, 12, 18],
                          decoder_output_stride=4, weight_decay=1e-4,
                          fine_tune_batch_norm=False)
    path = str(tmp_path / "deeplab.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    images = _images(1, 21, 19)
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False),
                               rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert len(loaded.losses) == len(model.losses)
    assert len(loaded.trainable_variables) == len(model.trainable_variables)


def test_mixed_precision_logits_are_float32():
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_deeplab("mobilenet_v2", 3, depth_multiplier=0.5, decoder_output_stride=4)
        assert model.get_layer("aspp0").compute_dtype == "float16"
        logits = model(_images(1), training=False)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


# Reference parameter counts (trainable + batch norm moving statistics).
def _conv(k, c_in, c_out, batch_norm=True):
    return k * k * c_in * c_out + (4 * c_out if batch_norm else c_out)


def _separable(c_in, c_out):
    """deeplab's split separable 3x3: depthwise + BN, pointwise + BN."""
    return _conv(3, 1, c_in) + _conv(1, c_in, c_out)


def _resnet_bottlenecks(num_units, c_in):
    """Block1..4 of deeplab's resnet_v1 from the block table (base depths 64..512)."""
    total = 0
    for base, units in zip((64, 128, 256, 512), num_units):
        for _ in range(units):
            total += _conv(1, c_in, base) + _conv(3, base, base) + _conv(1, base, 4 * base)
            if c_in != 4 * base:
                total += _conv(1, c_in, 4 * base)
            c_in = 4 * base
    return total


def _xception(entry, middle_units):
    """deeplab's xception_41/65/71 from its block table."""
    total = _conv(3, 3, 32) + _conv(3, 32, 64)
    c_in = 64
    for depth in entry + [728]:
        total += _separable(c_in, depth) + 2 * _separable(depth, depth) + _conv(1, c_in, depth)
        c_in = depth
    total += middle_units * 3 * _separable(728, 728)
    total += (_separable(728, 728) + _separable(728, 1024) + _separable(1024, 1024)
              + _conv(1, 728, 1024))
    return total + _separable(1024, 1536) + _separable(1536, 1536) + _separable(1536, 2048)


def _head(c_features, c_low_level, num_branches_3x3, separable):
    aspp = _conv(1, c_features, 256) * 2  # image pooling and aspp0
    aspp += num_branches_3x3 * (_separable(c_features, 256) if separable
                                else _conv(3, c_features, 256))
    aspp += _conv(1, 256 * (2 + num_branches_3x3), 256)
    decoder = (_conv(1, c_low_level, 48) + _separable(256 + 48, 256) + _separable(256, 256))
    return aspp + decoder + _conv(1, 256, NUM_CLASSES, batch_norm=False)


_RESNET_BETA_ROOT = _conv(3, 3, 64) + _conv(3, 64, 64) + _conv(3, 64, 128)
# Published: torchvision resnet50 / resnet101 have 25,557,032 / 44,549,160 parameters with a
# 2048x1000 fc (2,049,000) and 26,560 / 52,672 batch norm channels (2 moving stats each) -- the
# same convolutions and batch norms as slim's resnet_v1. Keras' MobileNetV2(include_top=False)
# has 2,257,984 parameters, of which 414,720 in Conv_1 (320 -> 1280 + BN) that deeplab omits.
_BACKBONE_COUNTS = {
    "mobilenet_v2": (2257984 - (320 * 1280 + 4 * 1280), 320, 144),
    "resnet_v1_50": (25557032 - 2049000 + 2 * 26560, 2048, 256),
    "resnet_v1_101": (44549160 - 2049000 + 2 * 52672, 2048, 256),
    # From deeplab's definitions (no published figure): the beta root and a 128-channel
    # block1 input instead of the 7x7 conv and 64 channels.
    "resnet_v1_50_beta": (_RESNET_BETA_ROOT + _resnet_bottlenecks((3, 4, 6, 3), 128), 2048, 256),
    "resnet_v1_101_beta": (_RESNET_BETA_ROOT + _resnet_bottlenecks((3, 4, 23, 3), 128), 2048,
                           256),
    "xception_41": (_xception([128, 256], 8), 2048, 256),
    "xception_65": (_xception([128, 256], 16), 2048, 256),
    "xception_71": (_xception([128, 256, 256, 728], 16), 2048, 256),
}


def test_resnet_reference_counts_agree_with_formula():
    """The published ResNet figures and the block-table formula used for the betas agree."""
    assert _BACKBONE_COUNTS["resnet_v1_50"][0] == _conv(7, 3, 64) + _resnet_bottlenecks(
        (3, 4, 6, 3), 64)
    assert _BACKBONE_COUNTS["resnet_v1_101"][0] == _conv(7, 3, 64) + _resnet_bottlenecks(
        (3, 4, 23, 3), 64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts(variant):
    model = _model(variant)
    backbone_count, c_features, c_low_level = _BACKBONE_COUNTS[variant]
    backbone = sum(int(np.prod(w.shape)) for layer in _backbone_layers(model, variant)
                   for w in layer.weights)
    assert backbone == backbone_count
    num_branches = 0 if variant == "mobilenet_v2" else 3
    assert model.count_params() == backbone_count + _head(c_features, c_low_level,
                                                          num_branches, separable=True)


# Names of variables in deeplab's model zoo checkpoints (as listed by
# tf.train.list_variables on them), one sample per kind of layer.
_SLIM_NAMES = {
    "mobilenet_v2": [
        "MobilenetV2/Conv/weights", "MobilenetV2/Conv/BatchNorm/moving_variance",
        "MobilenetV2/expanded_conv/depthwise/depthwise_weights",
        "MobilenetV2/expanded_conv/project/BatchNorm/gamma",
        "MobilenetV2/expanded_conv_16/expand/weights",
        "MobilenetV2/expanded_conv_16/project/weights"],
    "resnet_v1_101_beta": [
        "resnet_v1_101/conv1_1/weights", "resnet_v1_101/conv1_3/BatchNorm/beta",
        "resnet_v1_101/block1/unit_1/bottleneck_v1/shortcut/weights",
        "resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/BatchNorm/moving_mean",
        "resnet_v1_101/block4/unit_3/bottleneck_v1/conv3/weights"],
    "resnet_v1_50": ["resnet_v1_50/conv1/weights",
                     "resnet_v1_50/block2/unit_1/bottleneck_v1/shortcut/BatchNorm/gamma"],
    "xception_65": [
        "xception_65/entry_flow/conv1_1/weights",
        "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/"
        "depthwise_weights",
        "xception_65/entry_flow/block1/unit_1/xception_module/shortcut/BatchNorm/beta",
        "xception_65/middle_flow/block1/unit_16/xception_module/separable_conv3_pointwise/"
        "weights",
        "xception_65/exit_flow/block2/unit_1/xception_module/separable_conv3_pointwise/"
        "BatchNorm/moving_variance"],
}
_HEAD_NAMES = ["image_pooling/weights", "image_pooling/BatchNorm/gamma", "aspp0/weights",
               "concat_projection/BatchNorm/moving_mean", "decoder/feature_projection0/weights",
               "decoder/decoder_conv0_depthwise/depthwise_weights",
               "decoder/decoder_conv1_pointwise/BatchNorm/beta", "logits/semantic/weights",
               "logits/semantic/biases"]
_ASPP_NAMES = ["aspp1_depthwise/depthwise_weights", "aspp3_pointwise/weights",
               "aspp2_depthwise/BatchNorm/moving_variance"]


@pytest.mark.parametrize("variant", sorted(_SLIM_NAMES))
def test_variables_have_deeplab_names(variant):
    model = _model(variant)
    names = checkpoints.slim_variables(model)
    assert len(names) == len(model.weights)
    expected = _SLIM_NAMES[variant] + _HEAD_NAMES
    if variant != "mobilenet_v2":
        expected += _ASPP_NAMES
    assert set(expected) <= set(names)
    assert names["logits/semantic/weights"].shape == (1, 1, 256, NUM_CLASSES)


# deeplab's feature_extractor.DECODER_END_POINTS (MobileNetV2's 'layer_4/depthwise_output' is
# expanded_conv_2's depthwise output).
_DEEPLAB_DECODER_END_POINTS = {
    "mobilenet_v2": {4: "MobilenetV2/expanded_conv_2/depthwise",
                     8: "MobilenetV2/expanded_conv_5/depthwise",
                     16: "MobilenetV2/expanded_conv_12/depthwise"},
    "resnet_v1_50": {4: "resnet_v1_50/block1/unit_2/bottleneck_v1/conv3",
                     8: "resnet_v1_50/block2/unit_3/bottleneck_v1/conv3",
                     16: "resnet_v1_50/block3/unit_5/bottleneck_v1/conv3"},
    "resnet_v1_101_beta": {4: "resnet_v1_101/block1/unit_2/bottleneck_v1/conv3",
                           8: "resnet_v1_101/block2/unit_3/bottleneck_v1/conv3",
                           16: "resnet_v1_101/block3/unit_22/bottleneck_v1/conv3"},
    "xception_65": {4: "xception_65/entry_flow/block2/unit_1/xception_module/"
                       "separable_conv2_pointwise",
                    8: "xception_65/entry_flow/block3/unit_1/xception_module/"
                       "separable_conv2_pointwise",
                    16: "xception_65/exit_flow/block1/unit_1/xception_module/"
                        "separable_conv2_pointwise"},
    "xception_71": {4: "xception_71/entry_flow/block3/unit_1/xception_module/"
                       "separable_conv2_pointwise",
                    8: "xception_71/entry_flow/block5/unit_1/xception_module/"
                       "separable_conv2_pointwise",
                    16: "xception_71/exit_flow/block1/unit_1/xception_module/"
                        "separable_conv2_pointwise"},
}


@pytest.mark.parametrize("variant", sorted(_DEEPLAB_DECODER_END_POINTS))
@pytest.mark.parametrize("output_stride", [8, 16])
def test_pyramid_outputs_are_deeplabs_decoder_end_points(variant, output_stride):
    images = keras.Input((None, None, 3))
    _, pyramid_outputs = feature_extractor.extract_features(
        images, variant, output_stride=output_stride, depth_multiplier=0.25)
    for stride, scope in _DEEPLAB_DECODER_END_POINTS[variant].items():
        # The end point is the output of the scope's batch norm or activation layer.
        layer = pyramid_outputs[stride]._keras_history[0].name
        assert layer.rsplit(".", 1)[0] == scope.replace("/", "."), stride
    keras.backend.clear_session()
