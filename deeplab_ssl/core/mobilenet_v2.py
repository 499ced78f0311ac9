"""MobileNetV2 as deeplab uses it: slim's nets/mobilenet V2_DEF up to layer_18 (320 channels).

The final 1x1 convolution to 1280 channels (layer_19) is not built, as in deeplab. Convolutions
use TF 'SAME' padding, ReLU6, and atrous depthwise convolutions once `output_stride` is reached.
Variable scopes are slim's: `MobilenetV2/Conv`, `MobilenetV2/expanded_conv_3/expand`, ...
"""
import keras

from deeplab_ssl.core import utils

# slim's mobilenet training_scope: bn_decay=0.997 and slim's default epsilon 1e-3.
BATCH_NORM_DECAY = 0.997
BATCH_NORM_EPSILON = 1e-3
SCOPE = "MobilenetV2"

# (stride, num_outputs, expansion factor) of layers 2..18 (expanded_conv .. expanded_conv_16).
_EXPANDED_CONVS = (
    (1, 16, 1),
    (2, 24, 6), (1, 24, 6),
    (2, 32, 6), (1, 32, 6), (1, 32, 6),
    (2, 64, 6), (1, 64, 6), (1, 64, 6), (1, 64, 6),
    (1, 96, 6), (1, 96, 6), (1, 96, 6),
    (2, 160, 6), (1, 160, 6), (1, 160, 6),
    (1, 320, 6),
)


def make_divisible(value, divisor, min_value=None):
    """slim's _make_divisible: rounds to a multiple of divisor, never down by more than 10%."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def expanded_conv(builder, net, scope, num_outputs, expansion, stride, rate):
    """Inverted residual: 1x1 expand -> 3x3 depthwise -> linear 1x1 project (+ input).

    Args:
        builder: LayerBuilder.
        net: [B, H, W, C] input.
        scope: e.g. 'MobilenetV2/expanded_conv_3'.
        num_outputs: int, output channels.
        expansion: int, expansion factor (the expand conv is skipped when it adds no channels).
        stride: int, depthwise stride (1 once atrous).
        rate: int, depthwise atrous rate.

    Returns:
        [B, ceil(H / stride), ceil(W / stride), num_outputs] tensor.
    """
    num_inputs = net.shape[-1]
    # slim's expand_input_by_factor: divisible by 8, except the first layer's factor 1.
    inner_size = make_divisible(num_inputs * expansion, 8 if expansion != 1 else 1)
    residual = net
    if inner_size > num_inputs:
        residual = builder.conv2d(residual, inner_size, 1, scope + "/expand")
    residual = builder.depthwise_conv2d(residual, scope + "/depthwise", stride=stride, rate=rate)
    residual = builder.conv2d(residual, num_outputs, 1, scope + "/project", activation=None)
    if stride == 1 and num_outputs == num_inputs:
        return keras.layers.Add(name=utils.layer_name(scope + "/add"))([net, residual])
    return residual


def _layer_scope(index):
    """slim's scope of expanded convolution `index`: expanded_conv, expanded_conv_1, ..."""
    return SCOPE + "/expanded_conv" + ("_%d" % index if index else "")


def mobilenet_v2(images, depth_multiplier, output_stride, weight_decay, fine_tune_batch_norm):
    """Builds deeplab's MobileNetV2 feature extractor on preprocessed images.

    Args:
        images: [B, H, W, 3] preprocessed float tensor.
        depth_multiplier: float > 0, channel multiplier.
        output_stride: 8, 16 or 32, or None for 32.
        weight_decay: float.
        fine_tune_batch_norm: bool.

    Returns:
        features [B, ceil(H / output_stride), ceil(W / output_stride), 320 * multiplier] and the
        pyramid outputs {nominal stride: the tensor deeplab's decoder reads there}.
    """
    if depth_multiplier <= 0:
        raise ValueError("depth_multiplier must be > 0, got %r." % depth_multiplier)
    # deeplab's _mobilenet_v2: channels divisible by 8 (at least 8) only at multiplier 1.
    divisible_by = 8 if depth_multiplier == 1.0 else 1
    builder = utils.LayerBuilder(
        weight_decay, BATCH_NORM_DECAY, BATCH_NORM_EPSILON, fine_tune_batch_norm,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.09), activation="relu6",
        explicit_padding=False)
    net = builder.conv2d(images, make_divisible(32 * depth_multiplier, divisible_by), 3,
                         SCOPE + "/Conv", stride=2)
    current_stride = 2
    rate = 1
    pyramid_outputs = {}
    for i, (stride, num_outputs, expansion) in enumerate(_EXPANDED_CONVS):
        if stride == 2:
            # deeplab's decoder reads the depthwise output of the layer before a stride.
            pyramid_outputs[current_stride * rate] = builder.end_points[
                _layer_scope(i - 1) + "/depthwise"]
        if output_stride is not None and current_stride == output_stride:
            layer_stride, layer_rate = 1, rate
            rate *= stride
        else:
            layer_stride, layer_rate = stride, 1
            current_stride *= stride
        net = expanded_conv(
            builder, net, _layer_scope(i),
            make_divisible(num_outputs * depth_multiplier, divisible_by), expansion,
            layer_stride, layer_rate)
    if output_stride is not None and current_stride != output_stride:
        raise ValueError("output_stride cannot be reached by mobilenet_v2: %d was asked for, "
                         "its strides give %d." % (output_stride, current_stride))
    return net, pyramid_outputs
