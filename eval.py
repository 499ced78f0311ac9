r"""Evaluates DeepLab checkpoints: mIoU, per-class IoU and pixel accuracy over a split.

Evaluates one checkpoint (--checkpoint_path), or watches a training folder (--checkpoint_dir,
alias --train_logdir) and evaluates each new checkpoint. Results are printed, written next to
each checkpoint as JSON and CSV, and to TensorBoard in --eval_logdir. --tflite_path evaluates a
TFLite model of export.py instead (LiteRT), the mIoU it will ship with: at the size and with the
inference it was exported with; results go next to the file.

    python eval.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --eval_split=val --max_number_of_evaluations=1
    python eval.py --flagfile=configs/demo.flags --tflite_path=model.tflite --eval_split=val
"""
import deeplab_ssl  # noqa: F401  First: it quiets TensorFlow's C++ logs before TF loads.
import tensorflow as tf
from absl import app, flags

from deeplab_ssl import common, errors, evaluation, tflite
from deeplab_ssl import model as model_lib
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import input_pipeline

flags.DEFINE_string("eval_split", "val", "Split of the dataset to evaluate.")
common.define_crop_size_flag(
    "eval_crop_size", None,
    "Height,width images are padded to (deeplab's, e.g. 513,513); unset pads each batch to its "
    "largest image.")
flags.DEFINE_integer("eval_batch_size", 1, "Images per batch.")
common.define_inference_flags()
common.define_checkpoint_flags()
flags.DEFINE_string("eval_logdir", None, "Folder of the TensorBoard summaries.")
flags.DEFINE_integer("eval_interval_secs", 300, "Seconds between evaluations of the folder.")
flags.DEFINE_integer("max_number_of_evaluations", 0,
                     "Stop after this many checkpoints; 0 watches --checkpoint_dir forever; 1 "
                     "evaluates its latest checkpoint at once.")
flags.DEFINE_integer("eval_timeout_secs", None,
                     "Watching --checkpoint_dir: stop when no new checkpoint came for this long; "
                     "unset waits forever.")
flags.DEFINE_integer("crf_iterations", 0,
                     "Dense CRF mean-field iterations after the network (needs pydensecrf2); "
                     "0: no CRF.")
flags.DEFINE_string("tflite_path", None,
                    "A .tflite file of export.py to evaluate (needs ai-edge-litert) instead of "
                    "checkpoints.")

FLAGS = flags.FLAGS
# Flags of checkpoint evaluation that a .tflite file fixes at export (size, scales, flips).
NOT_FOR_TFLITE = ("checkpoint_dir", "checkpoint_path", "eval_crop_size", "eval_scales",
                  "add_flipped_images", "crf_iterations", "eval_logdir")


def main(argv):
    del argv
    descriptor = common.dataset_descriptor()
    descriptor.split_size(FLAGS.eval_split)
    if FLAGS.tflite_path:
        given = [f"--{name}" for name in NOT_FOR_TFLITE if FLAGS[name].present]
        if given:
            raise app.UsageError(f"--tflite_path evaluates the file as exported: drop "
                                 f"{', '.join(given)}")
        tflite.evaluate_file(FLAGS.tflite_path, input_pipeline.get_dataset(
            descriptor, FLAGS.dataset_dir, FLAGS.eval_split, 1, is_training=False),
            descriptor, FLAGS.eval_split)
        return
    options = common.model_options(descriptor.num_classes, common.training_folder(
        common.checkpoint_to_restore()))
    model = model_lib.build_deeplab(**options)
    dataset = input_pipeline.get_dataset(
        descriptor, FLAGS.dataset_dir, FLAGS.eval_split, FLAGS.eval_batch_size,
        crop_size=common.crop_size("eval_crop_size"), is_training=False,
        mean_pixel=feature_extractor.mean_pixel(FLAGS.model_variant))
    writer = tf.summary.create_file_writer(FLAGS.eval_logdir) if FLAGS.eval_logdir else None
    for checkpoint_path in evaluation.checkpoints_to_evaluate(
            FLAGS.checkpoint_path, FLAGS.checkpoint_dir, FLAGS.eval_interval_secs,
            FLAGS.max_number_of_evaluations, FLAGS.eval_timeout_secs):
        evaluation.evaluate_checkpoint(
            model, checkpoint_path, dataset, descriptor, FLAGS.eval_split, FLAGS.eval_scales,
            FLAGS.add_flipped_images, FLAGS.crf_iterations,
            model_options=options, summary_writer=writer)


if __name__ == "__main__":
    errors.run(main)
