"""Flags shared by train.py, eval.py, vis.py and export.py, with deeplab's names, and the model
they describe.

Defined once, here, as in deeplab's `common.py`. Script-specific flags (logdirs, learning rates,
loss flags) are defined in the script that uses them; crop-size flags through
`define_crop_size_flag`. `restored_model` is the one way eval, vis and export build and restore
the model, checked against the model options train.py wrote next to its checkpoints.
"""
import json
import os

from absl import app, flags

from deeplab_ssl import checkpoints, errors
from deeplab_ssl import model as model_lib
from deeplab_ssl.datasets import descriptors

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
                    "Name of a dataset in deeplab_ssl.datasets.descriptors.DATASETS, or custom: "
                    "described by the dataset.json the record builders write in --dataset_dir, "
                    "or by --num_classes and --ignore_label.")
flags.DEFINE_string("dataset_dir", None, "Folder of the dataset's tfrecord shards.")
flags.DEFINE_integer("num_classes", None,
                     "Classes of a custom dataset without dataset.json; given, it overrides the "
                     "dataset's.")
flags.DEFINE_integer("ignore_label", None,
                     "Label of the pixels left out (255 where --num_classes describes a custom "
                     "dataset); given, it overrides the dataset's.")

FLAGS = flags.FLAGS
# train.py writes the model options next to its checkpoints; eval, vis and export read them.
MODEL_OPTIONS_NAME = "model_options.json"
# Model options that inference may choose otherwise than training (same variables).
INFERENCE_OPTIONS = ("output_stride", "atrous_rates")


def _crop_size_is_valid(value):
    return value is None or (
        len(value) in (1, 2) and all(v.strip().isdigit() and int(v) > 0 for v in value))


def define_crop_size_flag(name, default, help_text):
    """A deeplab crop-size flag: 'height,width' (or one size for a square), e.g. 513,513.

    Given twice, the last one counts, as for every flag; deeplab's export_model.py took its
    --crop_size twice (--crop_size=513 --crop_size=513): for a square the last gives the same.
    """
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


def dataset_descriptor():
    """The descriptors.DatasetDescriptor of --dataset, --dataset_dir, --num_classes and
    --ignore_label (raises UserError naming what is missing).

    For eval, vis and export, where none of --dataset, --num_classes and --ignore_label is
    given, the dataset that train.py described in the checkpoints' folder (dataset.json)."""
    dataset_flags = ("dataset", "num_classes", "ignore_label")
    if "checkpoint_dir" in FLAGS and not any(FLAGS[name].present for name in dataset_flags):
        path = FLAGS.checkpoint_path or FLAGS.checkpoint_dir
        trained = descriptors.read_description(training_folder(path)) if path else None
        if trained is not None:
            return trained
    return descriptors.get_descriptor(FLAGS.dataset, FLAGS.dataset_dir, FLAGS.num_classes,
                                      FLAGS.ignore_label)


def checkpoint_to_restore():
    """--checkpoint_path, else --checkpoint_dir; raises app.UsageError when both are unset."""
    path = FLAGS.checkpoint_path or FLAGS.checkpoint_dir
    if not path:
        raise app.UsageError("give --checkpoint_path or --checkpoint_dir")
    return path


def _flag_options(num_classes):
    """build_deeplab keyword arguments from the shared flags alone."""
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


def training_folder(checkpoint_path):
    """The folder of a checkpoint prefix, or the folder itself."""
    return checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(checkpoint_path)


def read_model_options(train_logdir):
    """The model options train.py wrote in `train_logdir` (a dict), or None if there are none."""
    path = os.path.join(train_logdir, MODEL_OPTIONS_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path, text):
    """Writes `text` to `path` under a temporary name, then renames it: never half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"  # Every worker of a cluster may write it.
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def write_model_options(train_logdir, options, descriptor):
    """Writes `options` as train_logdir/model_options.json and the dataset's `descriptor` as
    train_logdir/dataset.json: what eval, vis and export take where their flags are not given."""
    write_text(os.path.join(train_logdir, MODEL_OPTIONS_NAME), json.dumps(options, indent=2))
    write_text(os.path.join(train_logdir, descriptors.DESCRIPTION_NAME),
               json.dumps(descriptor.to_json(), indent=2) + "\n")


def model_options(num_classes, train_logdir=None):
    """Keyword arguments of `deeplab_ssl.model.build_deeplab` from the shared flags.

    With a `train_logdir` where train.py wrote its model options, the model flags that were not
    given take the values of the training, and a given flag whose value differs is an error,
    but for INFERENCE_OPTIONS, which may differ from the training's.

    Args:
        num_classes: int, number of output classes (from the dataset descriptor).
        train_logdir: optional str, the training folder of the checkpoints to use.

    Returns:
        dict of build_deeplab keyword arguments; scripts add their own (e.g. weight_decay).

    Raises:
        ValueError: naming the flag (or --dataset for num_classes) that differs from the
            training's value.
    """
    options = _flag_options(num_classes)
    trained = read_model_options(train_logdir) if train_logdir else None
    for name, value in (trained or {}).items():
        if name == "num_classes" and value != num_classes:
            raise errors.UserError(
                f"the checkpoints of {train_logdir} have {value} classes, --dataset="
                f"{FLAGS.dataset} has {num_classes}")
        if name in INFERENCE_OPTIONS and FLAGS[name].present:
            continue  # E.g. deeplab's export at output stride 8 of a model trained at 16.
        if name != "num_classes" and FLAGS[name].present and options[name] != value:
            raise errors.UserError(
                f"--{name}={options[name]} differs from {value}, the value the checkpoints of "
                f"{train_logdir} were trained with ({MODEL_OPTIONS_NAME}): drop the flag to use "
                "the training's")
        options[name] = value
    return options


def restored_model(num_classes):
    """eval.py, vis.py and export.py's model: built from the flags (and the model options of
    the training) and restored from --checkpoint_path or --checkpoint_dir.

    Returns:
        (keras.Model, the checkpoint prefix restored).
    """
    path = checkpoint_to_restore()
    options = model_options(num_classes, training_folder(path))
    model = model_lib.build_deeplab(**options)
    return model, checkpoints.restore_model(model, path, options)
