"""Saving and resuming a training run (checkpointing.TrainCheckpoints) on a tiny model."""
import keras
import numpy as np
import tensorflow as tf

from deeplab_ssl import checkpointing


def new_run(logdir):
    """A model, its optimizer, an input iterator over 0, 1, 2, ... and their checkpoints."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16),
                              keras.layers.Dropout(0.5)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    iterator = iter(tf.data.Dataset.range(100))
    saver = checkpointing.TrainCheckpoints(str(logdir), model, optimizer, iterator,
                                           tf.distribute.get_strategy())
    return model, optimizer, iterator, saver


def train_steps(model, optimizer, iterator, steps):
    """`steps` updates, each taking one input and drawing dropout's masks once."""
    for _ in range(steps):
        next(iterator)
        model(tf.ones((1, 2)), training=True)
        optimizer.apply_gradients([(tf.ones_like(v), v) for v in model.trainable_variables])


def test_a_saved_run_resumes_its_weights_step_and_input(tmp_path):
    model, optimizer, iterator, saver = new_run(tmp_path)
    assert saver.restore_latest() is None  # Nothing saved yet.
    train_steps(model, optimizer, iterator, 2)
    saver.save()
    assert saver.latest().endswith(checkpointing.CHECKPOINT_NAME + "-2")

    resumed, _, resumed_iterator, resumed_saver = new_run(tmp_path)
    assert resumed_saver.restore_latest() == saver.latest()
    assert resumed_saver.step == 2
    for one, two in zip(model.weights, resumed.weights):
        np.testing.assert_array_equal(one.numpy(), two.numpy())
    assert int(next(resumed_iterator)) == 2  # The input continues where it was saved.
    # So do dropout's masks: the seed generator's state is saved too.
    np.testing.assert_array_equal(resumed(tf.ones((1, 2)), training=True),
                                  model(tf.ones((1, 2)), training=True))


def test_the_crash_save_keeps_the_last_good_step_once(tmp_path):
    model, optimizer, iterator, saver = new_run(tmp_path)
    saver.save_last_good_step(with_iterator=True)
    assert saver.latest() is None  # Step 0: nothing to keep.
    train_steps(model, optimizer, iterator, 1)
    saver.save_last_good_step(with_iterator=False)  # After an input error.
    first = saver.latest()
    assert first.endswith("-1")
    saver.save_last_good_step(with_iterator=True)  # Step 1 is saved: not again.
    assert saver.latest() == first and len(tf.io.gfile.glob(str(tmp_path / "*.index"))) == 1

    _, _, resumed_iterator, resumed_saver = new_run(tmp_path)
    resumed_saver.restore_latest()
    assert resumed_saver.step == 1
    assert int(next(resumed_iterator)) == 0  # Saved without the iterator: the input starts over.

    train_steps(model, optimizer, iterator, 1)
    saver.save_last_good_step(with_iterator=True)  # After any other error.
    _, _, resumed_iterator, resumed_saver = new_run(tmp_path)
    resumed_saver.restore_latest()
    assert resumed_saver.step == 2 and int(next(resumed_iterator)) == 2


def test_a_checkpoint_without_seed_states_resumes(tmp_path):
    """Checkpoints of versions that did not save the seed generators' states still resume."""
    model, optimizer, iterator, _ = new_run(tmp_path)
    train_steps(model, optimizer, iterator, 1)
    old = tf.train.Checkpoint(model=model, optimizer=optimizer, iterator=iterator)
    tf.train.CheckpointManager(old, str(tmp_path), 1,
                               checkpoint_name=checkpointing.CHECKPOINT_NAME).save(1)

    _, _, resumed_iterator, resumed_saver = new_run(tmp_path)
    assert resumed_saver.restore_latest().endswith("-1")
    assert resumed_saver.step == 1 and int(next(resumed_iterator)) == 1
