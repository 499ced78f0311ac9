"""SavedModel export for serving (Keras 3 `keras.export.ExportArchive`).

The exported SavedModel has two signatures:

* `serving_default`: `images` uint8 [B, H, W, 3] (any B, H, W) ->
  `SemanticPredictions` int32 [B, H, W] (and `SemanticProbabilities` float32 [B, H, W, C] if
  exported with `include_probabilities`).
* `serving_encoded`: `image_bytes` string [1], one encoded JPEG or PNG (GIF, BMP also decode) ->
  the same outputs with B = 1.

Preprocessing happens inside: the uint8 pixels go to the model as float32 [0, 255] (the model
normalizes them for its backbone). With a `crop_size`, images larger than it are resized down to
fit (keeping the aspect ratio), padded with `pad_value` up to the crop size, and the probabilities
of the valid region are resized back to the input size; without one, the model runs at the
input's own size. Inference is `inference.predict_probabilities`, the one eval.py uses.
"""
import keras
import tensorflow as tf

from deeplab_ssl import inference

PREDICTIONS_KEY = "SemanticPredictions"
PROBABILITIES_KEY = "SemanticProbabilities"


def _checked_images(images):
    """float32 [B, H, W, 3] from uint8 `images` of any shape, or an error naming `images`."""
    shape = tf.shape(images)
    valid = tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(shape[-1], 3))
    check = tf.debugging.Assert(
        valid, ["images must be uint8 [batch, height, width, 3]; got shape", shape], summarize=4)
    # The cond, gated on the assertion, keeps TensorFlow from running shape-dependent ops on
    # a bad input before the assertion reports it; its false branch is never taken.
    with tf.control_dependencies([check]):
        valid = tf.identity(valid)
    images = tf.cond(valid, lambda: tf.cast(images, tf.float32),
                     lambda: tf.zeros([0, 0, 0, 3], tf.float32))
    return tf.ensure_shape(images, [None, None, None, 3])


def make_predict_fn(model, crop_size=None, pad_value=(127.5, 127.5, 127.5), eval_scales=(1.0,),
                    add_flipped_images=False, include_probabilities=False):
    """The serving computation: uint8 images [B, H, W, 3] -> dict of predictions.

    Args:
        model: keras.Model, float32 images [B, h, w, 3] in [0, 255] -> logits [B, h, w, C].
        crop_size: optional (height, width) the model runs at (deeplab's export `crop_size`);
            None runs at the input size.
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
        size = tf.shape(images)[1:3]
        if crop_size is None:
            probabilities = inference.predict_probabilities(
                model, images, eval_scales, add_flipped_images)
        else:
            crop = tf.constant(crop_size, tf.int32)
            factor = tf.minimum(1.0, tf.reduce_min(tf.cast(crop, tf.float32) /
                                                   tf.cast(size, tf.float32)))
            fitted_size = tf.minimum(
                crop, tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * factor), tf.int32))
            fitted = tf.image.resize(images, fitted_size, method="bilinear")
            offset = tf.constant(pad_value, tf.float32)
            padded = tf.image.pad_to_bounding_box(
                fitted - offset, 0, 0, crop_size[0], crop_size[1]) + offset
            probabilities = inference.predict_probabilities(
                model, padded, eval_scales, add_flipped_images)
            probabilities = tf.image.resize(
                probabilities[:, :fitted_size[0], :fitted_size[1]], size, method="bilinear")
        outputs = {PREDICTIONS_KEY: tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
        if include_probabilities:
            outputs[PROBABILITIES_KEY] = probabilities
        return outputs

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
        image = tf.io.decode_image(image_bytes[0], channels=3, dtype=tf.uint8,
                                   expand_animations=False)
        return predict(image[tf.newaxis])

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default", fn=serving_default,
        input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    archive.add_endpoint(
        name="serving_encoded", fn=serving_encoded,
        input_signature=[tf.TensorSpec([1], tf.string, name="image_bytes")])
    archive.write_out(export_dir, verbose=False)
