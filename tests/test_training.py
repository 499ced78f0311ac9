"""The training loop on a tiny Keras model: LR schedule, replicas, resume, NaN, precision."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl import losses
from deeplab_ssl import distribute, errors, train_log, train_utils, training

NUM_CLASSES = 4
SIZE = 16


def tiny_model(batch_norm=False):
    """A two-layer conv net: float32 images [B,16,16,3] -> logits [B,16,16,4]."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            kernel_regularizer=keras.regularizers.L2(1e-3))(x)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    # Keras casts to the layer's compute dtype; the loss computes in float32.
    outputs = keras.layers.Conv2D(NUM_CLASSES, 3, padding="same", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def seeded_model_fn(batch_norm=False):
    def model_fn():
        keras.utils.set_random_seed(1)
        return tiny_model(batch_norm)
    return model_fn


def make_data(num_examples=8, nan_from=None):
    """Images float32 [N,16,16,3] in [0,255] and labels int32 [N,16,16,1] with ignore pixels."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, (num_examples, SIZE // 4, SIZE // 4, 1))
    labels = np.repeat(np.repeat(labels, 4, axis=1), 4, axis=2).astype(np.int32)
    labels[:, :2] = 255
    images = (labels * 60 + rng.normal(0, 20, labels.shape)).repeat(3, axis=-1)
    images = np.clip(images, 0, 255).astype(np.float32)
    if nan_from is not None:
        images[nan_from:] = np.nan
    return images, labels


def dataset_fn_of(images, labels, global_batch_size, repeat=True):
    def dataset_fn(input_context):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        if repeat:
            dataset = dataset.repeat()
        return dataset.batch(input_context.get_per_replica_batch_size(global_batch_size),
                             drop_remainder=True)
    return dataset_fn


def options(logdir, **kwargs):
    values = dict(train_logdir=str(logdir), train_batch_size=4, training_number_of_steps=6,
                  base_learning_rate=0.05, slow_start_step=2, slow_start_learning_rate=0.01,
                  log_steps=1, save_interval_steps=2, save_summaries_images=False)
    values.update(kwargs)
    return training.TrainOptions(**values)


def one_cpu():
    return tf.distribute.MirroredStrategy(["/cpu:0"])


def two_cpus():
    """The two logical CPUs of conftest.

    Not the default collective all-reduce: TF gives every MirroredStrategy of a process the
    same collective keys, so a later strategy's all-reduce of other shapes would fail.
    """
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def weights_of(trainer):
    return [w.numpy() for w in trainer.model.weights]


# --- learning rate ---------------------------------------------------------------------------

def deeplab_poly(step, base, total, power, slow_start_step, slow_start_rate):
    """deeplab's get_model_learning_rate ("poly", no burn-in), written out in Python."""
    if step < slow_start_step:
        return slow_start_rate
    decay_steps = total - slow_start_step
    adjusted = min(max(step - slow_start_step, 0), decay_steps)
    return base * (1 - adjusted / decay_steps) ** power


@pytest.mark.parametrize("step", [0, 99, 100, 101, 15050, 29999, 30000, 40000])
def test_poly_learning_rate_is_deeplabs(step):
    schedule = train_utils.DeepLabLearningRate(0.007, 30000, "poly", 0.9, 100, 0.001)
    expected = deeplab_poly(step, 0.007, 30000, 0.9, 100, 0.001)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_poly_learning_rate_values():
    schedule = train_utils.DeepLabLearningRate(0.007, 30000, "poly", 0.9, 100, 0.001)
    assert float(schedule(99)) == pytest.approx(0.001)
    assert float(schedule(100)) == pytest.approx(0.007)
    # Half way through the decay: 0.007 * 0.5 ** 0.9.
    assert float(schedule(15050)) == pytest.approx(0.007 * 0.5 ** 0.9, rel=1e-5)
    assert float(schedule(30000)) == 0.0


def test_step_learning_rate_is_deeplabs():
    schedule = train_utils.DeepLabLearningRate(
        0.01, 10000, "step", slow_start_step=10, slow_start_learning_rate=0.001,
        learning_rate_decay_step=2000, learning_rate_decay_factor=0.1)
    assert float(schedule(9)) == pytest.approx(0.001)
    assert float(schedule(10)) == pytest.approx(0.01)
    assert float(schedule(2009)) == pytest.approx(0.01)
    assert float(schedule(2010)) == pytest.approx(0.001)
    assert float(schedule(4010)) == pytest.approx(0.0001)


def test_learning_rate_serializes_inside_the_optimizer():
    schedule = train_utils.DeepLabLearningRate(0.007, 30000, "poly", 0.9, 100, 0.001)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    restored = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert restored.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]
    assert float(restored.learning_rate) == pytest.approx(0.001)  # Slow start at step 0.
    config = keras.saving.serialize_keras_object(schedule)
    assert keras.saving.deserialize_keras_object(config).get_config() == schedule.get_config()


