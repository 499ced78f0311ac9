"""Tests of the SavedModel export and its predictor (deeplab_ssl.serving), and of predict.py."""
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_ssl import errors, inference, serving, visualization
from deeplab_ssl import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture(scope="module")
def model():
    return model_lib.build_deeplab("mobilenet_v2", 4, depth_multiplier=0.25)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export") / "1")
    serving.export_model(model, export_dir, include_probabilities=True)
    return export_dir


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


def _png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_exported_predictions_equal_the_in_process_model(model, loaded):
    signature = loaded.signatures["serving_default"]
    for shape in [(1, 23, 31, 3), (2, 40, 17, 3)]:
        images = _images(shape)
        outputs = signature(images=tf.constant(images))
        probabilities = inference.predict_probabilities(model, tf.constant(images, tf.float32))
        np.testing.assert_allclose(outputs[serving.PROBABILITIES_KEY], probabilities,
                                   atol=1e-5)
        np.testing.assert_array_equal(outputs[serving.PREDICTIONS_KEY],
                                      tf.argmax(probabilities, -1))
        assert outputs[serving.PREDICTIONS_KEY].dtype == tf.int32


def test_saved_model_predictor_gives_the_signature_outputs(model, exported, tmp_path):
    predictor = serving.SavedModelPredictor(exported)
    assert predictor.has_probabilities and predictor.traceable
    images = _images((2, 21, 18, 3), seed=6)
    probabilities = inference.KerasPredictor(model).predict(images)
    # Float pixels are rounded to the signature's uint8.
    np.testing.assert_allclose(predictor.predict(images.astype(np.float32) + 0.2),
                               probabilities, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict_labels(images),
                                  tf.argmax(probabilities, -1))

    labels_only = str(tmp_path / "labels_only")
    serving.export_model(model, labels_only)
    predictor = serving.SavedModelPredictor(labels_only)
    assert not predictor.has_probabilities
    assert predictor.predict_labels(images).shape == (2, 21, 18)
    with pytest.raises(errors.UserError, match="labels_only gives labels only.*"
                                               "--include_probabilities"):
        predictor.predict(images)
    with pytest.raises(errors.UserError, match="no SavedModel in .*missing"):
        serving.SavedModelPredictor(str(tmp_path / "missing"))


def test_encoded_signature_equals_the_image_signature(loaded):
    image = _images((19, 26, 3), seed=1)
    from_bytes = loaded.signatures["serving_encoded"](image_bytes=tf.constant([_png_bytes(image)]))
    from_pixels = loaded.signatures["serving_default"](images=tf.constant(image[np.newaxis]))
    np.testing.assert_array_equal(from_bytes[serving.PREDICTIONS_KEY],
                                  from_pixels[serving.PREDICTIONS_KEY])


