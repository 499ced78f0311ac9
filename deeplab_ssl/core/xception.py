"""deeplab's aligned Xception (41, 65, 71), as its core/xception.py.

Max pooling is replaced by strided separable convolutions, each separable convolution is split
into depthwise and pointwise parts with batch norm after each, and strided ones pad explicitly.
The exit flow's last block takes `multi_grid` unit rates. Variable scopes are slim's:
`xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/depthwise_weights`.
"""
import keras

from deeplab_ssl.core import utils

# deeplab's feature_extractor builds Xception with batch_norm_decay=0.9997, epsilon=1e-3.
BATCH_NORM_DECAY = 0.9997
BATCH_NORM_EPSILON = 1e-3
_DEFAULT_MULTI_GRID = (1, 1, 1)


def xception_module(builder, net, scope, depth_list, skip_connection_type, stride,
                    activation_fn_in_separable_conv, unit_rate_list=_DEFAULT_MULTI_GRID, rate=1):
    """Three separable convolutions plus a 'conv', 'sum' or 'none' shortcut.

    Without `activation_fn_in_separable_conv`, ReLU comes BEFORE each separable convolution and
    none inside it (the original design); with it, ReLU follows each depthwise and pointwise part.

    Args:
        builder: LayerBuilder.
        net: [B, H, W, C] input.
        scope: unit scope, e.g. 'xception_65/entry_flow/block1/unit_1'.
        depth_list: 3 ints, channels of the separable convolutions.
        skip_connection_type: 'conv' (1x1 strided conv + BN), 'sum' or 'none'.
        stride: int, stride of the third separable convolution and of the shortcut.
        activation_fn_in_separable_conv: bool.
        unit_rate_list: 3 ints, atrous rate multipliers of the separable convolutions.
        rate: int, atrous rate of the block.

    Returns:
        [B, ceil(H / stride), ceil(W / stride), depth_list[-1]] tensor.
    """
    scope += "/xception_module"
    residual = net
    for i in range(3):
        conv_scope = "%s/separable_conv%d" % (scope, i + 1)
        if activation_fn_in_separable_conv:
            activation = "relu"
        else:
            activation = None
            residual = builder.activate(residual, "relu", conv_scope)
        residual = builder.separable_conv2d(
            residual, depth_list[i], conv_scope, stride=stride if i == 2 else 1,
            rate=rate * unit_rate_list[i], activation=activation)
    if skip_connection_type == "conv":
        shortcut = builder.conv2d(net, depth_list[-1], 1, scope + "/shortcut", stride=stride,
                                  activation=None)
        return keras.layers.Add(name=utils.layer_name(scope + "/add"))([residual, shortcut])
    if skip_connection_type == "sum":
        return keras.layers.Add(name=utils.layer_name(scope + "/add"))([residual, net])
    if skip_connection_type == "none":
        return residual
    raise ValueError("Unsupported skip_connection_type %r." % skip_connection_type)


def _block(scope, depth_list, skip_connection_type, num_units, stride,
           activation_fn_in_separable_conv=False, unit_rate_list=_DEFAULT_MULTI_GRID):
    return utils.Block(scope, xception_module, [dict(
        depth_list=depth_list, skip_connection_type=skip_connection_type, stride=stride,
        activation_fn_in_separable_conv=activation_fn_in_separable_conv,
        unit_rate_list=unit_rate_list)] * num_units)


def _entry_flow(depth):
    """Entry flow blocks of deeplab's xception_41/65/71 as (channels, stride) per block."""
    if depth == 71:
        specs = [(128, 2), (256, 1), (256, 2), (728, 1), (728, 2)]
    else:
        specs = [(128, 2), (256, 2), (728, 2)]
    return [_block("entry_flow/block%d" % (i + 1), [channels] * 3, "conv", 1, stride)
            for i, (channels, stride) in enumerate(specs)]


def _blocks(depth, multi_grid):
    middle_units = 8 if depth == 41 else 16
    return _entry_flow(depth) + [
        _block("middle_flow/block1", [728] * 3, "sum", middle_units, 1),
        _block("exit_flow/block1", [728, 1024, 1024], "conv", 1, 2),
        _block("exit_flow/block2", [1536, 1536, 2048], "none", 1, 1,
               activation_fn_in_separable_conv=True, unit_rate_list=multi_grid),
    ]


def xception(images, depth, output_stride, multi_grid, weight_decay, fine_tune_batch_norm):
    """Builds Xception-`depth` (41, 65 or 71) on preprocessed images.

    Args:
        images: [B, H, W, 3] preprocessed float tensor.
        depth: 41, 65 or 71.
        output_stride: 8, 16 or 32 (even), or None for 32.
        multi_grid: 3 ints, unit rates of exit_flow/block2, or None for (1, 1, 1).
        weight_decay: float.
        fine_tune_batch_norm: bool.

    Returns:
        features [B, ceil(H / output_stride), ceil(W / output_stride), 2048] and the pyramid
        outputs {nominal stride: the tensor deeplab's decoder reads there}.
    """
    multi_grid = _DEFAULT_MULTI_GRID if multi_grid is None else tuple(multi_grid)
    if len(multi_grid) != 3:
        raise ValueError("multi_grid must have 3 rates for xception, got %r." % (multi_grid,))
    if output_stride is not None and output_stride % 2:
        raise ValueError("output_stride must be even for xception, got %d." % output_stride)
    scope = "xception_%d" % depth
    builder = utils.LayerBuilder(
        weight_decay, BATCH_NORM_DECAY, BATCH_NORM_EPSILON, fine_tune_batch_norm,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.09))
    net = builder.conv2d(images, 32, 3, scope + "/entry_flow/conv1_1", stride=2)
    net = builder.conv2d(net, 64, 3, scope + "/entry_flow/conv1_2")
    blocks = _blocks(depth, multi_grid)
    net = utils.stack_blocks_dense(builder, net, blocks,
                                   None if output_stride is None else output_stride // 2, scope)
    # deeplab's decoder reads the second separable convolution of each strided block.
    pyramid_outputs, stride = {}, 2
    for block in blocks:
        if block.args[0]["stride"] == 2:
            pyramid_outputs[stride] = builder.end_points[
                "%s/%s/unit_1/xception_module/separable_conv2_pointwise" % (scope, block.scope)]
            stride *= 2
    return net, pyramid_outputs
