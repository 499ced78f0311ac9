"""Layers shared by the backbones and the DeepLab head, with deeplab's padding and naming rules.

Every layer is named after the TF-slim variable scope deeplab gives it, with `/` written as `.`
(Keras forbids `/` in layer names): the convolution
`resnet_v1_101/block1/unit_1/bottleneck_v1/conv1` is the Keras layer
`resnet_v1_101.block1.unit_1.bottleneck_v1.conv1` and its batch norm
`resnet_v1_101.block1.unit_1.bottleneck_v1.conv1.BatchNorm`. `deeplab_ssl.checkpoints` relies on
this to map deeplab / TF-slim checkpoints onto the model by variable name. On the PyTorch
backend `/` is written as `-`: Keras registers each variable there as a torch parameter named by
its path (`layer name/kernel`), and torch refuses `.` in parameter names.
"""
import collections

import keras
import numpy as np
import tensorflow as tf
from keras import ops


def _scope_separator():
    """What stands for `/` in layer names: `.`, or `-` on PyTorch (see the module docstring)."""
    return "-" if keras.backend.backend() == "torch" else "."


def layer_name(scope):
    """Keras layer name of a TF-slim scope such as `aspp1_depthwise` or `decoder/decoder_conv0`."""
    return scope.replace("/", _scope_separator())


def slim_scope(name):
    """TF-slim scope of a Keras layer name made by `layer_name` (the inverse mapping)."""
    return name.replace(_scope_separator(), "/")


def _align_corners_sources(in_size, out_size):
    """Where output pixel i of an align-corners bilinear resize reads, as TensorFlow's
    ResizeBilinear computes it (resize_bilinear_op.cc, float32): position x = i * scale with
    scale = (in_size - 1) / (out_size - 1) (0 for out_size 1), read between floor(x) and
    min(ceil(x), in_size - 1) with weight x - floor(x) on the second.

    Returns:
      lower, upper: numpy int32 [out_size]; lerp: numpy float32 [out_size].
    """
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    positions = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(positions)
    upper = np.minimum(np.ceil(positions), in_size - 1)
    return lower.astype(np.int32), upper.astype(np.int32), positions - lower


