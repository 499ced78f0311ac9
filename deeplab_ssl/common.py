"""Flags shared by train.py, eval.py, vis.py and export.py, with deeplab's names.

Defined once, here, as in deeplab's `common.py`. Script-specific flags (crop sizes, logdirs,
learning rates, loss flags) are defined in the script that uses them.
"""
from absl import app, flags

flags.DEFINE_string("model_variant", "mobilenet_v2",
                    "Backbone: mobilenet_v2, resnet_v1_50, resnet_v1_50_beta, resnet_v1_101, "
                    "resnet_v1_101_beta, xception_41, xception_65 or xception_71.")
flags.DEFINE_integer("output_stride", 16,
                     "Ratio of input to backbone output resolution: 8, 16 or 32.")
flags.DEFINE_multi_integer("atrous_rates", None,
                           "ASPP atrous rates, e.g. 6 12 18 at output_stride 16; none for "
                           "mobilenet_v2's light head.")
flags.DEFINE_multi_integer("decoder_output_stride", None,
                           "Output stride of the DeepLabv3+ decoder (4); unset for DeepLabv3.")
flags.DEFINE_multi_integer("multi_grid", None, "Unit rates of the last ResNet block, e.g. 1 2 4.")
flags.DEFINE_float("depth_multiplier", 1.0, "Width multiplier of mobilenet_v2.")
flags.DEFINE_boolean("add_image_level_feature", True, "Add image-level pooling to ASPP.")
flags.DEFINE_boolean("aspp_with_batch_norm", True, "Batch norm in the ASPP branches.")
flags.DEFINE_boolean("aspp_with_separable_conv", True, "Separable 3x3 convolutions in ASPP.")
flags.DEFINE_boolean("decoder_use_separable_conv", True, "Separable 3x3 convolutions in the decoder.")
flags.DEFINE_integer("logits_kernel_size", 1, "Kernel size of the logits convolution.")

flags.DEFINE_string("dataset", "pascal_voc_seg",
                    "Name of a dataset in deeplab_ssl.datasets.descriptors.DATASETS.")
flags.DEFINE_string("dataset_dir", None, "Folder of the dataset's tfrecord shards.")

FLAGS = flags.FLAGS


def _crop_size_is_valid(value):
    return value is None or (
        len(value) in (1, 2) and all(v.strip().isdigit() and int(v) > 0 for v in value))


def define_crop_size_flag(name, default, help_text):
    """A deeplab crop-size flag: 'height,width' (or one size for a square), e.g. 513,513."""
    flags.DEFINE_list(name, default, help_text)
    flags.register_validator(
        name, _crop_size_is_valid,
        "must be 'height,width' (or one size) of positive integers, e.g. 513,513")


def crop_size(name):
    """[height, width] from the crop-size flag `name`, or None where it is unset."""
    if not FLAGS[name].value:
        return None
    sizes = [int(v) for v in FLAGS[name].value]
    return sizes * 2 if len(sizes) == 1 else sizes


def define_checkpoint_flags():
    """--checkpoint_dir (alias --train_logdir) and --checkpoint_path, of eval, vis and export."""
    flags.DEFINE_string("checkpoint_dir", None,
                        "Training folder: eval.py evaluates each new checkpoint in it, vis.py "
                        "and export.py use its latest.")
    flags.DEFINE_alias("train_logdir", "checkpoint_dir")
    flags.DEFINE_string("checkpoint_path", None,
                        "One checkpoint prefix (or folder: its latest checkpoint) to use instead.")


def define_inference_flags():
    """deeplab's multi-scale and flipped inference flags, of eval, vis and export."""
    flags.DEFINE_multi_float("eval_scales", [1.0], "Image scales of multi-scale inference.")
    flags.DEFINE_boolean("add_flipped_images", False, "Also run on left-right flipped images.")


def checkpoint_to_restore():
    """--checkpoint_path, else --checkpoint_dir; raises app.UsageError when both are unset."""
    path = FLAGS.checkpoint_path or FLAGS.checkpoint_dir
    if not path:
        raise app.UsageError("give --checkpoint_path or --checkpoint_dir")
    return path


def model_options(num_classes):
    """Keyword arguments of `deeplab_ssl.model.build_deeplab` taken from the shared flags.

    Args:
        num_classes: int, number of output classes (from the dataset descriptor).

    Returns:
        dict of build_deeplab keyword arguments; scripts add their own (e.g. weight_decay).
    """
    return dict(
        model_variant=FLAGS.model_variant,
        num_classes=num_classes,
        output_stride=FLAGS.output_stride,
        atrous_rates=FLAGS.atrous_rates,
        decoder_output_stride=(FLAGS.decoder_output_stride[0]
                               if FLAGS.decoder_output_stride else None),
        multi_grid=FLAGS.multi_grid,
        depth_multiplier=FLAGS.depth_multiplier,
        add_image_level_feature=FLAGS.add_image_level_feature,
        aspp_with_batch_norm=FLAGS.aspp_with_batch_norm,
        aspp_with_separable_conv=FLAGS.aspp_with_separable_conv,
        decoder_use_separable_conv=FLAGS.decoder_use_separable_conv,
        logits_kernel_size=FLAGS.logits_kernel_size,
    )
