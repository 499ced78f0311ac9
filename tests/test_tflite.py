"""Tests of the TFLite export (deeplab_ssl.tflite, export.py --export_format=tflite), run by the
LiteRT interpreter (`tflite.TFLitePredictor`), of eval.py / predict.py on .tflite files, and of
the three predictor engines side by side."""
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, the [tflite] extra) is "
                                             "not installed")

from deeplab_ssl import errors, evaluation, inference, serving, tflite  # noqa: E402
from deeplab_ssl import model as model_lib  # noqa: E402
from deeplab_ssl.datasets import input_pipeline  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = (48, 64)  # The demo images' size here.
PAD_VALUE = (127.5, 127.5, 127.5)  # mobilenet_v2's mean pixel.


def _run(script, *args, expect_ok=True):
    result = subprocess.run([sys.executable, *script, *args], capture_output=True, text=True,
                            cwd=REPO, check=False)
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small demo set (48x64 images), a model trained a few steps on it and its checkpoint.

    Trained, not random: a randomly initialized DeepLab's logits vanish (~1e-14) through its
    batch norms, so every pixel would be a tie and no agreement could be checked.
    """
    root = tmp_path_factory.mktemp("tflite")
    _run(["-m", "deeplab_ssl.datasets.build_demo_data"], f"--output_dir={root / 'data'}",
         "--num_train=8", "--num_val=3", f"--height={CROP[0]}", f"--width={CROP[1]}")
    keras.utils.set_random_seed(0)
    model = model_lib.build_deeplab("mobilenet_v2", 10, depth_multiplier=0.25,
                                    batch_norm_decay=0.9)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    model.fit(input_pipeline.get_dataset("demo", str(root / "data"), "train", 4, crop_size=CROP,
                                         is_training=True, seed=0),
              steps_per_epoch=60, epochs=1, shuffle=False, verbose=0)  # The records shuffle.
    # A checkpoint as train.py's: the model's variables (fit's optimizer left out).
    saved = model_lib.build_deeplab("mobilenet_v2", 10, depth_multiplier=0.25)
    saved.set_weights(model.get_weights())
    tf.train.CheckpointManager(tf.train.Checkpoint(model=saved), str(root / "train"),
                               max_to_keep=1, checkpoint_name="model.ckpt").save(60)
    return root, model


def _images(root, split):
    """uint8 [1, 48, 64, 3] images of a split of the demo set."""
    return [tf.cast(batch["image"], tf.uint8).numpy()
            for batch in input_pipeline.get_dataset("demo", str(root / "data"), split, 1)]


@pytest.fixture(scope="module")
def exported(workdir):
    """{quantize: .tflite path} of the trained model, with probabilities."""
    root, model = workdir
    representative = tflite.representative_images(
        input_pipeline.get_dataset("demo", str(root / "data"), "train", 1), 8, CROP, PAD_VALUE)
    paths = {}
    for quantize in tflite.QUANTIZATIONS:
        paths[quantize] = str(root / f"model_{quantize}.tflite")
        tflite.export_tflite(model, paths[quantize], CROP, PAD_VALUE,
                             include_probabilities=True, quantize=quantize,
                             representative=representative)
    return paths


@pytest.mark.parametrize("quantize", ["none", "float16"])
def test_float_exports_agree_with_the_model(workdir, exported, quantize):
    root, model = workdir
    predictor = tflite.TFLitePredictor(exported[quantize])
    assert predictor.crop_size == CROP and predictor.pad_value == list(PAD_VALUE)
    for images in _images(root, "val"):
        outputs = predictor.run(images)
        probabilities = inference.predict_probabilities(model, tf.constant(images, tf.float32))
        labels = outputs[serving.PREDICTIONS_KEY]
        assert labels.dtype == np.int32 and labels.shape == (1, *CROP)
        assert np.mean(labels == tf.argmax(probabilities, -1).numpy()) >= 0.995
        np.testing.assert_allclose(outputs[serving.PROBABILITIES_KEY], probabilities,
                                   atol=1e-4 if quantize == "none" else 1e-2)


def test_int8_changes_only_near_ties(workdir, exported):
    # int8 rounds every activation (the softmax to steps of 1/256): a pixel may change class
    # only where the float model's top probabilities are that close. 0.05 is ~13 steps. This
    # model, trained 60 steps on 8 images, has many such pixels: 95.4% agreed in one CI run.
    root, model = workdir
    predictor = tflite.TFLitePredictor(exported["int8"])
    for images in _images(root, "val"):
        labels = predictor.run(images)[serving.PREDICTIONS_KEY]
        probabilities = inference.predict_probabilities(
            model, tf.constant(images, tf.float32)).numpy()
        assert np.mean(labels == probabilities.argmax(-1)) >= 0.9
        chosen = np.take_along_axis(probabilities, labels[..., np.newaxis], -1)[..., 0]
        assert np.max(probabilities.max(-1) - chosen) < 0.05
    assert os.path.getsize(exported["int8"]) < 0.4 * os.path.getsize(exported["none"])
    assert os.path.getsize(exported["float16"]) < 0.6 * os.path.getsize(exported["none"])


def test_other_sizes_are_fitted_as_the_saved_model_does(workdir, exported):
    root, model = workdir
    predictor = tflite.TFLitePredictor(exported["none"])
    saved_model_predict = serving.make_predict_fn(model, CROP, PAD_VALUE)
    rng = np.random.default_rng(0)
    image = _images(root, "val")[0]
    for images in [image[:, 5:35, 3:43],  # padded
                   tf.image.resize(image, [96, 100]).numpy().round().astype(np.uint8)]:  # fitted
        labels = predictor.predict_labels(images).numpy()
        expected = saved_model_predict(tf.constant(images))[serving.PREDICTIONS_KEY]
        assert labels.shape == expected.shape == images.shape[:3]
        # The TFLite input is uint8: its pad is 128, not 127.5, and resized pixels are rounded.
        assert np.mean(labels == expected) >= 0.99
    with pytest.raises(ValueError, match=r"takes images uint8 \[1, 48, 64, 3\].*got uint8 "
                                         r"\[1, 30, 40, 3\]"):
        predictor.run(rng.integers(0, 256, (1, 30, 40, 3)).astype(np.uint8))


def test_labels_only_model(workdir, tmp_path):
    root, model = workdir
    path = str(tmp_path / "labels.tflite")
    tflite.export_tflite(model, path, CROP, PAD_VALUE)
    predictor = tflite.TFLitePredictor(path)
    assert not predictor.has_probabilities
    image = _images(root, "val")[0]
    small = image[:, :30, :40]
    padded = np.full_like(image, 128)
    padded[:, :30, :40] = small
    np.testing.assert_array_equal(predictor.predict_labels(small),
                                  predictor.run(padded)[serving.PREDICTIONS_KEY][:, :30, :40])
    with pytest.raises(errors.UserError, match="--include_probabilities"):
        predictor.predict_labels(np.zeros((1, 96, 64, 3), np.uint8))
    with pytest.raises(errors.UserError, match="labels.tflite gives labels only"):
        predictor.predict(small)


def test_bad_exports_and_files(workdir, tmp_path):
    _, model = workdir
    with pytest.raises(ValueError, match="--quantize=int4 is not one of none, float16, int8"):
        tflite.export_tflite(model, str(tmp_path / "m.tflite"), CROP, quantize="int4")
    with pytest.raises(ValueError, match="--quantize=int8 needs representative images"):
        tflite.export_tflite(model, str(tmp_path / "m.tflite"), CROP, quantize="int8")
    with pytest.raises(errors.UserError, match="missing.tflite"):
        tflite.TFLitePredictor(str(tmp_path / "missing.tflite"))
    plain = tf.function(lambda x: {"y": x + 1.0},
                        input_signature=[tf.TensorSpec([1, 2], tf.float32)])
    (tmp_path / "plain.tflite").write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [plain.get_concrete_function()]).convert())
    with pytest.raises(ValueError, match="plain.tflite is not a TFLite model of export.py"):
        tflite.TFLitePredictor(str(tmp_path / "plain.tflite"))


def test_the_three_engines_give_the_same_probabilities_and_metrics(tmp_path):
    # A two-class pointwise model (no batch norm: distinct logits, untrained), its SavedModel
    # and its float32 TFLite file at the images' size: one loop, the same numbers.
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(8, 1, activation="tanh")(
        keras.layers.Rescaling(1 / 127.5, -1.0)(inputs))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(features))
    serving.export_model(model, str(tmp_path / "saved_model"), include_probabilities=True)
    tflite.export_tflite(model, str(tmp_path / "model.tflite"), CROP, PAD_VALUE,
                         include_probabilities=True)
    predictors = {"keras": inference.KerasPredictor(model),
                  "saved_model": serving.SavedModelPredictor(str(tmp_path / "saved_model")),
                  "tflite": tflite.TFLitePredictor(str(tmp_path / "model.tflite"))}
    images = tf.cast(tf.random.uniform([3, *CROP, 3], 0, 256, tf.int32, seed=2), tf.uint8)
    labels = tf.random.uniform([3, *CROP, 1], 0, 2, tf.int32, seed=3)
    labels = tf.where(tf.random.uniform(labels.shape, seed=4) < 0.1, 255, labels)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": tf.cast(images, tf.float32), "label": labels}).batch(1)
    expected = predictors["keras"].predict(images[:1])
    metrics = {}
    for name, predictor in predictors.items():
        np.testing.assert_allclose(predictor.predict(images[:1]), expected, atol=1e-4)
        statistics = evaluation.evaluate(predictor, dataset, 2, 255)
        metrics[name] = evaluation.foreground_metrics(statistics)
        metrics[name]["miou"] = evaluation.segmentation_metrics(
            statistics["confusion"], ["background", "foreground"])["miou"]
    for name in ("saved_model", "tflite"):
        assert metrics[name] == pytest.approx(metrics["keras"], abs=1e-3), name


def test_export_eval_and_predict_from_the_command_line(workdir, tmp_path):
    root, _ = workdir
    flags = ["--dataset=demo", f"--dataset_dir={root / 'data'}", "--model_variant=mobilenet_v2",
             "--depth_multiplier=0.25", f"--checkpoint_dir={root / 'train'}"]
    path = tmp_path / "int8.tflite"
    _run(["export.py"], *flags, "--export_format=tflite", "--crop_size=48,64",
         "--quantize=int8", "--num_representative=4", f"--export_path={path}")
    assert tflite.TFLitePredictor(str(path)).crop_size == CROP

    result = _run(["eval.py"], "--dataset=demo", f"--dataset_dir={root / 'data'}",
                  f"--tflite_path={path}", "--eval_split=val")
    assert "mIoU" in result.stdout and "int8.tflite" in result.stdout
    metrics = json.loads((tmp_path / "int8.tflite.eval_val_ms1.json").read_text())
    assert metrics["tflite"] == str(path) and metrics["num_pixels"] > 0

    buffer = io.BytesIO()
    Image.fromarray(_images(root, "val")[0][0]).save(buffer, format="PNG")
    (tmp_path / "street.png").write_bytes(buffer.getvalue())
    result = _run(["predict.py"], f"--tflite_path={path}", f"--output_dir={tmp_path / 'out'}",
                  "--colormap=demo", str(tmp_path / "street.png"))
    assert result.stdout.split() == [str(tmp_path / "out" / "street_prediction.png")]
    assert Image.open(tmp_path / "out" / "street_prediction.png").size == (CROP[1], CROP[0])


def test_command_line_errors(workdir, tmp_path):
    root, _ = workdir
    flags = ["--dataset=demo", f"--dataset_dir={root / 'data'}", "--depth_multiplier=0.25",
             f"--checkpoint_dir={root / 'train'}", f"--export_path={tmp_path / 'm.tflite'}"]
    result = _run(["export.py"], *flags, "--export_format=tflite", expect_ok=False)
    assert "--export_format=tflite needs --crop_size" in result.stderr
    result = _run(["export.py"], *flags, "--export_format=tflite", "--crop_size=48,64",
                  "--quantize=int4", expect_ok=False)
    assert "--quantize" in result.stderr and "int8" in result.stderr
    result = _run(["export.py"], *flags, "--export_format=tflite", "--crop_size=48,64",
                  "--quantize=int8", "--representative_split=trian", expect_ok=False)
    assert "--representative_split=trian" in result.stderr
    result = _run(["eval.py"], "--dataset=demo", f"--dataset_dir={root / 'data'}",
                  f"--tflite_path={tmp_path / 'm.tflite'}", "--eval_scales=0.5",
                  expect_ok=False)
    assert "drop --eval_scales" in result.stderr
