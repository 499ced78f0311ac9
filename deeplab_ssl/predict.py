"""Runs an exported DeepLab model (SavedModel or TFLite) on image files and writes colored PNGs.

    python -m deeplab_ssl.predict --model_dir=exported/1 --output_dir=out a.jpg b.png
    python -m deeplab_ssl.predict --tflite_path=model.tflite --output_dir=out a.jpg b.png

For each image `NAME.ext`: `NAME_prediction.png` (colored with --colormap) and
`NAME_overlay.png`; with --also_save_raw_predictions, `NAME_raw.png` holding the label ids.
"""
import os

import numpy as np
import tensorflow as tf
from absl import app, flags

from deeplab_ssl import errors, serving, tflite, visualization

FLAGS = flags.FLAGS


def _predictor(model_path):
    """The `inference.Predictor` of a `.tflite` file (images fitted to its size as the
    SavedModel's crop_size does), else of a SavedModel folder."""
    if model_path.endswith(".tflite"):
        return tflite.TFLitePredictor(model_path)
    return serving.SavedModelPredictor(model_path)


def predict_files(model_path, image_paths, output_dir, colormap, also_save_raw_predictions=False):
    """Runs an exported model on each file and writes PNGs.

    Args:
        model_path: str, a SavedModel folder or a `.tflite` file of export.py.
        image_paths: sequence of str, JPEG or PNG files.
        output_dir: str, output folder (created).
        colormap: uint8 [N, 3].
        also_save_raw_predictions: bool, also write the label ids.

    Returns:
        list of the written prediction PNG paths.

    Raises:
        FileNotFoundError: naming a missing image.
        ValueError: naming an image that cannot be decoded or predicted.
    """
    predictor = _predictor(model_path)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in image_paths:
        if not tf.io.gfile.exists(path):
            raise errors.UserError(f"no image file {path}")
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False).numpy()
            prediction = predictor.predict_labels(image[np.newaxis]).numpy()[0]
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise errors.UserError(f"cannot predict {path}: {error}") from error
        name = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
        colored = visualization.label_to_color_image(prediction, colormap)
        visualization.save_png(colored, f"{name}_prediction.png")
        visualization.save_png(visualization.overlay(image, colored), f"{name}_overlay.png")
        if also_save_raw_predictions:
            visualization.save_png(prediction.astype(np.uint8), f"{name}_raw.png")
        written.append(f"{name}_prediction.png")
    return written


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give image files to predict after the flags")
    for path in predict_files(FLAGS.model_dir or FLAGS.tflite_path, argv[1:], FLAGS.output_dir,
                              visualization.get_colormap(FLAGS.colormap),
                              FLAGS.also_save_raw_predictions):
        print(path)


def define_flags():
    """The command line's flags; defined only when run as a program, so that importing this
    module (tests, notebooks) adds no required flags to absl's global FLAGS."""
    flags.DEFINE_string("model_dir", None, "SavedModel folder written by export.py.")
    flags.DEFINE_string("tflite_path", None,
                        "Or a .tflite file of export.py (needs ai-edge-litert).")
    flags.DEFINE_string("output_dir", None, "Folder of the PNGs (created).")
    flags.DEFINE_enum("colormap", "pascal", list(visualization.COLORMAP_NAMES),
                      "Colormap of the predictions (the dataset's).")
    flags.DEFINE_boolean("also_save_raw_predictions", False,
                         "Also write the label ids as PNGs.")
    flags.mark_flags_as_mutual_exclusive(["model_dir", "tflite_path"], required=True)
    flags.register_validator("tflite_path", lambda path: path is None or path.endswith(".tflite"),
                             "must name a .tflite file")
    flags.mark_flag_as_required("output_dir")


if __name__ == "__main__":
    define_flags()
    errors.run(main)
