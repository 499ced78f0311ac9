"""Tests of deeplab_ssl.evaluation: confusion matrix, mIoU convention, inference, the one loop
over a predictor (replicas, two-class metrics, CRF)."""
import csv
import json
import math
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import checkpoints, crf, errors, evaluation, inference
from deeplab_ssl import model as model_lib


def _pointwise_model(num_classes=3):
    """A flip-equivariant model with the DeepLab contract: 1x1 convolutions only."""
    images = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(4, 1, activation="tanh")(
        keras.layers.Rescaling(1 / 127.5, -1.0)(images))
    return keras.Model(images, keras.layers.Conv2D(num_classes, 1)(features))


def _small_deeplab(num_classes=3, **kwargs):
    return model_lib.build_deeplab("mobilenet_v2", num_classes, depth_multiplier=0.25, **kwargs)


def test_confusion_matrix_leaves_out_ignored_pixels():
    labels = tf.constant([[[0, 1], [2, 255]], [[1, 1], [0, 255]]])[..., tf.newaxis]
    predictions = tf.constant([[[0, 1], [1, 0]], [[1, 2], [0, 2]]])
    confusion = evaluation.confusion_matrix(labels, predictions, 4, ignore_label=255).numpy()
    expected = np.zeros((4, 4), np.int64)
    for gt, pred in [(0, 0), (1, 1), (2, 1), (1, 1), (1, 2), (0, 0)]:
        expected[gt, pred] += 1
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.dtype == np.int64


def test_miou_of_hand_computed_confusion_matrix():
    # Rows: ground truth, columns: prediction. Class 3 is absent from both (zero union).
    confusion = np.array([[5, 1, 0, 0],
                          [2, 3, 1, 0],
                          [0, 0, 0, 0],
                          [0, 0, 0, 0]])
    metrics = evaluation.segmentation_metrics(confusion, ["a", "b", "c", "d"], ignore_label=255)
    iou_a = 5 / (6 + 7 - 5)
    iou_b = 3 / (6 + 4 - 3)
    iou_c = 0 / (0 + 1 - 0)  # only predicted, never in the ground truth: IoU 0, counted
    assert metrics["per_class_iou"]["a"] == pytest.approx(iou_a)
    assert metrics["per_class_iou"]["b"] == pytest.approx(iou_b)
    assert metrics["per_class_iou"]["c"] == 0.0
    assert metrics["per_class_iou"]["d"] is None  # zero union: left out of the mean
    assert metrics["miou"] == pytest.approx((iou_a + iou_b + iou_c) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(8 / 12)
    assert metrics["num_pixels"] == 12


def test_ignore_label_inside_the_classes_is_left_out_of_the_mean():
    # ADE20K style: class 0 is the ignore label; predicting it never counts as a class.
    confusion = np.array([[0, 0], [3, 7]])
    metrics = evaluation.segmentation_metrics(confusion, ["other", "wall"], ignore_label=0)
    assert metrics["per_class_iou"]["other"] is None
    assert metrics["miou"] == pytest.approx(0.7)


def test_miou_matches_keras_mean_iou_on_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(2, 9, 7))
    predictions = rng.integers(0, 5, size=(2, 9, 7))
    confusion = evaluation.confusion_matrix(labels, predictions, 5, ignore_label=255)
    metrics = evaluation.segmentation_metrics(confusion, list("abcde"))
    reference = keras.metrics.MeanIoU(num_classes=5)
    reference.update_state(labels.ravel(), predictions.ravel())
    assert metrics["miou"] == pytest.approx(float(reference.result()), rel=1e-6)


def test_single_scale_probabilities_are_the_softmax_of_the_logits():
    model = _pointwise_model()
    images = tf.random.uniform([2, 9, 11, 3], 0, 255, seed=1)
    probabilities = inference.predict_probabilities(model, images, eval_scales=[1.0])
    np.testing.assert_allclose(probabilities, tf.nn.softmax(model(images)), atol=1e-6)
    labels = inference.predict_labels(model, images)
    np.testing.assert_array_equal(labels, tf.argmax(model(images), -1))


def test_flipped_inference_of_a_flip_equivariant_model_changes_nothing():
    model = _pointwise_model()
    images = tf.random.uniform([1, 8, 10, 3], 0, 255, seed=2)
    np.testing.assert_allclose(
        inference.predict_probabilities(model, images, add_flipped_images=True),
        inference.predict_probabilities(model, images), atol=1e-6)


