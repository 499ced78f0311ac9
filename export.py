"""Exports a DeepLab checkpoint as a SavedModel for serving (TensorFlow Serving, predict.py).

Signatures (see deeplab_ssl/serving.py and docs/serving.md): `serving_default` takes `images`
uint8 [B, H, W, 3], `serving_encoded` takes `image_bytes` string [1] (JPEG/PNG); both return
`SemanticPredictions` int32 [B, H, W] (and `SemanticProbabilities` with
--include_probabilities). deeplab exports at --output_stride=8 (with doubled --atrous_rates).

    python export.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --export_path=exported/1 --output_stride=8
"""
from absl import app, flags

from deeplab_ssl import common, serving
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import descriptors

common.define_checkpoint_flags()
flags.DEFINE_string("export_path", None,
                    "SavedModel folder to write (TensorFlow Serving wants MODEL_DIR/VERSION).")
common.define_crop_size_flag(
    "crop_size", None,
    "Height,width the model runs at (or one size for a square): larger images are resized "
    "down to fit, smaller ones padded; unset runs at each image's own size.")
common.define_inference_flags()
flags.DEFINE_alias("inference_scales", "eval_scales")  # deeplab's export_model.py name.
flags.DEFINE_boolean("include_probabilities", False,
                     "Also return SemanticProbabilities float32 [B, H, W, num_classes].")
flags.mark_flag_as_required("export_path")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    descriptor = descriptors.get_descriptor(FLAGS.dataset)
    model, checkpoint_path = common.restored_model(descriptor.num_classes)
    serving.export_model(
        model, FLAGS.export_path, crop_size=common.crop_size("crop_size"),
        pad_value=feature_extractor.mean_pixel(FLAGS.model_variant),
        eval_scales=FLAGS.eval_scales, add_flipped_images=FLAGS.add_flipped_images,
        include_probabilities=FLAGS.include_probabilities)
    print(f"exported {checkpoint_path} to {FLAGS.export_path}")


if __name__ == "__main__":
    app.run(main)
