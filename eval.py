r"""Evaluates DeepLab models: mIoU, per-class IoU and pixel accuracy over a split (and F1, AUC
for two-class datasets).

Evaluates one checkpoint (--checkpoint_path), or watches a training folder (--checkpoint_dir,
alias --train_logdir) and evaluates each new checkpoint; or an export of export.py as it ships
(--saved_model_dir, --tflite_path: at the size and with the inference it was exported with, image
by image). Each runs through its `inference.Predictor` in the one loop of `evaluation.evaluate`.
Results are printed, written next to each checkpoint or export as JSON and CSV, and for
checkpoints to TensorBoard in --eval_logdir.

    python eval.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --eval_split=val --max_number_of_evaluations=1
    python eval.py --flagfile=configs/demo.flags --saved_model_dir=exported/1 --eval_split=val
    python eval.py --flagfile=configs/demo.flags --tflite_path=model.tflite --eval_split=val
"""
import deeplab_ssl  # noqa: F401  First: it quiets TensorFlow's C++ logs before TF loads.
import tensorflow as tf
from absl import app, flags

from deeplab_ssl import checkpoints, common, errors, evaluation, inference, serving, tflite
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
flags.DEFINE_string("saved_model_dir", None,
                    "A SavedModel folder of export.py to evaluate instead of checkpoints.")
flags.DEFINE_string("tflite_path", None,
                    "A .tflite file of export.py to evaluate (needs ai-edge-litert) instead of "
                    "checkpoints.")
flags.mark_flags_as_mutual_exclusive(["saved_model_dir", "tflite_path"])

FLAGS = flags.FLAGS
# Flags of checkpoint evaluation that an export fixes (size, scales, flips) or has no use for.
NOT_FOR_EXPORTS = ("checkpoint_dir", "checkpoint_path", "eval_batch_size", "eval_crop_size",
                   "eval_scales", "add_flipped_images", "eval_logdir")


def _export(descriptor):
    """("saved_model" or "tflite", [its path], its predictor, the dataset) of --saved_model_dir
    or --tflite_path: one image per batch, at its own size, which the export fits."""
    flag = "tflite_path" if FLAGS.tflite_path else "saved_model_dir"
    given = [f"--{name}" for name in NOT_FOR_EXPORTS if FLAGS[name].present]
    if given:
        raise app.UsageError(f"--{flag} evaluates the export as it is: drop {', '.join(given)}")
    if FLAGS.tflite_path:
        kind, path = "tflite", FLAGS.tflite_path
        predictor = tflite.TFLitePredictor(path)
    else:
        kind, path = "saved_model", FLAGS.saved_model_dir.rstrip("/")  # Results beside it.
        predictor = serving.SavedModelPredictor(path)
    return kind, [path], predictor, input_pipeline.get_dataset(
        descriptor, FLAGS.dataset_dir, FLAGS.eval_split, 1, is_training=False)


def _checkpoints(descriptor):
    """("checkpoint", the checkpoints to evaluate, each restored into the model as it comes,
    the model's predictor, the dataset)."""
    options = common.model_options(descriptor.num_classes, common.training_folder(
        common.checkpoint_to_restore()))
    model = model_lib.build_deeplab(**options)

    def restored():
        for checkpoint_path in evaluation.checkpoints_to_evaluate(
                FLAGS.checkpoint_path, FLAGS.checkpoint_dir, FLAGS.eval_interval_secs,
                FLAGS.max_number_of_evaluations, FLAGS.eval_timeout_secs):
            checkpoints.restore_model(model, checkpoint_path, options)
            yield checkpoint_path

    predictor = inference.KerasPredictor(model, FLAGS.eval_scales, FLAGS.add_flipped_images)
    return "checkpoint", restored(), predictor, input_pipeline.get_dataset(
        descriptor, FLAGS.dataset_dir, FLAGS.eval_split, FLAGS.eval_batch_size,
        crop_size=common.crop_size("eval_crop_size"), is_training=False,
        mean_pixel=feature_extractor.mean_pixel(FLAGS.model_variant))


def main(argv):
    del argv
    descriptor = common.dataset_descriptor()
    descriptor.split_size(FLAGS.eval_split)
    if FLAGS.saved_model_dir or FLAGS.tflite_path:
        kind, paths, predictor, dataset = _export(descriptor)
    else:
        kind, paths, predictor, dataset = _checkpoints(descriptor)
    writer = tf.summary.create_file_writer(FLAGS.eval_logdir) if FLAGS.eval_logdir else None
    for path in paths:
        evaluation.evaluate_and_report(
            predictor, dataset, descriptor, FLAGS.eval_split, path, kind, FLAGS.eval_scales,
            FLAGS.add_flipped_images, FLAGS.crf_iterations, writer)


if __name__ == "__main__":
    errors.run(main)
