"""TFLite export (float32, float16 or int8) and `TFLitePredictor`, the exported file in LiteRT.

The exported model runs at a fixed size, the export's `crop_size` (TFLite plans its memory for
static shapes, and phone delegates need them):

* signature `serving_default`: `images` uint8 [1, crop_height, crop_width, 3] ->
  `SemanticPredictions` int32 [1, crop_height, crop_width] (an int32 ArgMax: TFLite has no
  int64 one), and `SemanticProbabilities` float32 [1, crop_height, crop_width, C] when exported
  with `include_probabilities`.

Inside, the model is the SavedModel's (`inference.predict_probabilities` on the pixels as float32
[0, 255], the backbone's normalization included). Images of other sizes are fitted to the crop
on the host by `TFLitePredictor`, with the SavedModel's own `serving.fit_to_crop` and
`serving.restore_size`: in the graph they need a dynamic input size, and with it dynamic
tensors, which made the model 1.5-1.7x slower on CPU (docs/serving.md) and which delegates
refuse. The file carries the pixel to pad with (the backbone's mean pixel) as metadata named
`deeplab_ssl`.

Quantization (`quantize`): "none" (float32); "float16" (weights stored as float16, half the
size; CPUs compute in float32); "int8" (full-integer: weights and activations int8, calibrated
on representative images; the uint8 input and int32 labels stay as they are, probabilities come
back dequantized to float32).

`TFLitePredictor` is the TFLite engine of the `inference.Predictor` interface (eval.py
--tflite_path, predict.py); it needs LiteRT (`pip install ai-edge-litert`, the `[tflite]` extra).
"""
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from deeplab_ssl import errors, inference, serving

QUANTIZATIONS = ("none", "float16", "int8")
SIGNATURE_KEY = "serving_default"
METADATA_NAME = "deeplab_ssl"


def model_input(images, crop_size, pad_value):
    """uint8 images of any size as the model's input: fitted, padded and rounded.

    Args:
        images: [1, H, W, 3] pixel values in [0, 255] (uint8 or float).
        crop_size: (height, width), the model's size.
        pad_value: 3 floats, the pixel to pad with (rounded, as the input is uint8).

    Returns:
        (uint8 numpy [1, crop_height, crop_width, 3], int32 [2] the size of the fitted image
        inside it; see `serving.fit_to_crop`).
    """
    padded, fitted_size = serving.fit_to_crop(tf.cast(images, tf.float32), crop_size, pad_value)
    return tf.cast(tf.clip_by_value(tf.round(padded), 0, 255), tf.uint8).numpy(), fitted_size


def representative_images(dataset, num_images, crop_size, pad_value):
    """The calibration images of int8 quantization: the first `num_images` of `dataset`.

    Args:
        dataset: evaluation batches of `input_pipeline.get_dataset` (batch size 1).
        num_images: int, how many to take.
        crop_size, pad_value: as `model_input`.

    Returns:
        list of uint8 numpy [1, crop_height, crop_width, 3].

    Raises:
        ValueError: the dataset has no image.
    """
    images = [model_input(batch["image"], crop_size, pad_value)[0]
              for batch in dataset.take(num_images)]
    if not images:
        raise errors.UserError("no representative image: the --representative_split is empty")
    return images


def _with_metadata(content, metadata):
    """The flatbuffer `content` with `metadata` (a dict) added as JSON under METADATA_NAME."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(content):
    """The METADATA_NAME dict of a .tflite file's bytes, or None where it has none."""
    model = schema_fb.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode("utf-8") == METADATA_NAME:
            data = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy()
            return json.loads(data.tobytes().decode("utf-8"))
    return None


def export_tflite(model, path, crop_size, pad_value=(127.5, 127.5, 127.5), eval_scales=(1.0,),
                  add_flipped_images=False, include_probabilities=False, quantize="none",
                  representative=None):
    """Converts `model` with TensorFlow's TFLite converter and writes it to `path`.

    The model goes through a SavedModel written by Keras' ExportArchive (in a temporary folder),
    with one endpoint at the fixed input size. The file is written to a temporary name, then
    renamed.

    Args:
        model: keras.Model, float32 images [B, h, w, 3] in [0, 255] -> logits [B, h, w, C].
        path: str, the .tflite file to write.
        crop_size: (height, width), the fixed size of the input.
        pad_value: 3 floats, the pixel `TFLitePredictor` pads with (stored in the file).
        eval_scales, add_flipped_images: as `inference.predict_probabilities`.
        include_probabilities: bool, also output `SemanticProbabilities`.
        quantize: one of QUANTIZATIONS.
        representative: for "int8", a sequence of uint8 [1, crop_height, crop_width, 3] images
            (`representative_images`).

    Raises:
        ValueError: an unknown `quantize` (naming --quantize), or "int8" without images.
    """
    if quantize not in QUANTIZATIONS:
        raise errors.UserError(f"--quantize={quantize} is not one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and not representative:
        raise errors.UserError(
            "--quantize=int8 needs representative images (--representative_split)")

    def predict(images):
        probabilities = inference.predict_probabilities(
            model, tf.cast(images, tf.float32), eval_scales, add_flipped_images)
        return serving.predictions(probabilities, include_probabilities)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE_KEY, fn=predict, input_signature=[
        tf.TensorSpec([1, crop_size[0], crop_size[1], 3], tf.uint8, name="images")])
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image] for image in representative)
            # Every op int8, or the conversion fails: no silent float fallback.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        content = converter.convert()
    content = _with_metadata(content, {"pad_value": [float(v) for v in pad_value]})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as f:
        f.write(content)
    os.replace(temporary, path)


