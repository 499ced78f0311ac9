r"""Exports a DeepLab checkpoint as a SavedModel for serving, or as a TFLite model for phones.

--export_format=saved_model (TensorFlow Serving, predict.py; see deeplab_ssl/serving.py and
docs/serving.md): `serving_default` takes `images` uint8 [B, H, W, 3], `serving_encoded` takes
`image_bytes` string [1] (JPEG/PNG); both return `SemanticPredictions` int32 [B, H, W] (and
`SemanticProbabilities` with --include_probabilities). deeplab exports at --output_stride=8 (with
doubled --atrous_rates).

--export_format=tflite (deeplab_ssl/tflite.py): a .tflite file at the fixed --crop_size, `images`
uint8 [1, H, W, 3] -> `SemanticPredictions` int32 [1, H, W]; --quantize=float16 halves it,
--quantize=int8 quantizes weights and activations, calibrated on --num_representative images of
--representative_split.

    python export.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --export_path=exported/1 --output_stride=8
    python export.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --export_format=tflite --crop_size=128,160 --quantize=int8 --export_path=model.tflite
"""
from absl import flags

from deeplab_ssl import common, errors, serving, tflite
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import input_pipeline

common.define_checkpoint_flags()
flags.DEFINE_string("export_path", None,
                    "SavedModel folder to write (TensorFlow Serving wants MODEL_DIR/VERSION), or "
                    "the .tflite file.")
flags.DEFINE_enum("export_format", "saved_model", ["saved_model", "tflite"],
                  "saved_model: TensorFlow Serving; tflite: a fixed-size model for LiteRT "
                  "(needs --crop_size).")
common.define_crop_size_flag(
    "crop_size", None,
    "Height,width the model runs at (or one size for a square): larger images are resized "
    "down to fit, smaller ones padded; unset runs at each image's own size (SavedModel only).")
common.define_inference_flags()
flags.DEFINE_alias("inference_scales", "eval_scales")  # deeplab's export_model.py name.
flags.DEFINE_boolean("include_probabilities", False,
                     "Also return SemanticProbabilities float32 [B, H, W, num_classes].")
flags.DEFINE_enum("quantize", "none", list(tflite.QUANTIZATIONS),
                  "TFLite only: none (float32), float16 (float16 weights) or int8 (full-integer, "
                  "calibrated on --representative_split).")
flags.DEFINE_string("representative_split", "train",
                    "--quantize=int8: split of --dataset_dir whose first images calibrate it.")
flags.DEFINE_integer("num_representative", 100,
                     "--quantize=int8: how many images of --representative_split.", lower_bound=1)
flags.mark_flag_as_required("export_path")
flags.register_multi_flags_validator(
    ["export_format", "crop_size"],
    lambda values: values["export_format"] != "tflite" or values["crop_size"],
    "--export_format=tflite needs --crop_size=height,width: a TFLite model runs at a fixed size")
flags.register_multi_flags_validator(
    ["export_format", "export_path"],
    lambda values: values["export_format"] != "tflite" or str(values["export_path"]).endswith(
        ".tflite"),
    "--export_format=tflite writes a file: --export_path must end in .tflite")
flags.register_multi_flags_validator(
    ["export_format", "quantize"],
    lambda values: values["export_format"] == "tflite" or values["quantize"] == "none",
    "--quantize is for --export_format=tflite")
flags.register_multi_flags_validator(
    ["quantize", "dataset_dir"],
    lambda values: values["quantize"] != "int8" or values["dataset_dir"],
    "--quantize=int8 reads its representative images from --dataset_dir (--representative_split)")

FLAGS = flags.FLAGS


def _representative_images(descriptor, crop_size, pad_value):
    """--num_representative images of --representative_split, fitted to `crop_size`."""
    try:
        dataset = input_pipeline.get_dataset(
            descriptor, FLAGS.dataset_dir, FLAGS.representative_split, 1, is_training=False,
            mean_pixel=pad_value)
    except ValueError as error:
        raise errors.UserError(
            f"--representative_split={FLAGS.representative_split}: {error}") from error
    return tflite.representative_images(dataset, FLAGS.num_representative, crop_size, pad_value)


def main(argv):
    del argv
    descriptor = common.dataset_descriptor()
    model, checkpoint_path = common.restored_model(descriptor.num_classes)
    crop_size = common.crop_size("crop_size")
    pad_value = feature_extractor.mean_pixel(FLAGS.model_variant)
    if FLAGS.export_format == "tflite":
        representative = (_representative_images(descriptor, crop_size, pad_value)
                          if FLAGS.quantize == "int8" else None)
        tflite.export_tflite(
            model, FLAGS.export_path, crop_size, pad_value, FLAGS.eval_scales,
            FLAGS.add_flipped_images, FLAGS.include_probabilities, FLAGS.quantize,
            representative)
    else:
        serving.export_model(
            model, FLAGS.export_path, crop_size=crop_size, pad_value=pad_value,
            eval_scales=FLAGS.eval_scales, add_flipped_images=FLAGS.add_flipped_images,
            include_probabilities=FLAGS.include_probabilities)
    print(f"exported {checkpoint_path} to {FLAGS.export_path}")


if __name__ == "__main__":
    errors.run(main)