# --- options and strategy --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, flag", [
    (dict(train_batch_size=0), "--train_batch_size"),
    (dict(slow_start_step=6), "--slow_start_step"),
    (dict(learning_policy="cosine"), "--learning_policy"),
    (dict(momentum=1.0), "--momentum"),
    (dict(mixed_precision="float8"), "--mixed_precision"),
    (dict(train_logdir=""), "--train_logdir"),
])
def test_bad_options_name_the_flag(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        options(tmp_path, **kwargs)


def test_batch_must_split_over_replicas(tmp_path):
    with pytest.raises(ValueError, match="--train_batch_size=3 is not divisible by the 2"):
        training.Trainer(seeded_model_fn(), losses.SSLoss(),
                         options(tmp_path, train_batch_size=3), strategy=two_cpus())


def test_tf_config_with_several_workers_selects_multi_worker(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.tf_config_num_workers() == 0
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.tf_config_num_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.tf_config_num_workers()
    with pytest.raises(ValueError, match="--strategy"):
        distribute.get_strategy("parameter_server")


def test_one_device_strategy():
    strategy = distribute.get_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


# --- the loop --------------------------------------------------------------------------------

def test_two_replicas_give_the_same_loss_and_update_as_one(tmp_path):
    images, labels = make_data()
    runs = []
    for name, strategy in (("one", one_cpu()), ("two", two_cpus())):
        trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                                   options(tmp_path / name), strategy=strategy)
        iterator = trainer.make_iterator(dataset_fn_of(images, labels, 4))
        # The last step with Fig. 3's statistics, reduced over the replicas.
        metrics = [trainer.train_step(trainer.next_batch(iterator), statistics=index == 2)
                   for index in range(3)]
        runs.append((metrics, weights_of(trainer)))
    (metrics_one, weights_one), (metrics_two, weights_two) = runs
    for one, two in zip(metrics_one, metrics_two):
        one, two = ({**{k: v for k, v in m.items() if k != "statistics"},
                     **m.get("statistics", {})} for m in (one, two))
        assert one.keys() == two.keys()
        for key in one:
            assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-7), key
    assert metrics_one[0]["num_hard"] > 0  # The SSL term takes part.
    statistics = metrics_two[2]["statistics"]
    assert set(losses.ssl_statistics.ERROR_STATISTICS
               + losses.ssl_statistics.CLASS_STATISTICS) <= statistics.keys()
    for one, two in zip(weights_one, weights_two):
        np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-7)


def test_training_reduces_the_loss(tmp_path):
    images, labels = make_data()
    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=30,
                                       save_interval_steps=30),
                               strategy=one_cpu())
    trainer.train(dataset_fn_of(images, labels, 4))
    with open(tmp_path / train_log.TRAIN_LOG_NAME) as f:
        log = [json.loads(line) for line in f]
    assert [record["step"] for record in log] == list(range(1, 31))
    assert np.mean([r["loss"] for r in log[-5:]]) < 0.7 * np.mean([r["loss"] for r in log[:5]])
    for key in ("learning_rate", "bce", "ssl", "hard_example_fraction", "regularization_loss",
                "images_per_second") + losses.ssl_statistics.ERROR_STATISTICS:
        assert key in log[0]
    num_classes = trainer.model.output_shape[-1]
    for key in losses.ssl_statistics.CLASS_STATISTICS:  # One value per class.
        assert len(log[0][key]) == num_classes
    assert "bce_sum" not in log[0]  # Raw sums stay out of the logs.
    e_max = losses.SSLoss().e_max  # Fig. 3: y_nor spans at most e_max; median <= max.
    assert all(r["y_nor_max"] - r["y_nor_min"] <= e_max + 1e-4 for r in log)
    assert all(0 <= r["error_median"] <= r["error_max"] + e_max / 1000 for r in log)
    assert log[0]["learning_rate"] == pytest.approx(0.01)  # Slow start.
    # The rate of the update of step n (logged at n + 1) is deeplab's rate at step n.
    assert log[2]["learning_rate"] == pytest.approx(0.05)
    assert log[3]["learning_rate"] == pytest.approx(0.05 * (1 - 1 / 28) ** 0.9, rel=1e-5)


