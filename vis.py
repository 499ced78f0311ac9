r"""Writes colored predictions of a DeepLab checkpoint over a split, as deeplab's vis.py.

For each image: `vis_logdir/segmentation_results/%06d_image.png`, `%06d_prediction.png` (in the
dataset's colormap) and `%06d_panel.png` (image | ground truth | prediction | overlay); with
--also_save_raw_predictions, label PNGs named after the image files in
`vis_logdir/raw_segmentation_results/` (Cityscapes: converted to the evaluation server's ids).

    python vis.py --flagfile=configs/demo.flags --checkpoint_dir=train_logdir \
        --vis_split=val --vis_logdir=vis_out
"""
from absl import flags

from deeplab_ssl import common, errors, inference, visualization
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import input_pipeline

flags.DEFINE_string("vis_split", "val", "Split of the dataset to visualize.")
common.define_crop_size_flag(
    "vis_crop_size", None,
    "Height,width images are padded to (deeplab's, e.g. 513,513); unset pads each batch to its "
    "largest image.")
flags.DEFINE_integer("vis_batch_size", 1, "Images per batch.")
common.define_inference_flags()
common.define_checkpoint_flags()
flags.DEFINE_string("vis_logdir", None, "Output folder of the pictures.")
flags.DEFINE_integer("num_vis_examples", 0, "Images to visualize; 0: the whole split.")
flags.DEFINE_boolean("also_save_raw_predictions", False,
                     "Also write raw label PNGs named after the image files.")
flags.mark_flag_as_required("vis_logdir")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    descriptor = common.dataset_descriptor()
    descriptor.split_size(FLAGS.vis_split)
    model, checkpoint_path = common.restored_model(descriptor.num_classes)
    dataset = input_pipeline.get_dataset(
        descriptor, FLAGS.dataset_dir, FLAGS.vis_split, FLAGS.vis_batch_size,
        crop_size=common.crop_size("vis_crop_size"), is_training=False,
        mean_pixel=feature_extractor.mean_pixel(FLAGS.model_variant))
    raw_label_ids = (visualization.CITYSCAPES_TRAIN_ID_TO_EVAL_ID
                     if descriptor.name == "cityscapes" else None)
    predictor = inference.KerasPredictor(model, FLAGS.eval_scales, FLAGS.add_flipped_images)
    count = visualization.visualize(
        predictor, dataset, visualization.get_colormap(descriptor.colormap), FLAGS.vis_logdir,
        FLAGS.also_save_raw_predictions, raw_label_ids, FLAGS.num_vis_examples)
    print(f"{checkpoint_path}: wrote {count} visualizations to {FLAGS.vis_logdir}")


if __name__ == "__main__":
    errors.run(main)
