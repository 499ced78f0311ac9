"""SavedModel export for serving (Keras 3 `keras.export.ExportArchive`).

The exported SavedModel has two signatures:

* `serving_default`: `images` uint8 [B, H, W, 3] (any B, H, W) ->
  `SemanticPredictions` int32 [B, H, W] (and `SemanticProbabilities` float32 [B, H, W, C] if
  exported with `include_probabilities`). Another shape fails naming `images`.
* `serving_encoded`: `image_bytes` string [1], one encoded JPEG or PNG (GIF, BMP also decode) ->
  the same outputs with B = 1. The signature says [None] so that the graph keeps its check: more
  or fewer strings fail, saying so, instead of dropping all but the first.

Preprocessing happens inside: the uint8 pixels go to the model as float32 [0, 255] (the model
normalizes them for its backbone). With a `crop_size`, images larger than it are resized down to
fit (keeping the aspect ratio), padded with `pad_value` up to the crop size, and the probabilities
of the valid region are resized back to the input size (`fit_to_crop`, `restore_size`, which the
TFLite engine of deeplab_ssl/tflite.py uses too); without one, the model runs at the input's own
size. Inference is `inference.predict_probabilities`, the one eval.py uses.

`SavedModelPredictor` runs such a SavedModel as an `inference.Predictor` (eval.py
--saved_model_dir, predict.py).
"""
import keras
import tensorflow as tf

from deeplab_ssl import errors, inference

PREDICTIONS_KEY = "SemanticPredictions"
PROBABILITIES_KEY = "SemanticProbabilities"


def _checked_images(images):
    """float32 [B, H, W, 3] from uint8 `images`, or an error naming `images`.

    The signatures declare `images` uint8 [B, H, W, 3], but neither TensorFlow Serving nor a
    loaded signature checks the shape of what clients send: without this check a bad shape
    fails deep inside the model, naming none of the inputs.
    """
    return tf.cast(tf.ensure_shape(images, [None, None, None, 3]), tf.float32)


def fit_to_crop(images, crop_size, pad_value):
    """Fits images into the crop the model runs at, as deeplab's export does.

    Images larger than `crop_size` are resized down (bilinear) to fit, keeping their aspect
    ratio; then all are padded at the bottom and right with `pad_value` up to `crop_size`.

    Args:
        images: float32 [B, H, W, 3] pixel values in [0, 255].
        crop_size: (height, width) ints.
        pad_value: 3 floats, the pixel padded images are filled with.

    Returns:
        (float32 [B, crop_height, crop_width, 3] padded images, int32 [2] the size of the
        fitted image inside them).
    """
    size = tf.shape(images)[1:3]
    crop = tf.constant(crop_size, tf.int32)
    factor = tf.minimum(1.0, tf.reduce_min(tf.cast(crop, tf.float32) /
                                           tf.cast(size, tf.float32)))
    fitted_size = tf.minimum(
        crop, tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * factor), tf.int32))
    fitted = tf.image.resize(images, fitted_size, method="bilinear")
    offset = tf.constant(pad_value, tf.float32)
    padded = tf.image.pad_to_bounding_box(
        fitted - offset, 0, 0, crop_size[0], crop_size[1]) + offset
    return padded, fitted_size


def restore_size(probabilities, fitted_size, size):
    """The inverse of `fit_to_crop` on the model's output.

    Args:
        probabilities: float32 [B, crop_height, crop_width, C].
        fitted_size: int32 [2], the second result of `fit_to_crop`.
        size: int32 [2], the (height, width) of the images given to `fit_to_crop`.

    Returns:
        float32 [B, height, width, C]: the fitted region, resized (bilinear) back to `size`.
    """
    return tf.image.resize(probabilities[:, :fitted_size[0], :fitted_size[1]], size,
                           method="bilinear")