def test_flipped_inference_averages_the_flipped_back_probabilities():
    model = _small_deeplab()  # not flip-equivariant
    images = tf.random.uniform([1, 17, 21, 3], 0, 255, seed=3)
    expected = (tf.nn.softmax(model(images)) +
                tf.reverse(tf.nn.softmax(model(tf.reverse(images, [2]))), [2])) / 2
    np.testing.assert_allclose(
        inference.predict_probabilities(model, images, add_flipped_images=True), expected,
        atol=1e-6)


def test_multi_scale_inference_resizes_back_and_averages():
    model = _small_deeplab()
    images = tf.random.uniform([2, 17, 21, 3], 0, 255, seed=4)
    probabilities = inference.predict_probabilities(model, images, eval_scales=[0.5, 1.0, 1.5])
    assert probabilities.shape == (2, 17, 21, 3)
    np.testing.assert_allclose(tf.reduce_sum(probabilities, -1), 1.0, atol=1e-5)
    half = tf.image.resize(images, [9, 11])  # deeplab's (17 - 1) * 0.5 + 1, (21 - 1) * 0.5 + 1
    expected_half = tf.image.resize(tf.nn.softmax(model(half)), [17, 21])
    others = inference.predict_probabilities(model, images, eval_scales=[1.0, 1.5])
    np.testing.assert_allclose(probabilities, (expected_half + 2 * others) / 3, atol=1e-5)


def _dataset(images, labels, batch_size):
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "filename": tf.fill([len(images)], "x")}
    ).batch(batch_size)


def test_evaluate_streams_over_batches_and_replicas():
    model = _pointwise_model(num_classes=4)
    # 5 images in batches of 2: the last batch leaves one replica without an image.
    images = tf.random.uniform([5, 8, 8, 3], 0, 255, seed=5)
    labels = tf.random.uniform([5, 8, 8, 1], 0, 4, dtype=tf.int32, seed=6)
    labels = tf.where(tf.random.uniform(labels.shape, seed=7) < 0.2, 255, labels)
    expected = evaluation.confusion_matrix(labels, inference.predict_labels(model, images), 4,
                                           255).numpy()
    single = evaluation.evaluate(inference.KerasPredictor(model), _dataset(images, labels, 4),
                                 4, 255)
    assert list(single) == ["confusion"]  # No two-class statistics for 4 classes.
    np.testing.assert_array_equal(single["confusion"], expected)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        replicated = _pointwise_model(num_classes=4)
    replicated.set_weights(model.get_weights())
    confusion = evaluation.evaluate(inference.KerasPredictor(replicated),
                                    _dataset(images, labels, 2), 4, 255,
                                    strategy=strategy)["confusion"]
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == int(tf.reduce_sum(tf.cast(labels != 255, tf.int32)))


class _LabelsOnTheHost(inference.Predictor):
    """A predictor like an export without probabilities run by LiteRT: labels only, in numpy."""
    has_probabilities = False
    traceable = False

    def __init__(self, model):
        self.keras = inference.KerasPredictor(model)

    def predict_labels(self, images):
        return tf.constant(self.keras.predict_labels(images).numpy())  # .numpy(): eager only


def test_a_labels_only_predictor_on_the_host_counts_one_hot_labels():
    model = _pointwise_model(num_classes=2)
    images = tf.random.uniform([3, 9, 8, 3], 0, 255, seed=14)
    labels = tf.random.uniform([3, 9, 8, 1], 0, 2, dtype=tf.int32, seed=15)
    dataset = _dataset(images, labels, 1)
    keras_statistics = evaluation.evaluate(inference.KerasPredictor(model), dataset, 2, 255)
    host_statistics = evaluation.evaluate(_LabelsOnTheHost(model), dataset, 2, 255)
    np.testing.assert_array_equal(host_statistics["confusion"], keras_statistics["confusion"])
    np.testing.assert_allclose(host_statistics["image_f1"], keras_statistics["image_f1"])
    metrics = evaluation.foreground_metrics(host_statistics)
    # The AUC of a score that is 0 or 1: the mean of sensitivity and specificity.
    assert metrics["auc"] == pytest.approx((metrics["sensitivity"] + metrics["specificity"]) / 2)


