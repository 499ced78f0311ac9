"""Feature extraction by model variant, as deeplab's core/feature_extractor.py.

Maps each `model_variant` to its backbone, its input preprocessing (done inside the model) and its
mean pixel (used to pad images so that padding becomes 0 after preprocessing). Each backbone
gives its pyramid outputs by nominal stride, as keras-hub's `pyramid_outputs`: the features that
deeplab's DeepLabv3+ decoder reads at that stride (deeplab's DECODER_END_POINTS).
"""
import keras

from deeplab_ssl.core import mobilenet_v2
from deeplab_ssl.core import resnet_v1_beta
from deeplab_ssl.core import xception

# ImageNet mean RGB that deeplab subtracts for resnet_v1_50 / resnet_v1_101.
_MEAN_RGB = [123.15, 115.90, 103.06]
_UNIT_RANGE_MEAN = [127.5, 127.5, 127.5]

# The strides at which deeplab's decoder can read a backbone's features.
DECODER_OUTPUT_STRIDES = (4, 8, 16)

MODEL_VARIANTS = ("mobilenet_v2", "resnet_v1_50", "resnet_v1_50_beta", "resnet_v1_101",
                  "resnet_v1_101_beta", "xception_41", "xception_65", "xception_71")

def _check_variant(model_variant):
    if model_variant not in MODEL_VARIANTS:
        raise ValueError("Unknown model_variant %r; known: %s."
                         % (model_variant, ", ".join(MODEL_VARIANTS)))


def mean_pixel(model_variant):
    """Mean pixel of the variant's preprocessing (deeplab's feature_extractor.mean_pixel).

    Args:
        model_variant: str, one of MODEL_VARIANTS.

    Returns:
        list of 3 floats in [0, 255]: the ImageNet mean for resnet_v1_50 / resnet_v1_101 (which
        subtract it) and 127.5 for the others (which map [0, 255] to [-1, 1]); images padded with
        it are 0 after preprocessing.
    """
    _check_variant(model_variant)
    if model_variant in ("resnet_v1_50", "resnet_v1_101"):
        return list(_MEAN_RGB)
    return list(_UNIT_RANGE_MEAN)


def preprocess(images, model_variant):
    """Adds deeplab's per-variant preprocessing layer.

    Args:
        images: [B, H, W, 3] float tensor of raw pixel values in [0, 255].
        model_variant: str.

    Returns:
        [B, H, W, 3] tensor: images - ImageNet mean (resnet_v1_50/101) or
        images * 2 / 255 - 1 (the others, including the resnet beta variants).
    """
    mean = mean_pixel(model_variant)
    if mean == _UNIT_RANGE_MEAN:
        rescaling = keras.layers.Rescaling(2.0 / 255.0, -1.0, name="preprocess")
    else:
        rescaling = keras.layers.Rescaling(1.0, [-m for m in mean], name="preprocess")
    return rescaling(images)


def extract_features(images, model_variant, output_stride=8, multi_grid=None,
                     depth_multiplier=1.0, weight_decay=0.0, fine_tune_batch_norm=True):
    """Preprocesses images and runs the variant's backbone (deeplab's extract_features).

    Args:
        images: [B, H, W, 3] float Keras tensor of raw pixel values in [0, 255].
        model_variant: str, one of MODEL_VARIANTS.
        output_stride: int, ratio of input to feature resolution (8, 16 or 32).
        multi_grid: 3 ints, unit rates of the last block (resnet, xception), or None.
        depth_multiplier: float, channel multiplier of mobilenet_v2 (ignored by the others).
        weight_decay: float.
        fine_tune_batch_norm: bool, train the backbone's batch norms.

    Returns:
        features: [B, ceil(H / output_stride), ceil(W / output_stride), C] tensor.
        pyramid_outputs: {nominal stride in DECODER_OUTPUT_STRIDES: tensor}, the features the
            decoder reads there.
    """
    net = preprocess(images, model_variant)
    if model_variant == "mobilenet_v2":
        features, pyramid_outputs = mobilenet_v2.mobilenet_v2(
            net, depth_multiplier, output_stride, weight_decay, fine_tune_batch_norm)
    elif model_variant.startswith("resnet_v1_"):
        depth = int(model_variant.split("_")[2])
        features, pyramid_outputs = resnet_v1_beta.resnet_v1(
            net, depth, model_variant.endswith("_beta"), output_stride, multi_grid, weight_decay,
            fine_tune_batch_norm)
    else:
        depth = int(model_variant.split("_")[1])
        features, pyramid_outputs = xception.xception(
            net, depth, output_stride, multi_grid, weight_decay, fine_tune_batch_norm)
    return features, {stride: pyramid_outputs[stride] for stride in DECODER_OUTPUT_STRIDES}