class TFLitePredictor(inference.Predictor):
    """A .tflite file of `export_tflite` in the LiteRT interpreter, as an `inference.Predictor`.

    The interpreter runs on the host (numpy), eagerly: `traceable` is False.

    Attributes:
        path: str, the file.
        crop_size: (height, width), the model's input size.
        pad_value: 3 floats, the pixel images are padded with.
        has_probabilities: bool, whether it outputs `SemanticProbabilities`.
    """
    traceable = False

    def __init__(self, path, num_threads=None):
        """Loads `path` with `num_threads` threads (None: all the CPUs).

        Raises:
            ImportError: saying how to install LiteRT.
            UserError: naming the file, where there is none or it is not an export of
                `export_tflite`.
        """
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise ImportError("running .tflite files needs LiteRT: pip install ai-edge-litert "
                              "(or pip install 'deeplab-ssl[tflite]')") from error
        if not os.path.isfile(path):
            raise errors.UserError(f"no .tflite file {path}")
        with open(path, "rb") as f:
            content = f.read()
        metadata = read_metadata(content)
        interpreter = Interpreter(model_content=content,
                                  num_threads=num_threads or os.cpu_count())
        signatures = interpreter.get_signature_list()
        if metadata is None or SIGNATURE_KEY not in signatures:
            raise errors.UserError(f"{path} is not a TFLite model of export.py (no "
                                   f"{METADATA_NAME!r} metadata or {SIGNATURE_KEY!r} signature)")
        self.path = path
        self.pad_value = metadata["pad_value"]
        self.has_probabilities = (serving.PROBABILITIES_KEY in
                                  signatures[SIGNATURE_KEY]["outputs"])
        self._runner = interpreter.get_signature_runner(SIGNATURE_KEY)
        self.crop_size = tuple(int(v) for v in self._runner.get_input_details()["images"][
            "shape"][1:3])

    def run(self, images):
        """Runs the model on images of exactly its size.

        Args:
            images: uint8 numpy [1, crop_height, crop_width, 3].

        Returns:
            dict of numpy outputs: SemanticPredictions int32 [1, crop_height, crop_width] (and
            SemanticProbabilities float32 [1, crop_height, crop_width, C]).

        Raises:
            ValueError: naming the file, where `images` are not uint8 [1, crop_height,
                crop_width, 3].
        """
        images = np.asarray(images)
        expected = (1, *self.crop_size, 3)
        if images.dtype != np.uint8 or images.shape != expected:
            raise errors.UserError(
                f"{self.path} takes images uint8 {list(expected)} (the --crop_size it was "
                f"exported with); got {images.dtype} {list(images.shape)}: predict fits "
                "other sizes")
        return self._runner(images=images)

    def predict(self, images):
        """Class probabilities of images of any size, as the SavedModel's `crop_size` gives.

        Images are fitted to the model's size (`model_input`); the probabilities of the fitted
        region are resized back to the image's size (`serving.restore_size`).

        Args:
            images: uint8 or float32 [1, H, W, 3], pixel values in [0, 255].

        Returns:
            float32 tf.Tensor [1, H, W, C].

        Raises:
            UserError: naming the file, for a model exported without probabilities.
        """
        if not self.has_probabilities:
            raise serving.labels_only_error(self.path)
        padded, fitted_size = model_input(images, self.crop_size, self.pad_value)
        return serving.restore_size(tf.constant(self.run(padded)[serving.PROBABILITIES_KEY]),
                                    fitted_size, tf.shape(images)[1:3])

    def predict_labels(self, images):
        """int32 tf.Tensor [1, H, W], the labels of images of any size (as `predict`).

        Without probabilities, only images that need no resizing (no larger than the model:
        cropped labels are exact) can be predicted.

        Raises:
            UserError: naming the file, for an image larger than a model without
                probabilities.
        """
        if self.has_probabilities:
            return super().predict_labels(images)
        size = tf.shape(images)[1:3]
        padded, fitted_size = model_input(images, self.crop_size, self.pad_value)
        if not np.array_equal(fitted_size, size):
            raise errors.UserError(
                f"{self.path} runs at {list(self.crop_size)} and has no probabilities to resize "
                f"back to an image of {size.numpy().tolist()}: export it with "
                "--include_probabilities, or give images no larger than that")
        labels = self.run(padded)[serving.PREDICTIONS_KEY]
        return tf.constant(labels[:, :int(size[0]), :int(size[1])])