def test_histogram_auc_by_hand_and_against_ranks():
    # Negatives score in bins 0, 1, 1; positives in 1, 2: pairs (pos > neg) = 1 + 0.5 * 2
    # (bin 1 ties) + 3 (bin 2) out of 6.
    assert evaluation.histogram_auc([1, 2, 0], [0, 1, 1]) == pytest.approx(5 / 6)
    assert np.isnan(evaluation.histogram_auc([0, 0], [1, 0]))
    # Distinct scores, one per bin: the rank statistic (Mann-Whitney U / (n_pos n_neg)).
    rng = np.random.default_rng(0)
    scores = rng.permutation(200)
    positive = rng.random(200) < 0.3
    negatives, positives = (np.bincount(scores[mask], minlength=200)
                            for mask in (~positive, positive))
    wins = sum((p > n) for p in scores[positive] for n in scores[~positive])
    assert evaluation.histogram_auc(negatives, positives) == pytest.approx(
        wins / (positive.sum() * (~positive).sum()))


def test_two_class_metrics_match_numpy_over_batches_and_replicas():
    model = _pointwise_model(num_classes=2)
    images = tf.random.uniform([5, 9, 8, 3], 0, 255, seed=11)
    labels = tf.random.uniform([5, 9, 8, 1], 0, 2, dtype=tf.int32, seed=12)
    labels = tf.where(tf.random.uniform(labels.shape, seed=13) < 0.25, 255, labels)
    labels = tf.concat([labels[:4], tf.zeros_like(labels[4:])], 0)  # An image without vessels.
    probabilities = inference.predict_probabilities(model, images).numpy()[..., 1]
    truth, valid = labels.numpy()[..., 0] == 1, labels.numpy()[..., 0] != 255
    predicted = probabilities > 0.5
    tp, fp = (truth & predicted).sum(), (~truth & valid & predicted).sum()
    fn, tn = (truth & ~predicted).sum(), (~truth & valid & ~predicted).sum()
    image_f1 = [2 * (t & p & v).sum() / ((t & v).sum() + (p & v).sum())
                for t, p, v in zip(truth, predicted, valid) if (t & v).sum() + (p & v).sum()]
    scores, positive = probabilities[valid], truth[valid]
    wins = (scores[positive][:, None] > scores[~positive][None, :]).mean()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        replicated = _pointwise_model(num_classes=2)
    replicated.set_weights(model.get_weights())
    for evaluated in (evaluation.evaluate(inference.KerasPredictor(model),
                                          _dataset(images, labels, 2), 2, 255),
                      evaluation.evaluate(inference.KerasPredictor(replicated),
                                          _dataset(images, labels, 2), 2, 255,
                                          strategy=strategy)):
        metrics = evaluation.foreground_metrics(evaluated)
        assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert metrics["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
        assert metrics["accuracy"] == pytest.approx((tp + tn) / valid.sum())
        assert metrics["mean_image_f1"] == pytest.approx(np.mean(image_f1), rel=1e-6)
        # Exact to the pairs that share one of the 1,000 bins.
        assert metrics["auc"] == pytest.approx(wins, abs=1e-3)
        assert evaluated["probability_histogram"].sum() == valid.sum()


def test_dense_crf_keeps_confident_predictions():
    pytest.importorskip("pydensecrf")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(12, 10, 3))
    labels = np.zeros((12, 10), np.int64)
    labels[:, 5:] = 1
    probabilities = np.where(np.eye(2, dtype=bool)[labels], 0.999, 0.001)
    refined = crf.dense_crf(image, probabilities, iterations=5)
    assert refined.shape == (12, 10) and refined.dtype == np.int32
    np.testing.assert_array_equal(refined, labels)


def test_evaluate_with_crf_counts_every_labelled_pixel():
    pytest.importorskip("pydensecrf")
    images = tf.random.uniform([3, 8, 9, 3], 0, 255, seed=9)
    labels = tf.random.uniform([3, 8, 9, 1], 0, 3, dtype=tf.int32, seed=10)
    labels = tf.concat([labels[:, :7], tf.fill([3, 1, 9, 1], 255)], axis=1)
    confusion = evaluation.evaluate(inference.KerasPredictor(_pointwise_model()),
                                    _dataset(images, labels, 2), 3, 255,
                                    crf_iterations=2)["confusion"]
    assert confusion.shape == (3, 3) and confusion.sum() == 3 * 7 * 9


