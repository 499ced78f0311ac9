"""DeepLabv3 / DeepLabv3+ meta-architecture, as deeplab's model.py.

backbone (core/) -> ASPP (1x1, atrous 3x3 branches, image pooling, concat projection, dropout)
-> optional v3+ decoder (48-channel low-level projection, two 3x3 convolutions of 256) -> logits
-> bilinear upsampling to the input size, all inside one functional Keras model. Layer names are
deeplab's variable scopes (see core/utils.py), so deeplab checkpoints load by name.
"""
import keras

from deeplab_ssl.core import feature_extractor
from deeplab_ssl.core import utils

LOGITS_SCOPE_NAME = "logits"
IMAGE_POOLING_SCOPE = "image_pooling"
ASPP_SCOPE = "aspp"
CONCAT_PROJECTION_SCOPE = "concat_projection"
DECODER_SCOPE = "decoder"
# deeplab's output name of semantic segmentation: logits live in 'logits/semantic'.
OUTPUT_TYPE = "semantic"

_DEPTH = 256
_DECODER_PROJECTION_DEPTH = 48
# deeplab's ASPP / decoder batch norm epsilon.
_BATCH_NORM_EPSILON = 1e-5
# deeplab's split_separable_conv2d initializers in the head.
_DEPTHWISE_STDDEV = 0.33
_POINTWISE_STDDEV = 0.06


def get_extra_layer_scopes(last_layers_contain_logits_only=False):
    """Scopes of the layers on top of the backbone (deeplab's get_extra_layer_scopes).

    Args:
        last_layers_contain_logits_only: bool, only the logits count as last layers.

    Returns:
        list of slim scope prefixes, e.g. ['logits', 'image_pooling', 'aspp', ...].
    """
    if last_layers_contain_logits_only:
        return [LOGITS_SCOPE_NAME]
    return [LOGITS_SCOPE_NAME, IMAGE_POOLING_SCOPE, ASPP_SCOPE, CONCAT_PROJECTION_SCOPE,
            DECODER_SCOPE]


def _separable_conv2d(builder, net, scope, rate=1):
    return builder.separable_conv2d(
        net, _DEPTH, scope, rate=rate,
        depthwise_initializer=keras.initializers.TruncatedNormal(stddev=_DEPTHWISE_STDDEV),
        pointwise_initializer=keras.initializers.TruncatedNormal(stddev=_POINTWISE_STDDEV))


def _aspp(builder, features, atrous_rates, add_image_level_feature, aspp_with_separable_conv):
    """ASPP: [image pooling,] 1x1, atrous 3x3 branches -> concat -> 1x1 projection -> dropout."""
    branches = []
    if add_image_level_feature:
        # Global average pooling works at any input size (deeplab without a fixed crop_size).
        pooled = keras.layers.GlobalAveragePooling2D(
            keepdims=True, name=IMAGE_POOLING_SCOPE + ".GlobalPool")(features)
        pooled = builder.conv2d(pooled, _DEPTH, 1, IMAGE_POOLING_SCOPE)
        branches.append(utils.ResizeBilinear(name=IMAGE_POOLING_SCOPE + ".Resize")(
            [pooled, features]))
    branches.append(builder.conv2d(features, _DEPTH, 1, ASPP_SCOPE + "0"))
    for i, rate in enumerate(atrous_rates or (), 1):
        scope = ASPP_SCOPE + str(i)
        if aspp_with_separable_conv:
            branches.append(_separable_conv2d(builder, features, scope, rate))
        else:
            branches.append(builder.conv2d(features, _DEPTH, 3, scope, rate=rate))
    net = branches[0] if len(branches) == 1 else keras.layers.Concatenate(
        name=ASPP_SCOPE + ".concat")(branches)
    net = builder.conv2d(net, _DEPTH, 1, CONCAT_PROJECTION_SCOPE)
    # deeplab's keep_prob=0.9.
    return keras.layers.Dropout(0.1, name=CONCAT_PROJECTION_SCOPE + "_dropout")(net)


def _refine_by_decoder(builder, features, low_level_features, decoder_use_separable_conv):
    """v3+ decoder: upsample features to the low-level features' size, fuse, two 3x3 convs."""
    projection = builder.conv2d(low_level_features, _DECODER_PROJECTION_DEPTH, 1,
                                DECODER_SCOPE + "/feature_projection0")
    upsampled = utils.ResizeBilinear(name=DECODER_SCOPE + ".Resize")([features, projection])
    net = keras.layers.Concatenate(name=DECODER_SCOPE + ".concat")([upsampled, projection])
    if decoder_use_separable_conv:
        net = _separable_conv2d(builder, net, DECODER_SCOPE + "/decoder_conv0")
        return _separable_conv2d(builder, net, DECODER_SCOPE + "/decoder_conv1")
    # slim.repeat(..., scope='decoder_conv0') names its convs decoder_conv0_1, decoder_conv0_2.
    for i in (1, 2):
        net = builder.conv2d(net, _DEPTH, 3, DECODER_SCOPE + "/decoder_conv0/decoder_conv0_%d" % i)
    return net


