r"""Runs an exported DeepLab model (SavedModel or TFLite) on image files and writes colored PNGs.

    python predict.py --saved_model_dir=exported/1 --output_dir=out a.jpg b.png
    python predict.py --tflite_path=model.tflite --output_dir=out a.jpg b.png

For each image `NAME.ext`: `NAME_prediction.png` (colored with --colormap) and
`NAME_overlay.png`; with --also_save_raw_predictions, `NAME_raw.png` holding the label ids
(`visualization.predict_files`). A .tflite file fits images of other sizes as the SavedModel's
--crop_size does (`tflite.TFLitePredictor`).
"""
from absl import app, flags

from deeplab_ssl import errors, serving, tflite, visualization

flags.DEFINE_string("saved_model_dir", None, "SavedModel folder written by export.py.")
flags.DEFINE_alias("model_dir", "saved_model_dir")  # Its name before eval.py took SavedModels.
flags.DEFINE_string("tflite_path", None, "Or a .tflite file of export.py (needs ai-edge-litert).")
flags.DEFINE_string("output_dir", None, "Folder of the PNGs (created).")
flags.DEFINE_enum("colormap", "pascal", list(visualization.COLORMAP_NAMES),
                  "Colormap of the predictions (the dataset's).")
flags.DEFINE_boolean("also_save_raw_predictions", False, "Also write the label ids as PNGs.")
flags.mark_flags_as_mutual_exclusive(["saved_model_dir", "tflite_path"], required=True)
flags.register_validator("tflite_path", lambda path: path is None or path.endswith(".tflite"),
                         "must name a .tflite file")
flags.mark_flag_as_required("output_dir")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give image files to predict after the flags")
    predictor = (tflite.TFLitePredictor(FLAGS.tflite_path) if FLAGS.tflite_path
                 else serving.SavedModelPredictor(FLAGS.saved_model_dir))
    for path in visualization.predict_files(
            predictor, argv[1:], FLAGS.output_dir, visualization.get_colormap(FLAGS.colormap),
            FLAGS.also_save_raw_predictions):
        print(path)


if __name__ == "__main__":
    errors.run(main)
