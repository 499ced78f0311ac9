"""Training the real DeepLab model on the generated demo set: the loop, replicas, fit, stage 2."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import losses, train_log, train_utils, training
from deeplab_ssl import model as model_lib
from deeplab_ssl.datasets import descriptors, input_pipeline

DEMO = descriptors.get_descriptor("demo")
CROP = [65, 65]


def model_fn(fine_tune_batch_norm=True):
    def build():
        keras.utils.set_random_seed(0)
        return model_lib.build_deeplab("mobilenet_v2", DEMO.num_classes, depth_multiplier=0.25,
                                       weight_decay=4e-5,
                                       fine_tune_batch_norm=fine_tune_batch_norm)
    return build


def dataset_fn_of(demo_dir, global_batch_size, augment=True):
    def dataset_fn(input_context=None):
        scale = dict(min_scale_factor=0.75, max_scale_factor=1.25,
                     scale_factor_step_size=0.25) if augment else {}
        return input_pipeline.get_dataset(
            "demo", demo_dir, "train", global_batch_size, crop_size=CROP, is_training=True,
            seed=1, deterministic=True, input_context=input_context, **scale)
    return dataset_fn


def options(logdir, **kwargs):
    values = dict(train_logdir=str(logdir), train_batch_size=4, training_number_of_steps=30,
                  base_learning_rate=0.05, log_steps=1, save_interval_steps=30,
                  save_summaries_images=True)
    values.update(kwargs)
    return training.TrainOptions(**values)


def one_cpu():
    return tf.distribute.MirroredStrategy(["/cpu:0"])


def test_a_few_steps_on_demo_data_reduce_the_loss(demo_dir, tmp_path):
    trainer = training.Trainer(model_fn(), losses.SSLoss(ignore_label=DEMO.ignore_label),
                               options(tmp_path), strategy=one_cpu(), colormap=DEMO.colormap)
    assert trainer.train(dataset_fn_of(demo_dir, 4)) == 30
    with open(tmp_path / train_log.TRAIN_LOG_NAME) as f:
        log = [json.loads(line) for line in f]
    first, last = (np.mean([r["loss"] for r in part]) for part in (log[:5], log[-5:]))
    assert last < 0.8 * first
    assert all(0 < r["hard_example_fraction"] < 1 for r in log)
    assert all(r["regularization_loss"] > 0 for r in log)  # Weight decay is in the loss.
    assert tf.train.latest_checkpoint(tmp_path).endswith("model.ckpt-30")
    event_files = tf.io.gfile.glob(str(tmp_path / "events.out.tfevents.*"))
    tags = {value.tag for path in event_files for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}
    assert {"loss", "ssl", "bce", "learning_rate", "hard_example_fraction",
            "samples/image", "samples/label", "samples/prediction"} <= tags


def frozen_model_fn(images):
    """A frozen batch norm model with the moving statistics of `images`, as after stage 1,
    and no dropout, whose masks differ with the number of replicas.

    From the initial statistics (0, 1) the activations are not normalized and the gradients
    of gamma and beta are sums that cancel down to float rounding.
    """
    stage1 = model_fn()()
    train_utils.set_batch_norm_decay(stage1, 0.0)
    stage1(images, training=True)
    weights = stage1.get_weights()

    def build():
        model = model_fn(fine_tune_batch_norm=False)()
        model.set_weights(weights)
        model.get_layer(model_lib.CONCAT_PROJECTION_SCOPE + "_dropout").rate = 0.0
        return model
    return build


def test_two_replicas_match_one_with_the_deeplab_model(demo_dir, tmp_path):
    # Frozen batch norm: batch statistics would otherwise depend on the per-replica batch.
    images, _ = next(iter(dataset_fn_of(demo_dir, 4, augment=False)()))
    runs = []
    for name, strategy in (("one", one_cpu()),
                           ("two", tf.distribute.MirroredStrategy(  # See test_training.
                               ["/cpu:0", "/cpu:1"],
                               cross_device_ops=tf.distribute.ReductionToOneDevice()))):
        trainer = training.Trainer(frozen_model_fn(images),
                                   losses.SSLoss(ignore_label=DEMO.ignore_label),
                                   options(tmp_path / name), strategy=strategy)
        iterator = trainer.make_iterator(dataset_fn_of(demo_dir, 4, augment=False))
        initial = [w.numpy() for w in trainer.model.weights]
        metrics = [trainer.train_step(trainer.next_batch(iterator))]
        updates = [w.numpy() - w0 for w, w0 in zip(trainer.model.weights, initial)]
        metrics.append(trainer.train_step(trainer.next_batch(iterator)))
        runs.append((metrics, updates))
    (metrics_one, updates_one), (metrics_two, updates_two) = runs
    for one, two in zip(metrics_one, metrics_two):
        # The replicas round differently (different batch shapes), so a pixel whose e lies
        # within rounding of the threshold may change sides: a few hard examples of ~4,500,
        # which move the loss by ~1e-4 of itself (measured up to 1.6e-4 at the second step).
        assert one["regularization_loss"] == pytest.approx(two["regularization_loss"], rel=1e-4)
        for key in ("loss", "bce_sum", "num_hard"):
            assert one[key] == pytest.approx(two[key], rel=2e-3), key
    # The first step's update, per variable: those few examples move it by up to 2e-4 of its
    # norm; replicas whose gradients were not summed would be off by a half.
    for weight, one, two in zip(trainer.model.weights, updates_one, updates_two):
        assert np.linalg.norm(one - two) <= 2e-3 * np.linalg.norm(one) + 1e-7, weight.path


def test_compile_and_fit_train_the_same_model(demo_dir):
    model = model_fn()()
    schedule = train_utils.DeepLabLearningRate(0.05, 12, slow_start_step=2,
                                            slow_start_learning_rate=0.005)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                  loss=losses.SSLoss(ignore_label=DEMO.ignore_label))
    history = model.fit(dataset_fn_of(demo_dir, 4)(), steps_per_epoch=4, epochs=3, verbose=0)
    loss = history.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    assert int(model.optimizer.iterations) == 12


def test_stage2_starts_from_stage1_with_frozen_batch_norm(demo_dir, tmp_path):
    stage1 = training.Trainer(model_fn(), losses.SSLoss(ignore_label=DEMO.ignore_label),
                              options(tmp_path / "stage1", training_number_of_steps=2,
                                      save_summaries_images=False),
                              strategy=one_cpu())
    stage1.train(dataset_fn_of(demo_dir, 4))
    stage1_weights = {weight.path: weight.numpy() for weight in stage1.model.weights}

    # The whole model from stage 1's train_logdir.
    model = model_fn(fine_tune_batch_norm=False)()
    train_utils.initialize_from_checkpoint(model, str(tmp_path / "stage1"))
    assert len(model.weights) == len(stage1_weights)
    for weight in model.weights:
        np.testing.assert_array_equal(weight.numpy(), stage1_weights[weight.path])
    with pytest.raises(ValueError, match="initialize_last_layer"):
        train_utils.initialize_from_checkpoint(model, str(tmp_path / "stage1"),
                                            initialize_last_layer=False)

    stage2 = training.Trainer(
        model_fn(fine_tune_batch_norm=False), losses.SSLoss(ignore_label=DEMO.ignore_label),
        options(tmp_path / "stage2", training_number_of_steps=2, base_learning_rate=0.0005,
                tf_initial_checkpoint=str(tmp_path / "stage1"), save_summaries_images=False),
        strategy=one_cpu())
    assert stage2.train(dataset_fn_of(demo_dir, 4)) == 2  # A new optimizer: from step 0.
    batch_norms = [layer for layer in stage2.model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms
    for layer in batch_norms:  # Statistics from stage 1, then frozen; gamma and beta train.
        for weight in (layer.moving_mean, layer.moving_variance):
            np.testing.assert_array_equal(weight.numpy(), stage1_weights[weight.path])


def test_gradient_multipliers_are_deeplabs():
    model = model_fn()()
    multipliers = dict(zip((v.path for v in model.trainable_variables),
                           train_utils.gradient_multipliers(model.trainable_variables, 10.0)))
    assert multipliers["logits.semantic/bias"] == 20.0  # Biases 2x, last layers 10x.
    assert multipliers["logits.semantic/kernel"] == 10.0
    assert multipliers["aspp0/kernel"] == 10.0
    backbone = [m for path, m in multipliers.items()
                if not path.startswith(("logits", "aspp", "image_pooling", "concat"))]
    assert backbone and set(backbone) == {1.0}
    logits_only = train_utils.gradient_multipliers(model.trainable_variables, 10.0, True)
    assert dict(zip(multipliers, logits_only))["aspp0/kernel"] == 1.0


def test_last_layer_gradient_multiplier_zero_freezes_the_last_layers(demo_dir, tmp_path):
    trainer = training.Trainer(
        model_fn(), losses.SSLoss(ignore_label=DEMO.ignore_label),
        options(tmp_path, last_layer_gradient_multiplier=0.0), strategy=one_cpu())
    before = {v.path: v.numpy() for v in trainer.model.trainable_variables}
    iterator = trainer.make_iterator(dataset_fn_of(demo_dir, 4))
    for _ in range(2):
        trainer.train_step(trainer.next_batch(iterator))
    changed = {v.path for v in trainer.model.trainable_variables
               if not np.array_equal(v.numpy(), before[v.path])}
    assert "logits.semantic/kernel" not in changed and "aspp0/kernel" not in changed
    assert any(path.startswith("MobilenetV2") for path in changed)