def _branch_logits(features, num_classes, rates, kernel_size, kernel_regularizer):
    """Logits: one conv per rate ('logits/semantic', 'logits/semantic_1', ...), summed."""
    branches = []
    for i, rate in enumerate(rates):
        scope = LOGITS_SCOPE_NAME + "/" + OUTPUT_TYPE + ("_%d" % i if i else "")
        branches.append(keras.layers.Conv2D(
            num_classes, kernel_size, dilation_rate=rate, padding="same",
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
            kernel_regularizer=kernel_regularizer, name=utils.layer_name(scope))(features))
    if len(branches) == 1:
        return branches[0]
    return keras.layers.Add(name=LOGITS_SCOPE_NAME + ".add")(branches)


def build_deeplab(model_variant, num_classes, output_stride=16, atrous_rates=None,
                  decoder_output_stride=None, multi_grid=None, depth_multiplier=1.0,
                  add_image_level_feature=True, aspp_with_batch_norm=True,
                  aspp_with_separable_conv=True, decoder_use_separable_conv=True,
                  logits_kernel_size=1, weight_decay=0.0, fine_tune_batch_norm=True,
                  batch_norm_decay=0.9997, input_shape=(None, None, 3), name=None):
    """Builds DeepLabv3 (or v3+ with `decoder_output_stride`) as a functional Keras model.

    Argument names and meanings are deeplab's flags. The model takes float32 images
    [B, H, W, 3] with raw pixel values in [0, 255] (preprocessing per backbone is inside) and
    returns float32 logits [B, H, W, num_classes], bilinearly upsampled (align_corners, as
    deeplab) to the input size, for any H and W; the last layer is float32 under a
    mixed-precision policy too.

    Args:
        model_variant: one of feature_extractor.MODEL_VARIANTS.
        num_classes: int, number of classes.
        output_stride: int, input / backbone output resolution: 8, 16 or 32.
        atrous_rates: ints, rates of the ASPP 3x3 branches (e.g. 6, 12, 18 at output stride 16,
            12, 24, 36 at 8); None or empty: only the 1x1 and image pooling branches
            (deeplab's mobilenet_v2 setting).
        decoder_output_stride: int (4, 8 or 16) to add the DeepLabv3+ decoder, or None.
        multi_grid: 3 ints, unit rates of the last ResNet / Xception block, or None (1, 1, 1).
        depth_multiplier: float, channel multiplier of mobilenet_v2.
        add_image_level_feature: bool, image pooling branch in ASPP.
        aspp_with_batch_norm: bool; False drops the ASPP module, as deeplab does, and the
            logits become a sum of convolutions with `atrous_rates` (DeepLab v2 style).
        aspp_with_separable_conv: bool, separable 3x3 ASPP branches.
        decoder_use_separable_conv: bool, separable 3x3 decoder convolutions.
        logits_kernel_size: int, kernel of the logits; must be 1 unless
            aspp_with_batch_norm=False and atrous_rates are given.
        weight_decay: float, L2 weight decay of convolution kernels (TF-slim semantics).
        fine_tune_batch_norm: bool; False freezes every batch norm (not trainable, inference
            mode, moving statistics unchanged by training).
        batch_norm_decay: float, moving average decay of the ASPP and decoder batch norms
            (deeplab: 0.9997). The backbones keep deeplab's own values (resnet 0.95,
            mobilenet_v2 0.997, xception 0.9997).
        input_shape: (H, W, 3) with None for dynamic sizes.
        name: model name; default 'deeplab_<model_variant>'.

    Returns:
        keras.Model images [B, H, W, 3] float32 -> logits [B, H, W, num_classes] float32.

    Raises:
        ValueError: on an unknown variant, an unreachable output_stride, a decoder_output_stride
            without end point, a bad multi_grid or logits_kernel_size.
    """
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1, got %r." % num_classes)
    if aspp_with_batch_norm or not atrous_rates:
        if logits_kernel_size != 1:
            raise ValueError("logits_kernel_size must be 1 when atrous_rates is None or "
                             "aspp_with_batch_norm is set, got %d." % logits_kernel_size)
        logits_rates = [1]
    else:
        logits_rates = list(atrous_rates)

    images = keras.Input(input_shape, name="images")
    features, pyramid_outputs = feature_extractor.extract_features(
        images, model_variant, output_stride=output_stride, multi_grid=multi_grid,
        depth_multiplier=depth_multiplier, weight_decay=weight_decay,
        fine_tune_batch_norm=fine_tune_batch_norm)
    # deeplab's model.py arg_scope: ReLU, batch norm (epsilon 1e-5), slim's default xavier init.
    builder = utils.LayerBuilder(weight_decay, batch_norm_decay, _BATCH_NORM_EPSILON,
                                 fine_tune_batch_norm, kernel_initializer="glorot_uniform")
    if aspp_with_batch_norm:
        features = _aspp(builder, features, atrous_rates, add_image_level_feature,
                         aspp_with_separable_conv)
    if decoder_output_stride is not None:
        if decoder_output_stride not in pyramid_outputs:
            raise ValueError("decoder_output_stride must be one of %s for %s, got %r."
                             % (sorted(pyramid_outputs), model_variant, decoder_output_stride))
        features = _refine_by_decoder(builder, features, pyramid_outputs[decoder_output_stride],
                                      decoder_use_separable_conv)
    logits = _branch_logits(features, num_classes, logits_rates, logits_kernel_size,
                            builder.kernel_regularizer())
    # Logits are upsampled to the label size; labels are never downsampled (as the paper).
    logits = utils.ResizeBilinear(name="upsample_logits", dtype="float32")([logits, images])
    return keras.Model(images, logits, name=name or "deeplab_" + model_variant)
