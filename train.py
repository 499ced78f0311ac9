r"""Trains DeepLabv3 / v3+ with the SSL or a baseline loss, with deeplab's train.py flags.

    python train.py --flagfile=configs/pascal_voc/deeplabv3_ssl3_stage1.flags \
        --dataset_dir=/data/pascal_voc_seg/tfrecord

Runs over all local GPUs (MirroredStrategy), over several machines when TF_CONFIG names several
workers, and resumes from the last checkpoint in --train_logdir when started again.
See docs/training.md.
"""
import dataclasses
import os

import deeplab_ssl  # noqa: F401  First: it quiets TensorFlow's C++ logs before TF loads.
import keras
import tensorflow as tf
from absl import flags, logging

from deeplab_ssl import common, distribute, errors, losses, train_utils, training
from deeplab_ssl import model as model_lib
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import input_pipeline

# train_logdir's record of every flag of the run, as resolved; a flagfile (--flagfile=...).
RESOLVED_FLAGS_NAME = "train.flags"

# Logs, checkpoints and the distribution.
flags.DEFINE_string("train_logdir", None, "Where the checkpoints and logs are stored.")
flags.DEFINE_integer("log_steps", 10, "Log (terminal, TensorBoard, train_log.jsonl) every N steps.")
flags.DEFINE_integer("save_interval_steps", 1000,
                     "Save a checkpoint every N steps (and at the end).")
flags.DEFINE_boolean("save_summaries_images", True,
                     "Write images, labels and predictions to TensorBoard at each checkpoint.")
flags.DEFINE_enum("strategy", "mirrored", distribute.STRATEGIES,
                  "mirrored: all local GPUs (or the CPU), multi-worker when TF_CONFIG names "
                  "several workers; multi_worker: MultiWorkerMirroredStrategy; one_device: "
                  "one device, for debugging.")
flags.DEFINE_enum("mixed_precision", "none", training.MIXED_PRECISION_POLICIES,
                  "Keras mixed precision policy; the loss is computed in float32.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights, data order and augmentation.")
flags.DEFINE_boolean("deterministic", False,
                     "The same --seed gives the same run: the input pipeline keeps its order "
                     "and TensorFlow's ops are deterministic (enable_op_determinism; ops that "
                     "have no deterministic version then raise, mostly on GPUs).")

# The learning rate and optimizer (deeplab's names and defaults).
flags.DEFINE_enum("learning_policy", "poly", train_utils.LEARNING_POLICIES,
                  "Learning rate policy for training.")
flags.DEFINE_float("base_learning_rate", 0.0001, "The base learning rate for model training.")
flags.DEFINE_float("learning_rate_decay_factor", 0.1,
                   "The rate to decay the base learning rate (step policy).")
flags.DEFINE_integer("learning_rate_decay_step", 2000,
                     "Decay the base learning rate at a fixed step (step policy).")
flags.DEFINE_float("learning_power", 0.9, "The power value used in the poly learning policy.")
flags.DEFINE_integer("training_number_of_steps", 30000, "The number of steps used for training.")
flags.DEFINE_float("momentum", 0.9, "The momentum value to use.")
flags.DEFINE_integer("slow_start_step", 0,
                     "Training model with small learning rate for few steps.")
flags.DEFINE_float("slow_start_learning_rate", 1e-4,
                   "Learning rate employed during slow start.")

# The model and data.
flags.DEFINE_integer("train_batch_size", 8,
                     "Images per step over all replicas (the global batch).")
flags.DEFINE_float("weight_decay", 0.00004,
                   "Weight decay: 0.00004 for mobilenet_v2 and xception, 0.0001 for resnet.")
common.define_crop_size_flag(
    "train_crop_size", "513,513",
    "Image crop size [height, width] during training, e.g. 513,513 (or 513).")
flags.DEFINE_boolean("fine_tune_batch_norm", True,
                     "Fine tune the batch norms (False freezes their moving statistics, as "
                     "deeplab does: gamma and beta still train; stage 2, or batches below 12).")
flags.DEFINE_float("batch_norm_decay", None,
                   "Moving-average decay of every batch norm; unset: deeplab's (0.9997 in the "
                   "head, the backbone's own). Lower it (e.g. 0.99) for runs of a few hundred "
                   "steps from scratch, whose statistics otherwise lag behind the weights.")
flags.DEFINE_float("min_scale_factor", 0.5, "Minimum scale factor for data augmentation.")
flags.DEFINE_float("max_scale_factor", 2.0, "Maximum scale factor for data augmentation.")
flags.DEFINE_float("scale_factor_step_size", 0.25,
                   "Scale factor step size for data augmentation.")
flags.DEFINE_string("train_split", "train", "Which split of the dataset to train on.")
flags.DEFINE_boolean("skip_bad_records", False,
                     "Skip (and log) records that cannot be decoded instead of stopping.")
flags.DEFINE_string("tf_initial_checkpoint", None,
                    "Initial weights when train_logdir has no checkpoint: a deeplab / TF-slim "
                    "checkpoint, a train.py checkpoint or train_logdir, or a Keras weights file.")
flags.DEFINE_boolean("initialize_last_layer", True, "Initialize the last layers.")
flags.DEFINE_boolean("last_layers_contain_logits_only", False,
                     "Only consider logits as last layers or not.")
flags.DEFINE_float("last_layer_gradient_multiplier", 1.0,
                   "The gradient multiplier for last layers, which is used to boost the "
                   "gradient of last layers if the value > 1 (biases always get 2x, as in "
                   "deeplab).")

