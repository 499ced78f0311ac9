"""Inference: single-scale, multi-scale and flipped prediction, as deeplab's model.py, and the
predictor interface that eval.py and predict.py run.

One inference path, `predict_probabilities`, serves eval.py, vis.py and the exported SavedModel.
It follows deeplab's `model.predict_labels_multi_scale`: for each scale in `eval_scales` the
image is resized to `(size - 1) * scale + 1`, the model runs (and again on the left-right flipped
image if `add_flipped_images`), the logits are resized back to the image size (and flipped
back), softmax probabilities are taken, and the probabilities of all runs are averaged.

Models trained with the sigmoid losses (SSL, BCE) are one-vs-rest classifiers: for a single run
the argmax of the softmax equals the argmax of the sigmoid (both equal the argmax of the logits).
For several runs we average softmax probabilities, as deeplab does for every model; averaging
sigmoids instead can pick another class where runs disagree.

A `Predictor` maps images to class probabilities; it has three engines: `KerasPredictor` (a
model, through `predict_probabilities`), `serving.SavedModelPredictor` (a SavedModel of export.py)
and `tflite.TFLitePredictor` (a .tflite file of export.py, in LiteRT). `evaluation.evaluate` and
predict.py take any of them.
"""
import tensorflow as tf


def scale_dimension(dim, scale):
    """deeplab's `utils.scale_dimension`: int32 `(dim - 1) * scale + 1`, for tensors or ints."""
    return tf.cast((tf.cast(dim, tf.float32) - 1.0) * scale + 1.0, tf.int32)


def predict_probabilities(model, images, eval_scales=(1.0,), add_flipped_images=False):
    """Class probabilities averaged over scales (and flips), as deeplab's multi-scale inference.

    Args:
        model: a keras.Model mapping float32 images [B, h, w, 3] in [0, 255] to float32 logits
            [B, h, w, C] at its input size (`deeplab_ssl.model.build_deeplab`).
        images: float32 [B, H, W, 3], raw pixel values in [0, 255].
        eval_scales: sequence of floats, the image scales to run (1.0 = as is).
        add_flipped_images: bool, also run each scale on the left-right flipped images.

    Returns:
        float32 [B, H, W, C], mean softmax probabilities.
    """
    size = tf.shape(images)[1:3]
    probabilities = []
    for scale in eval_scales:
        scaled = images
        if scale != 1.0:
            scaled = tf.image.resize(images, scale_dimension(size, scale), method="bilinear")
        for flip in (False, True) if add_flipped_images else (False,):
            logits = model(tf.reverse(scaled, [2]) if flip else scaled, training=False)
            logits = tf.cast(logits, tf.float32)
            if flip:
                logits = tf.reverse(logits, [2])
            if scale != 1.0:
                logits = tf.image.resize(logits, size, method="bilinear")
            probabilities.append(tf.nn.softmax(logits))
    return tf.add_n(probabilities) / float(len(probabilities))


def predict_labels(model, images, eval_scales=(1.0,), add_flipped_images=False):
    """int32 [B, H, W]: argmax of `predict_probabilities` (same arguments)."""
    probabilities = predict_probabilities(model, images, eval_scales, add_flipped_images)
    return tf.argmax(probabilities, axis=-1, output_type=tf.int32)


class Predictor:
    """The predictor interface: images -> class probabilities (and labels).

    Attributes:
        has_probabilities: bool; False for an export without probabilities (export.py without
            --include_probabilities), which gives labels only: `predict` refuses.
        traceable: bool, whether `predict` and `predict_labels` are TensorFlow ops that a
            tf.function can trace; False for the TFLite interpreter, which runs eagerly.
    """
    has_probabilities = True
    traceable = True

    def predict(self, images):
        """Class probabilities.

        Args:
            images: uint8 or float32 [B, H, W, 3], RGB pixel values in [0, 255].

        Returns:
            float32 tf.Tensor [B, H, W, C].
        """
        raise NotImplementedError

    def predict_labels(self, images):
        """int32 tf.Tensor [B, H, W], the argmax of `predict` (same images)."""
        return tf.argmax(self.predict(images), axis=-1, output_type=tf.int32)


class KerasPredictor(Predictor):
    """A keras.Model as a `Predictor`: `predict_probabilities` at `eval_scales`, with flips.

    Attributes:
        model: the keras.Model, as for `predict_probabilities`.
        eval_scales, add_flipped_images: as `predict_probabilities`.
    """

    def __init__(self, model, eval_scales=(1.0,), add_flipped_images=False):
        self.model = model
        self.eval_scales = tuple(eval_scales)
        self.add_flipped_images = add_flipped_images

    def predict(self, images):
        return predict_probabilities(self.model, tf.cast(images, tf.float32), self.eval_scales,
                                     self.add_flipped_images)