def resize_bilinear(images, size):
    """Align-corners bilinear resizing with keras.ops, for static sizes: TensorFlow's
    ResizeBilinear(align_corners=True), the same float32 numbers (the same products and sums,
    in the same order), on any Keras backend.

    A gather of the two source columns of each output column and their interpolation, then
    the same over rows: top + (bottom - top) * lerp_y with top = left + (right - left) * lerp_x,
    TF's formula.

    Args:
      images: [B, h, w, C], any float dtype, h and w static.
      size: (H, W) Python ints.

    Returns:
      float32 [B, H, W, C].
    """
    images = ops.cast(images, "float32")
    left, right, lerp_x = _align_corners_sources(images.shape[2], size[1])
    top, bottom, lerp_y = _align_corners_sources(images.shape[1], size[0])
    # Tensors, not NumPy arrays: NumPy's operators would take a torch tensor over.
    lerp_x, lerp_y = ops.convert_to_tensor(lerp_x[:, None]), ops.convert_to_tensor(lerp_y)
    x_left, x_right = ops.take(images, left, axis=2), ops.take(images, right, axis=2)
    rows = x_left + (x_right - x_left) * lerp_x
    top_rows, bottom_rows = ops.take(rows, top, axis=1), ops.take(rows, bottom, axis=1)
    return top_rows + (bottom_rows - top_rows) * lerp_y[:, None, None]


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class ResizeBilinear(keras.layers.Layer):
    """Bilinear resizing to the spatial size of a reference tensor, as deeplab does it.

    deeplab resizes with `tf.image.resize_bilinear(..., align_corners=True)` everywhere (image
    pooling, decoder, logits). On TensorFlow the same op (ResizeBilinear) is used, so that its
    checkpoints give the same outputs, for any (dynamic) height and width; it is faster on CPU
    than `resize_bilinear`'s gathers (benchmarks/resize_bench.py, docs/benchmarks.md). On JAX
    and PyTorch, whose shapes are static when the layer runs, `resize_bilinear` computes the
    same numbers with keras.ops.

    Call arguments:
        inputs: pair (images [B, h, w, C], reference [B, H, W, ...]), any float dtype.

    Returns:
        [B, H, W, C] tensor in the layer's compute dtype (float32 for `dtype="float32"`).
    """

    def call(self, inputs):
        images, reference = inputs
        if keras.backend.backend() == "tensorflow":
            size = tf.shape(reference)[1:3]
            resized = tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True)
        else:
            resized = resize_bilinear(images, tuple(reference.shape[1:3]))
        return ops.cast(resized, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        images_shape, reference_shape = input_shape
        return (images_shape[0], reference_shape[1], reference_shape[2], images_shape[3])


Block = collections.namedtuple("Block", ["scope", "unit_fn", "args"])
Block.__doc__ = """A block of units: `scope` (e.g. 'block1'), `unit_fn(builder, net, scope, rate,
**unit_args)` and `args`, one dict of unit arguments (with `stride`) per unit."""


def stack_blocks_dense(builder, net, blocks, output_stride, scope):
    """Stacks ResNet / Xception blocks, with atrous convolution past `output_stride`.

    Once the running stride reaches `output_stride`, the remaining units use stride 1 and an
    atrous rate multiplied by the stride they skip (deeplab's `stack_blocks_dense`).

    Args:
        builder: LayerBuilder of the network.
        net: [B, H, W, C] features entering the first block.
        blocks: list of Block.
        output_stride: int, wanted stride of the output RELATIVE to `net`, or None (nominal).
        scope: network scope, e.g. 'resnet_v1_101'.

    Returns:
        [B, H', W', C'] features at `output_stride`.

    Raises:
        ValueError: if `output_stride` cannot be reached with the blocks' strides.
    """
    current_stride = 1
    rate = 1
    for block in blocks:
        for i, unit in enumerate(block.args):
            if output_stride is not None and current_stride > output_stride:
                raise ValueError("output_stride cannot be reached by %s: %d was asked for "
                                 "after the root." % (scope, output_stride))
            unit_scope = "%s/%s/unit_%d" % (scope, block.scope, i + 1)
            if output_stride is not None and current_stride == output_stride:
                net = block.unit_fn(builder, net, unit_scope, rate=rate, **dict(unit, stride=1))
                rate *= unit["stride"]
            else:
                net = block.unit_fn(builder, net, unit_scope, rate=1, **unit)
                current_stride *= unit["stride"]
    if output_stride is not None and current_stride != output_stride:
        raise ValueError("output_stride cannot be reached by %s: its blocks give a stride of %d "
                         "after the root, %d was asked for." % (scope, current_stride,
                                                                output_stride))
    return net


_DEFAULT = object()


@keras.saving.register_keras_serializable(package="deeplab_ssl")
class FrozenStatisticsBatchNorm(keras.layers.BatchNormalization):
    """A batch norm that always normalizes with its moving statistics; gamma and beta train.

    deeplab's `fine_tune_batch_norm=False`: TF-slim's batch_norm with is_training=False keeps the
    moving mean and variance fixed but still creates gamma and beta as trainable variables.
    A Keras layer with trainable=False would freeze gamma and beta too, leaving the new ASPP and
    decoder convolutions without any learned bias. Same variables and names as
    keras.layers.BatchNormalization, so checkpoints do not tell the two apart.
    """

    def call(self, inputs, training=None, mask=None):
        del training  # The statistics are frozen: always inference mode.
        return super().call(inputs, training=False, mask=mask)


class LayerBuilder:
    """Adds conv -> batch norm -> activation layers with shared settings, as a TF-slim arg_scope.

    Weight decay applies to the kernels of regular convolutions only (deeplab never regularizes
    depthwise kernels, biases or batch norm). TF-slim's `l2_regularizer(wd)` adds
    wd * sum(w ** 2) / 2, hence `keras.regularizers.L2(wd / 2)` here.

    `fine_tune_batch_norm=False` freezes the statistics of every batch norm, as deeplab's
    `is_training=False` batch norms do: they normalize with their moving statistics, which
    training never changes, while gamma and beta still train (`FrozenStatisticsBatchNorm`).

    The output of every convolution (after its batch norm and activation) is kept in
    `end_points[scope]`, like slim's end point collections, for the decoder's low-level features.

    Args:
        weight_decay: float, deeplab's weight_decay.
        batch_norm_decay: float, moving average decay (Keras momentum).
        batch_norm_epsilon: float.
        fine_tune_batch_norm: bool, train the batch norms.
        kernel_initializer: Keras initializer of the kernels.
        activation: 'relu' or 'relu6', the default activation.
        explicit_padding: bool, strided convolutions pad explicitly like deeplab's
            `conv2d_same` (ResNet, Xception) instead of TF's 'SAME' padding (MobileNet).
    """

    def __init__(self, weight_decay, batch_norm_decay, batch_norm_epsilon, fine_tune_batch_norm,
                 kernel_initializer, activation="relu", explicit_padding=True):
        self.weight_decay = weight_decay
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.fine_tune_batch_norm = fine_tune_batch_norm
        self.kernel_initializer = kernel_initializer
        self.activation = activation
        self.explicit_padding = explicit_padding
        self.end_points = {}

    def kernel_regularizer(self):
        """L2 regularizer matching slim's l2_regularizer(weight_decay), or None."""
        if not self.weight_decay:
            return None
        # slim.l2_regularizer(wd)(w) = wd * sum(w**2) / 2; keras L2(l2)(w) = l2 * sum(w**2).
        return keras.regularizers.L2(self.weight_decay / 2.0)

    def batch_norm(self, net, scope):
        """Batch norm named `scope/BatchNorm` (center and scale, as deeplab)."""
        layer_class = (keras.layers.BatchNormalization if self.fine_tune_batch_norm
                       else FrozenStatisticsBatchNorm)
        return layer_class(momentum=self.batch_norm_decay, epsilon=self.batch_norm_epsilon,
                           name=layer_name(scope + "/BatchNorm"))(net)

    def activate(self, net, activation, scope):
        """Applies 'relu', 'relu6' or nothing (None)."""
        if activation is _DEFAULT:
            activation = self.activation
        if activation is None:
            return net
        if activation == "relu":
            return keras.layers.ReLU(name=layer_name(scope + "/Relu"))(net)
        if activation == "relu6":
            return keras.layers.ReLU(max_value=6.0, name=layer_name(scope + "/Relu6"))(net)
        raise ValueError("Unknown activation %r for %s." % (activation, scope))

    def _padding(self, net, kernel_size, stride, rate, scope):
        """Pads explicitly for strided convolutions (deeplab's fixed_padding); returns padding."""
        if stride == 1 or not self.explicit_padding:
            return net, "same"
        pad_total = kernel_size + (kernel_size - 1) * (rate - 1) - 1
        if pad_total:
            pad_beg = pad_total // 2
            pad_end = pad_total - pad_beg
            net = keras.layers.ZeroPadding2D(((pad_beg, pad_end), (pad_beg, pad_end)),
                                             name=layer_name(scope + "/Pad"))(net)
        return net, "valid"

    def conv2d(self, net, filters, kernel_size, scope, stride=1, rate=1, activation=_DEFAULT,
               use_batch_norm=True, kernel_initializer=None):
        """Convolution (weights `scope/weights`) -> batch norm -> activation.

        Args:
            net: [B, H, W, C_in] tensor.
            filters: int, output channels.
            kernel_size: int.
            scope: slim scope of the convolution.
            stride: int; with explicit padding, stride > 1 pads like deeplab's conv2d_same.
            rate: int, atrous rate.
            activation: 'relu', 'relu6', None (linear) or the builder's default.
            use_batch_norm: False for a biased convolution without batch norm.
            kernel_initializer: overrides the builder's initializer.

        Returns:
            [B, ceil(H / stride), ceil(W / stride), filters] tensor.
        """
        net, padding = self._padding(net, kernel_size, stride, rate, scope)
        net = keras.layers.Conv2D(
            filters, kernel_size, strides=stride, dilation_rate=rate, padding=padding,
            use_bias=not use_batch_norm,
            kernel_initializer=kernel_initializer or self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer(), name=layer_name(scope))(net)
        if use_batch_norm:
            net = self.batch_norm(net, scope)
        net = self.activate(net, activation, scope)
        self.end_points[scope] = net
        return net

    def depthwise_conv2d(self, net, scope, kernel_size=3, stride=1, rate=1, activation=_DEFAULT,
                         kernel_initializer=None):
        """Depthwise convolution (`scope/depthwise_weights`) -> batch norm -> activation.

        Args and returns as `conv2d`, with C_in output channels; the kernel is not regularized.
        """
        net, padding = self._padding(net, kernel_size, stride, rate, scope)
        net = keras.layers.DepthwiseConv2D(
            kernel_size, strides=stride, dilation_rate=rate, padding=padding, use_bias=False,
            depthwise_initializer=kernel_initializer or self.kernel_initializer,
            name=layer_name(scope))(net)
        net = self.batch_norm(net, scope)
        net = self.activate(net, activation, scope)
        self.end_points[scope] = net
        return net

    def separable_conv2d(self, net, filters, scope, kernel_size=3, stride=1, rate=1,
                         activation=_DEFAULT, depthwise_initializer=None,
                         pointwise_initializer=None):
        """deeplab's split separable convolution: `scope_depthwise` then 1x1 `scope_pointwise`.

        Each part has its batch norm and the activation (deeplab's split_separable_conv2d and
        Xception's separable_conv2d_same with regularize_depthwise=False).

        Returns:
            [B, ceil(H / stride), ceil(W / stride), filters] tensor.
        """
        net = self.depthwise_conv2d(net, scope + "_depthwise", kernel_size, stride, rate,
                                    activation, depthwise_initializer)
        return self.conv2d(net, filters, 1, scope + "_pointwise", activation=activation,
                           kernel_initializer=pointwise_initializer)