def test_bad_inputs_name_the_problem(loaded):
    signature = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images \[20,30,3\] is not compatible with expected shape "
                             r"\[\?,\?,\?,3\]"):
        signature(images=tf.zeros([20, 30, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images \[1,8,8,4\]"):
        signature(images=tf.zeros([1, 8, 8, 4], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        signature(images=tf.zeros([1, 8, 8, 3], tf.float32))


def test_encoded_signature_refuses_batches(loaded):
    png = _png_bytes(_images((9, 9, 3)))
    for count in (2, 0):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"serving_encoded takes one image.*\[{count}\] \[strings\]"):
            loaded.signatures["serving_encoded"](image_bytes=tf.constant([png] * count, tf.string))


def test_crop_size_export_pads_small_and_fits_large_images(tmp_path):
    # A small convolutional model keeps the multi-scale, flipped export fast.
    images = keras.Input((None, None, 3))
    model = keras.Model(images, keras.layers.Conv2D(4, 3, padding="same")(images))
    export_dir = str(tmp_path / "cropped")
    pad_value = (127.5, 127.5, 127.5)
    serving.export_model(model, export_dir, crop_size=(33, 33), pad_value=pad_value,
                         eval_scales=[0.75, 1.0], add_flipped_images=True)
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    small = _images((1, 20, 25, 3), seed=2)
    padded = tf.image.pad_to_bounding_box(tf.constant(small, tf.float32) - 127.5, 0, 0, 33,
                                          33) + 127.5
    expected = inference.predict_labels(model, padded, [0.75, 1.0], True)[:, :20, :25]
    outputs = signature(images=tf.constant(small))
    np.testing.assert_array_equal(outputs[serving.PREDICTIONS_KEY], expected)
    assert serving.PROBABILITIES_KEY not in outputs
    large = _images((1, 50, 66, 3), seed=3)  # resized to 25x33 inside, labels back at 50x66
    assert signature(images=tf.constant(large))[serving.PREDICTIONS_KEY].shape == (1, 50, 66)


def _run(args, expect_ok=True):
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, check=False)
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    return result.stdout if expect_ok else result.stderr


def test_saved_model_cli_show_and_run(exported, loaded, tmp_path):
    shown = _run([SAVED_MODEL_CLI, "show", "--dir", exported, "--all"])
    assert "signature_def['serving_default']" in shown
    assert "signature_def['serving_encoded']" in shown
    assert "outputs['SemanticPredictions'] tensor_info:" in shown
    assert "dtype: DT_UINT8" in shown and "dtype: DT_INT32" in shown
    images_info = shown[shown.index("inputs['images']"):]
    assert images_info.split("\n")[2].strip() == "shape: (-1, -1, -1, 3)"

    images = _images((1, 21, 18, 3), seed=4)
    np.save(tmp_path / "images.npy", images)
    _run([SAVED_MODEL_CLI, "run", "--dir", exported, "--tag_set", "serve",
          "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
          "--outdir", str(tmp_path / "out")])
    from_cli = np.load(tmp_path / "out" / "SemanticPredictions.npy")
    in_process = loaded.signatures["serving_default"](
        images=tf.constant(images))[serving.PREDICTIONS_KEY]
    np.testing.assert_array_equal(from_cli, in_process)


def test_predict_files_writes_colored_pngs(exported, tmp_path):
    image = _images((15, 22, 3), seed=5)
    path = tmp_path / "street.png"
    path.write_bytes(_png_bytes(image))
    colormap = visualization.get_colormap("demo")
    predictor = serving.SavedModelPredictor(exported)
    written = visualization.predict_files(predictor, [str(path)], str(tmp_path / "out"),
                                          colormap, also_save_raw_predictions=True)
    assert written == [str(tmp_path / "out" / "street_prediction.png")]
    raw = np.array(Image.open(tmp_path / "out" / "street_raw.png"))
    colored = np.array(Image.open(written[0]))
    np.testing.assert_array_equal(colored, colormap[raw])
    assert Image.open(tmp_path / "out" / "street_overlay.png").size == (22, 15)

    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        visualization.predict_files(predictor, [str(tmp_path / "broken.png")],
                                    str(tmp_path / "out"), colormap)
    with pytest.raises(errors.UserError, match="missing.jpg"):
        visualization.predict_files(predictor, [str(tmp_path / "missing.jpg")],
                                    str(tmp_path / "out"), colormap)


def test_predict_py_and_its_former_module_name(exported, tmp_path):
    path = tmp_path / "street.png"
    path.write_bytes(_png_bytes(_images((15, 22, 3), seed=7)))
    stdout = _run([sys.executable, "predict.py", f"--saved_model_dir={exported}",
                   f"--output_dir={tmp_path / 'out'}", "--colormap=demo", str(path)])
    assert stdout.split() == [str(tmp_path / "out" / "street_prediction.png")]
    # `python -m deeplab_ssl.predict` and --model_dir, as older commands say; a user's error
    # in one line.
    stderr = _run([sys.executable, "-m", "deeplab_ssl.predict", f"--model_dir={exported}",
                   f"--output_dir={tmp_path / 'out'}", str(tmp_path / "missing.jpg")],
                  expect_ok=False)
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"error: no image file {tmp_path / 'missing.jpg'}"
