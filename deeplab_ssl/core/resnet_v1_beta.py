"""ResNet-v1 50 / 101 and their beta variants, as deeplab's core/resnet_v1_beta.py.

The beta variants replace the 7x7 root convolution by three 3x3 convolutions. As in deeplab, the
stride of a block is on the 3x3 convolution of its last unit, block4 has stride 1 and takes
`multi_grid` unit rates, and the root (stride 4) is followed by `stack_blocks_dense`.
Variable scopes are slim's: `resnet_v1_101/block3/unit_7/bottleneck_v1/conv2/weights`.
"""
import keras

from deeplab_ssl.core import utils

# deeplab's feature_extractor builds ResNets with batch_norm_decay=0.95, epsilon=1e-5.
BATCH_NORM_DECAY = 0.95
BATCH_NORM_EPSILON = 1e-5
_DEFAULT_MULTI_GRID = (1, 1, 1)
_NUM_UNITS = {50: (3, 4, 6), 101: (3, 4, 23)}


def bottleneck(builder, net, scope, depth, depth_bottleneck, stride, unit_rate=1, rate=1):
    """Bottleneck unit with batch norm after each convolution (scope `.../bottleneck_v1`).

    Args:
        builder: LayerBuilder.
        net: [B, H, W, C] input.
        scope: unit scope, e.g. 'resnet_v1_50/block1/unit_1'.
        depth: int, output channels.
        depth_bottleneck: int, channels of the 1x1 and 3x3 bottleneck convolutions.
        stride: int, stride of the 3x3 convolution and of the shortcut.
        unit_rate: int, multi-grid rate of the unit.
        rate: int, atrous rate of the block.

    Returns:
        [B, ceil(H / stride), ceil(W / stride), depth] tensor.
    """
    scope += "/bottleneck_v1"
    if net.shape[-1] == depth:
        # slim's resnet_utils.subsample: a 1x1 max pool with the unit's stride.
        shortcut = net if stride == 1 else keras.layers.MaxPooling2D(
            1, strides=stride, name=utils.layer_name(scope + "/shortcut"))(net)
    else:
        shortcut = builder.conv2d(net, depth, 1, scope + "/shortcut", stride=stride,
                                  activation=None)
    residual = builder.conv2d(net, depth_bottleneck, 1, scope + "/conv1")
    residual = builder.conv2d(residual, depth_bottleneck, 3, scope + "/conv2", stride=stride,
                              rate=rate * unit_rate)
    residual = builder.conv2d(residual, depth, 1, scope + "/conv3", activation=None)
    net = keras.layers.Add(name=utils.layer_name(scope + "/add"))([shortcut, residual])
    return builder.activate(net, "relu", scope)


def _blocks(num_units, multi_grid):
    """deeplab's four blocks: stride 2 in the last unit of blocks 1-3, multi_grid in block4."""
    blocks = []
    for i, (base_depth, units) in enumerate(zip((64, 128, 256), num_units)):
        unit = dict(depth=base_depth * 4, depth_bottleneck=base_depth, stride=1)
        blocks.append(utils.Block("block%d" % (i + 1), bottleneck,
                                  [unit] * (units - 1) + [dict(unit, stride=2)]))
    blocks.append(utils.Block("block4", bottleneck, [
        dict(depth=2048, depth_bottleneck=512, stride=1, unit_rate=rate) for rate in multi_grid]))
    return blocks


def resnet_v1(images, depth, beta, output_stride, multi_grid, weight_decay,
              fine_tune_batch_norm):
    """Builds ResNet-v1 `depth` (50 or 101) on preprocessed images.

    Args:
        images: [B, H, W, 3] preprocessed float tensor.
        depth: 50 or 101.
        beta: bool, the three-3x3 root of the beta variant.
        output_stride: 8, 16 or 32 (a multiple of 4), or None for 32.
        multi_grid: 3 ints, unit rates of block4, or None for (1, 1, 1).
        weight_decay: float.
        fine_tune_batch_norm: bool.

    Returns:
        features [B, ceil(H / output_stride), ceil(W / output_stride), 2048] and the pyramid
        outputs {nominal stride: the tensor deeplab's decoder reads there}.
    """
    multi_grid = _DEFAULT_MULTI_GRID if multi_grid is None else tuple(multi_grid)
    if len(multi_grid) != 3:
        raise ValueError("multi_grid must have 3 rates for resnet, got %r." % (multi_grid,))
    if output_stride is not None and output_stride % 4:
        raise ValueError("output_stride must be a multiple of 4 for resnet, got %d."
                         % output_stride)
    scope = "resnet_v1_%d" % depth
    builder = utils.LayerBuilder(
        weight_decay, BATCH_NORM_DECAY, BATCH_NORM_EPSILON, fine_tune_batch_norm,
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, "fan_in", "truncated_normal"))
    if beta:
        net = builder.conv2d(images, 64, 3, scope + "/conv1_1", stride=2)
        net = builder.conv2d(net, 64, 3, scope + "/conv1_2")
        net = builder.conv2d(net, 128, 3, scope + "/conv1_3")
    else:
        net = builder.conv2d(images, 64, 7, scope + "/conv1", stride=2)
    net = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                    name=utils.layer_name(scope + "/pool1"))(net)
    net = utils.stack_blocks_dense(builder, net, _blocks(_NUM_UNITS[depth], multi_grid),
                                   None if output_stride is None else output_stride // 4, scope)
    # deeplab's decoder reads the last unit before the stride of blocks 1-3 (strides 4, 8, 16).
    pyramid_outputs = {
        4 * 2 ** i: builder.end_points[
            "%s/block%d/unit_%d/bottleneck_v1/conv3" % (scope, i + 1, units - 1)]
        for i, units in enumerate(_NUM_UNITS[depth])}
    return net, pyramid_outputs