def test_missing_pydensecrf_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf.dense_crf(np.zeros((2, 2, 3)), np.full((2, 2, 2), 0.5), iterations=1)


def test_results_are_written_as_json_and_csv(tmp_path):
    metrics = evaluation.segmentation_metrics(np.array([[3, 1], [0, 0]]), ["road", "sky"])
    prefix = evaluation.results_path_prefix(str(tmp_path / "model.ckpt-7"), "val", [0.5, 1.0],
                                            add_flipped_images=True)
    assert prefix.endswith("model.ckpt-7.eval_val_ms0.5-1_flip")
    json_path, csv_path = evaluation.write_results(metrics, prefix, extra={"split": "val"})
    loaded = json.loads(open(json_path).read())
    assert loaded["split"] == "val" and loaded["miou"] == pytest.approx(0.375)
    assert loaded["per_class_iou"] == {"road": 0.75, "sky": 0.0}
    rows = list(csv.DictReader(open(csv_path)))
    assert rows == [{"split": "val", "mIoU": "37.50", "pixel_accuracy": "75.00",
                     "road": "75.00", "sky": "0.00"}]
    assert not list(tmp_path.glob("*.tmp"))
    table = evaluation.format_table(metrics)
    assert "road" in table and "37.50" in table


def test_no_counted_pixels_gives_nan_not_an_error():
    metrics = evaluation.segmentation_metrics(np.zeros((2, 2)), ["a", "b"])
    assert math.isnan(metrics["miou"]) and math.isnan(metrics["pixel_accuracy"])


def test_restore_model_round_trip_and_mismatch_errors(tmp_path):
    model = _small_deeplab()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
        str(tmp_path / "model.ckpt"))

    # Output stride does not change the variables: restore at 8 what was saved at 16.
    restored = _small_deeplab(output_stride=8)
    assert checkpoints.restore_model(restored, str(tmp_path)) == path
    for restored_weight, weight in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(restored_weight, weight)

    with pytest.raises(ValueError, match=r"model\.ckpt-1.*decoder_output_stride=4"):
        checkpoints.restore_model(_small_deeplab(decoder_output_stride=4), path,
                                 {"model_variant": "mobilenet_v2", "decoder_output_stride": 4})
    with pytest.raises(ValueError, match=r"model\.ckpt-1.*num_classes=5"):
        checkpoints.restore_model(_small_deeplab(num_classes=5), path, {"num_classes": 5})
    with pytest.raises(errors.UserError, match="no checkpoint"):
        checkpoints.restore_model(model, str(tmp_path / "missing.ckpt-3"))


def test_checkpoints_to_evaluate(tmp_path):
    model = _pointwise_model()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path), 5)
    first = manager.save(checkpoint_number=10)
    second = manager.save(checkpoint_number=20)
    assert list(evaluation.checkpoints_to_evaluate(checkpoint_path=first)) == [first]
    assert list(evaluation.checkpoints_to_evaluate(
        checkpoint_dir=str(tmp_path), eval_interval_secs=0, max_number_of_evaluations=1)) == [
        second]
    assert checkpoints.checkpoint_step(second) == 20
    # Watching: the latest checkpoint, then no new one within the timeout.
    assert list(evaluation.checkpoints_to_evaluate(
        checkpoint_dir=str(tmp_path), eval_interval_secs=0, timeout=0.5)) == [second]
    with pytest.raises(ValueError, match="checkpoint_dir"):
        list(evaluation.checkpoints_to_evaluate())


def test_checkpoints_to_evaluate_never_waits_for_a_missing_folder(tmp_path):
    with pytest.raises(errors.UserError, match="mistyped"):
        list(evaluation.checkpoints_to_evaluate(checkpoint_dir=str(tmp_path / "mistyped")))
    # An empty folder: an error for one evaluation; watched until the timeout otherwise.
    with pytest.raises(errors.UserError, match="no checkpoint in folder"):
        list(evaluation.checkpoints_to_evaluate(checkpoint_dir=str(tmp_path),
                                                max_number_of_evaluations=1))
    assert list(evaluation.checkpoints_to_evaluate(checkpoint_dir=str(tmp_path),
                                                   eval_interval_secs=0, timeout=0.5)) == []