def test_the_trainer_gives_a_scheduled_loss_its_step(tmp_path):
    images, labels = make_data()
    # SSLoss's warm-up: the BCE term alone while the step before the update is < 2.
    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(warmup_steps=2),
                               options(tmp_path, training_number_of_steps=3), strategy=one_cpu())
    trainer.train(dataset_fn_of(images, labels, 4))
    with open(tmp_path / train_log.TRAIN_LOG_NAME) as f:
        log = [json.loads(line) for line in f]
    assert [r["loss"] for r in log[:2]] == pytest.approx([r["bce"] for r in log[:2]])
    assert log[2]["ssl"] > 0
    assert log[2]["loss"] == pytest.approx(0.5 * (log[2]["bce"] + log[2]["ssl"]))


def test_killed_run_resumes_at_the_same_step_with_the_same_result(tmp_path):
    images, labels = make_data()
    dataset_fn = dataset_fn_of(images, labels, 4)
    straight = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                                options(tmp_path / "straight"), strategy=one_cpu())
    straight.train(dataset_fn)

    killed = training.Trainer(seeded_model_fn(), losses.SSLoss(), options(tmp_path / "killed"),
                              strategy=one_cpu())
    train_step = killed.train_step

    def train_step_then_die(batch, **kwargs):
        metrics = train_step(batch, **kwargs)
        if killed.step == 5:  # Step 5 is done but the last checkpoint is step 4.
            raise KeyboardInterrupt
        return metrics

    killed.train_step = train_step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train(dataset_fn)
    # Ctrl-C saved step 5, with the input iterator (kill -9 saves nothing: test_train_cli).
    assert tf.train.latest_checkpoint(tmp_path / "killed").endswith("model.ckpt-5")

    resumed = training.Trainer(seeded_model_fn(), losses.SSLoss(), options(tmp_path / "killed"),
                               strategy=one_cpu())
    assert resumed.train(dataset_fn) == 6
    assert resumed.step == 6
    # Same data (the iterator is in the checkpoint), same learning rates: the same weights.
    for one, two in zip(weights_of(straight), weights_of(resumed)):
        np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-7)
    with open(tmp_path / "killed" / train_log.TRAIN_LOG_NAME) as f:
        # Step 5 was interrupted after its update, before its log line.
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 6]


def test_finished_run_does_not_train_again(tmp_path):
    images, labels = make_data()
    dataset_fn = dataset_fn_of(images, labels, 4)
    first = training.Trainer(seeded_model_fn(), losses.SSLoss(), options(tmp_path),
                             strategy=one_cpu())
    first.train(dataset_fn)
    again = training.Trainer(seeded_model_fn(), losses.SSLoss(), options(tmp_path),
                             strategy=one_cpu())
    again.train_step = None  # Any step would fail.
    assert again.train(dataset_fn) == 6
    for one, two in zip(weights_of(first), weights_of(again)):
        np.testing.assert_array_equal(one, two)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # Batches of 4: batches 1-2 are finite, batch 3 holds NaN images.
    images, labels = make_data(num_examples=16, nan_from=8)
    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(), options(tmp_path),
                               strategy=one_cpu())
    with pytest.raises(training.NonFiniteLossError, match=r"step 3: .*model\.ckpt-2"):
        trainer.train(dataset_fn_of(images, labels, 4, repeat=False))
    assert tf.train.latest_checkpoint(tmp_path).endswith("model.ckpt-2")
    assert not os.path.exists(tmp_path / "model.ckpt-3.index")
    reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-2"))
    for name, _ in tf.train.list_variables(str(tmp_path / "model.ckpt-2")):
        if name.startswith("model/") and name.endswith("VARIABLE_VALUE"):
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_dataset_that_ends_is_an_error(tmp_path):
    images, labels = make_data()
    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=5),
                               strategy=one_cpu())
    with pytest.raises(ValueError, match="ended at step 2"):
        trainer.train(dataset_fn_of(images, labels, 4, repeat=False))