def predictions(probabilities, include_probabilities=False):
    """The outputs of an export: {SemanticPredictions: int32 [B, H, W]} and, with
    `include_probabilities`, {SemanticProbabilities: the float32 [B, H, W, C] given}.

    The argmax is int32: TFLite has no int64 ArgMax, and the SavedModel says the same."""
    outputs = {PREDICTIONS_KEY: tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
    if include_probabilities:
        outputs[PROBABILITIES_KEY] = probabilities
    return outputs


def labels_only_error(path):
    """The UserError of asking an export without probabilities (at `path`) for them."""
    return errors.UserError(f"{path} gives labels only: export it with --include_probabilities "
                            "for its probabilities")


def make_predict_fn(model, crop_size=None, pad_value=(127.5, 127.5, 127.5), eval_scales=(1.0,),
                    add_flipped_images=False, include_probabilities=False):
    """The serving computation: uint8 images [B, H, W, 3] -> dict of predictions.

    Args:
        model: keras.Model, float32 images [B, h, w, 3] in [0, 255] -> logits [B, h, w, C].
        crop_size: optional (height, width) the model runs at (deeplab's export `crop_size`),
            see `fit_to_crop`; None runs at the input size.
        pad_value: 3 floats, the pixel padded images are filled with (the backbone's mean
            pixel, which its preprocessing maps to 0, as deeplab pads).
        eval_scales, add_flipped_images: as `inference.predict_probabilities`.
        include_probabilities: bool, also return `SemanticProbabilities`.

    Returns:
        a function of `images` returning {SemanticPredictions: int32 [B, H, W]} (and
        SemanticProbabilities: float32 [B, H, W, C]). Images of the wrong rank or channel
        count fail with an InvalidArgumentError naming `images`.
    """
    def predict(images):
        images = _checked_images(images)
        if crop_size is None:
            probabilities = inference.predict_probabilities(
                model, images, eval_scales, add_flipped_images)
        else:
            padded, fitted_size = fit_to_crop(images, crop_size, pad_value)
            probabilities = restore_size(
                inference.predict_probabilities(model, padded, eval_scales, add_flipped_images),
                fitted_size, tf.shape(images)[1:3])
        return predictions(probabilities, include_probabilities)

    return predict


def export_model(model, export_dir, crop_size=None, pad_value=(127.5, 127.5, 127.5),
                 eval_scales=(1.0,), add_flipped_images=False, include_probabilities=False):
    """Writes a SavedModel with the `serving_default` and `serving_encoded` signatures.

    Arguments as `make_predict_fn`; `export_dir` is the SavedModel folder to write.
    """
    predict = make_predict_fn(model, crop_size, pad_value, eval_scales, add_flipped_images,
                              include_probabilities)

    def serving_default(images):
        return predict(images)

    def serving_encoded(image_bytes):
        # Outputs of one image: a batch would lose all but its first image without the check.
        count = tf.size(image_bytes)
        check = tf.debugging.Assert(tf.equal(count, 1), [
            "serving_encoded takes one image: image_bytes must be string [1] (send batches to "
            "serving_default as uint8 [B, H, W, 3]); got", count, "strings"])
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
        image = tf.io.decode_image(image_bytes[0], channels=3, dtype=tf.uint8,
                                   expand_animations=False)
        return predict(image[tf.newaxis])

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default", fn=serving_default,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint(
        name="serving_encoded", fn=serving_encoded,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(export_dir, verbose=False)


class SavedModelPredictor(inference.Predictor):
    """A SavedModel of `export_model` as an `inference.Predictor`, through `serving_default`.

    The export fixed the inference (crop size, scales, flips); `predict` gives its
    `SemanticProbabilities`, `predict_labels` its `SemanticPredictions`.

    Attributes:
        export_dir: str, the SavedModel folder.
        has_probabilities: bool, whether it was exported with `include_probabilities`.
    """

    def __init__(self, export_dir):
        """Loads `export_dir`.

        Raises:
            UserError: naming the folder, where it holds no SavedModel with `serving_default`.
        """
        if not tf.saved_model.contains_saved_model(export_dir):
            raise errors.UserError(f"no SavedModel in {export_dir} (export.py writes one)")
        self.export_dir = export_dir
        self._loaded = tf.saved_model.load(export_dir)  # Owns the signature's variables.
        if "serving_default" not in self._loaded.signatures:
            raise errors.UserError(f"{export_dir} is not a SavedModel of export.py (no "
                                   "serving_default signature)")
        self._signature = self._loaded.signatures["serving_default"]
        self.has_probabilities = PROBABILITIES_KEY in self._signature.structured_outputs

    def _outputs(self, images):
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8:  # The signature takes uint8 pixels.
            images = tf.saturate_cast(tf.round(images), tf.uint8)
        return self._signature(images=images)

    def predict(self, images):
        if not self.has_probabilities:
            raise labels_only_error(self.export_dir)
        return self._outputs(images)[PROBABILITIES_KEY]

    def predict_labels(self, images):
        return self._outputs(images)[PREDICTIONS_KEY]