# The loss: --loss and its flags, from the registry of the losses (listed by --helpshort).
losses.define_flags(flags.FLAGS)
flags.adopt_module_key_flags(losses)

FLAGS = flags.FLAGS


flags.register_multi_flags_validator(
    ["min_scale_factor", "max_scale_factor"],
    lambda f: 0 < f["min_scale_factor"] <= f["max_scale_factor"],
    "--min_scale_factor and --max_scale_factor must satisfy 0 < min <= max")


def crop_size():
    """[height, width] from --train_crop_size."""
    return common.crop_size("train_crop_size")


def train_options():
    """training.TrainOptions from the flags (raises ValueError naming a bad flag)."""
    fields = [field.name for field in dataclasses.fields(training.TrainOptions)]
    return training.TrainOptions(**{name: FLAGS[name].value for name in fields})


def class_weights(descriptor):
    """C floats from --class_weights or --class_weighting, or None (no weights).

    Raises:
        ValueError: naming the flag (both given, a number that is none, a count that differs
            from the dataset's classes, a loss that takes no weights).
    """
    if FLAGS.class_weights is None and FLAGS.class_weighting == "none":
        return None
    if FLAGS.loss not in ("softmax_ce", "topk_ce"):
        raise errors.UserError(f"--class_weights and --class_weighting apply to softmax_ce and "
                               f"topk_ce, not --loss={FLAGS.loss}")
    if FLAGS.class_weights is not None:
        if FLAGS.class_weighting != "none":
            raise errors.UserError("give --class_weights or --class_weighting, not both")
        try:
            weights = [float(w) for w in FLAGS.class_weights]
        except ValueError:
            raise errors.UserError(f"--class_weights={','.join(FLAGS.class_weights)} holds a value "
                                   "that is not a number") from None
        if len(weights) != descriptor.num_classes:
            raise errors.UserError(f"--class_weights has {len(weights)} weights, --dataset="
                                   f"{descriptor.name} {descriptor.num_classes} classes")
        return weights
    weights = train_utils.median_frequency_weights(*input_pipeline.label_histogram(
        descriptor, FLAGS.dataset_dir, FLAGS.train_split))
    logging.info("Median frequency class weights of split %r: %s", FLAGS.train_split,
                 ", ".join(f"{name} {w:.3f}" for name, w in zip(descriptor.class_names, weights)))
    return weights


def make_loss(descriptor):
    """The loss named by --loss with its flags."""
    name = FLAGS.loss
    try:
        arguments = losses.arguments_from_flags(name, FLAGS)
        weights = class_weights(descriptor)
        if weights is not None:
            arguments["class_weights"] = weights
        return losses.get_loss(name, ignore_label=descriptor.ignore_label, **arguments)
    except ValueError as error:
        raise errors.UserError(f"--loss={name} with its flags: {error}") from error


def make_trainer(strategy):
    """The training.Trainer of the flags: model, loss, options."""
    descriptor = common.dataset_descriptor()
    descriptor.split_size(FLAGS.train_split)  # Names an unknown split.
    options = train_options()

    model_options = common.model_options(descriptor.num_classes, FLAGS.train_logdir)
    common.write_model_options(FLAGS.train_logdir, model_options, descriptor)
    # Every flag's value as resolved (flagfiles read, defaults filled in): the run's record,
    # and a flagfile that reruns it.
    common.write_text(os.path.join(FLAGS.train_logdir, RESOLVED_FLAGS_NAME),
                      FLAGS.flags_into_string())

    def model_fn():
        keras.utils.set_random_seed(FLAGS.seed)
        model = model_lib.build_deeplab(
            **model_options, weight_decay=FLAGS.weight_decay,
            fine_tune_batch_norm=FLAGS.fine_tune_batch_norm)
        if FLAGS.batch_norm_decay is not None:
            train_utils.set_batch_norm_decay(model, FLAGS.batch_norm_decay)
        return model

    return training.Trainer(model_fn, make_loss(descriptor), options,
                            strategy=strategy, colormap=descriptor.colormap)


def dataset_fn(input_context):
    """This worker's training batches (images, labels) for `input_context`."""
    return input_pipeline.get_dataset(
        common.dataset_descriptor(), FLAGS.dataset_dir, FLAGS.train_split, FLAGS.train_batch_size,
        crop_size=crop_size(), is_training=True, min_scale_factor=FLAGS.min_scale_factor,
        max_scale_factor=FLAGS.max_scale_factor,
        scale_factor_step_size=FLAGS.scale_factor_step_size,
        mean_pixel=feature_extractor.mean_pixel(FLAGS.model_variant), seed=FLAGS.seed,
        skip_bad_records=FLAGS.skip_bad_records, deterministic=FLAGS.deterministic,
        input_context=input_context)


def main(argv):
    del argv
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = distribute.get_strategy(FLAGS.strategy)  # First: multi-worker needs it so.
    try:
        make_trainer(strategy).train(dataset_fn)
    except training.NonFiniteLossError as error:
        errors.refuse(error)
    except tf.errors.DataLossError:
        # A shard damaged since the start (TensorFlow names no file): reading the split
        # through names it, and says what to do.
        input_pipeline.complete_shards(FLAGS.dataset_dir, FLAGS.train_split)
        raise


if __name__ == "__main__":
    flags.mark_flags_as_required(["train_logdir", "dataset_dir"])
    errors.run(main)