def test_mixed_bfloat16_trains_with_a_float32_loss(tmp_path):
    images, labels = make_data()
    trainer = training.Trainer(seeded_model_fn(batch_norm=True), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=3,
                                       mixed_precision="mixed_bfloat16"),
                               strategy=one_cpu())
    assert keras.config.dtype_policy().name == "float32"  # Restored after building.
    assert trainer.model.layers[2].compute_dtype == "bfloat16"
    assert trainer.model.layers[2].kernel.dtype == "float32"
    trainer.train(dataset_fn_of(images, labels, 4))
    with open(tmp_path / train_log.TRAIN_LOG_NAME) as f:
        assert all(np.isfinite(json.loads(line)["loss"]) for line in f)


def test_mixed_float16_uses_loss_scaling(tmp_path):
    images, labels = make_data()
    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=3,
                                       mixed_precision="mixed_float16"),
                               strategy=one_cpu())
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    iterator = trainer.make_iterator(dataset_fn_of(images, labels, 4))
    metrics = trainer.train_step(trainer.next_batch(iterator))
    assert np.isfinite(metrics["loss"])


def test_initial_checkpoint_is_used_only_without_a_checkpoint(tmp_path):
    images, labels = make_data()
    dataset_fn = dataset_fn_of(images, labels, 4)
    first = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                             options(tmp_path / "run", training_number_of_steps=4),
                             strategy=one_cpu())
    first.train(dataset_fn)
    # A missing initial checkpoint would fail; with a checkpoint in train_logdir it is unused.
    resumed = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path / "run", tf_initial_checkpoint="/nonexistent"),
                               strategy=one_cpu())
    assert resumed.train(dataset_fn) == 6
    fresh = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                             options(tmp_path / "fresh", tf_initial_checkpoint="/nonexistent"),
                             strategy=one_cpu())
    with pytest.raises(errors.UserError, match="/nonexistent"):
        fresh.train(dataset_fn)


def test_initialize_from_keras_weights_and_train_checkpoints(tmp_path):
    source = tiny_model()
    source.save_weights(str(tmp_path / "source.weights.h5"))
    prefix = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    for path in (str(tmp_path / "source.weights.h5"), prefix, str(tmp_path)):
        model = tiny_model()
        train_utils.initialize_from_checkpoint(model, path)
        for one, two in zip(source.weights, model.weights):
            np.testing.assert_array_equal(one.numpy(), two.numpy())


def test_an_input_error_saves_the_last_good_step_and_training_resumes(tmp_path):
    images, labels = make_data()

    def breaking_dataset_fn(input_context):  # A shard that breaks after 3 batches.
        good = dataset_fn_of(images, labels, 4)(input_context).take(3)
        def fail(x):
            with tf.control_dependencies([tf.debugging.assert_equal(
                    x, 1, message="truncated record")]):
                return tf.identity(images[:4]), tf.identity(labels[:4])
        return good.concatenate(tf.data.Dataset.from_tensors(0).map(fail))

    trainer = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=6,
                                       save_interval_steps=100), strategy=one_cpu())
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated record"):
        trainer.train(breaking_dataset_fn)
    assert tf.train.latest_checkpoint(tmp_path).endswith("model.ckpt-3")
    resumed = training.Trainer(seeded_model_fn(), losses.SSLoss(),
                               options(tmp_path, training_number_of_steps=6,
                                       save_interval_steps=100), strategy=one_cpu())
    assert resumed.train(dataset_fn_of(images, labels, 4)) == 6


@pytest.mark.parametrize("loss_name", ["softmax_ce", "bce", "ssl_softmax_topk_balanced"])
def test_losses_without_statistics_train_through_log_steps(tmp_path, loss_name):
    images, labels = make_data()
    trainer = training.Trainer(seeded_model_fn(), losses.get_loss(loss_name),
                               options(tmp_path, training_number_of_steps=3),
                               strategy=two_cpus())
    assert trainer.train(dataset_fn_of(images, labels, 4)) == 3
