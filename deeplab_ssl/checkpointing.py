"""Saving and resuming a training run: its checkpoints in train_logdir, and the crash save.

Checkpoints (`tf.train.CheckpointManager` in train_logdir, files `model.ckpt-STEP`) hold the
model, the optimizer (its `iterations` is the global step), the states of the model's random
seed generators (dropout's masks) and, with a single worker, the input iterator, so a restarted
run continues where the last checkpoint left it (with --deterministic, exactly as if it had not
stopped). With several workers each worker's input differs: each saves its own iterator in
train_logdir/iterators/worker_INDEX at the same steps. The latest checkpoint is found by
`checkpoints.resolve_checkpoint`.
"""
import os
import shutil

import tensorflow as tf
from absl import logging

from deeplab_ssl import checkpoints, distribute

CHECKPOINT_NAME = "model.ckpt"
MAX_CHECKPOINTS_TO_KEEP = 5
# With several workers, each worker's input iterator: train_logdir/ITERATORS_DIR/worker_INDEX.
ITERATORS_DIR = "iterators"
ITERATOR_CHECKPOINT_NAME = "iterator.ckpt"


def training_state(model, optimizer):
    """What a checkpoint saves besides the input: the model, the optimizer and the states of the
    model's seed generators (a Variable of shape [2] each; `model.variables` holds them,
    `model.weights` does not, and tf.train.Checkpoint does not find them through the model)."""
    weights = {id(weight) for weight in model.weights}
    return dict(model=model, optimizer=optimizer,
                seed_states=[v for v in model.variables if id(v) not in weights])


class TrainCheckpoints:
    """The checkpoints of one training run in `train_logdir`: save, resume, crash save.

    With several workers every worker saves (saving may need collectives) but only the chief
    into train_logdir; the others into a temporary folder, deleted after each save.

    Args:
        train_logdir: str, the run's folder.
        model: the trained keras.Model.
        optimizer: its keras optimizer; `optimizer.iterations` (int64 []) is the global step.
        iterator: the input iterator of `distribute.make_iterator`.
        strategy: the tf.distribute.Strategy of the run.
    """

    def __init__(self, train_logdir, model, optimizer, iterator, strategy):
        self.train_logdir = train_logdir
        self._optimizer = optimizer
        index, self._num_workers = distribute.worker_index_and_count(strategy)
        self._is_chief = distribute.is_chief(strategy)
        self._objects = training_state(model, optimizer)
        self._iterator_manager = None
        if self._num_workers == 1:
            self._objects["iterator"] = iterator
        else:
            self._iterator_manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(iterator=iterator),
                os.path.join(train_logdir, ITERATORS_DIR, f"worker_{index}"),
                max_to_keep=MAX_CHECKPOINTS_TO_KEEP, checkpoint_name=ITERATOR_CHECKPOINT_NAME)
        directory = train_logdir if self._is_chief else os.path.join(
            train_logdir, f"worker_{index}_temp")
        self._manager = self._make_manager(tf.train.Checkpoint(**self._objects), directory)

    @staticmethod
    def _make_manager(checkpoint, directory):
        return tf.train.CheckpointManager(checkpoint, directory,
                                          max_to_keep=MAX_CHECKPOINTS_TO_KEEP,
                                          checkpoint_name=CHECKPOINT_NAME)

    @property
    def step(self):
        """The global step: the optimizer's number of updates (int)."""
        return int(self._optimizer.iterations.numpy())

    def latest(self):
        """The prefix of the latest checkpoint in train_logdir, or None."""
        return checkpoints.resolve_checkpoint(self.train_logdir, missing_ok=True)

    def restore_latest(self):
        """Restores model, optimizer (hence the step) and the saved input iterator(s) from the
        latest checkpoint in train_logdir; returns its prefix, or None if there is none."""
        path = self.latest()
        if path is None:
            return None
        # What a checkpoint lacks starts over: the input after a crash save for an input error,
        # dropout's masks in checkpoints of versions that did not save the seed states.
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        checkpoint = tf.train.Checkpoint(
            **{name: value for name, value in self._objects.items() if name in saved})
        checkpoint.restore(path).assert_existing_objects_matched()
        if self._iterator_manager:
            self._restore_worker_iterator()
        logging.info("Restored %s: resuming at step %d.", path, self.step)
        return path

    def _restore_worker_iterator(self):
        """Restores this worker's iterator saved at the current step, if there is one."""
        manager = self._iterator_manager
        paths = [p for p in manager.checkpoints if p.endswith(f"-{self.step}")]
        if paths:
            manager.checkpoint.restore(paths[-1]).assert_consumed()
            logging.info("Restored the input iterator of this worker from %s.", paths[-1])
        else:
            logging.warning("No input iterator of step %d in %s: this worker's input starts "
                            "over.", self.step, manager.directory)

    def save(self):
        """Saves the current step (on every worker: saving may need collectives)."""
        step = self.step
        path = self._manager.save(checkpoint_number=step)
        if self._iterator_manager:
            self._iterator_manager.save(checkpoint_number=step)
        if self._is_chief:
            logging.info("Saved %s.", path)
        else:
            shutil.rmtree(self._manager.directory, ignore_errors=True)

    def save_last_good_step(self, with_iterator):
        """After an error between or in steps: saves the last completed step, if no checkpoint
        has it, with one worker (several would need all the workers for the collectives).

        Args:
            with_iterator: bool, also the input iterator, if it can be saved; False after an
                error of the input pipeline (a fixed input is another dataset: a resumed run
                starts its input over).
        """
        step = self.step
        latest = self.latest()
        if (self._num_workers > 1 or step == 0
                or (latest and checkpoints.checkpoint_step(latest) == step)):
            return
        without_iterator = self._make_manager(
            tf.train.Checkpoint(
                **{name: value for name, value in self._objects.items() if name != "iterator"}),
            self.train_logdir)
        for manager in (self._manager, without_iterator)[0 if with_iterator else 1:]:
            try:
                path = manager.save(checkpoint_number=step)
            except Exception as error:  # The original error matters more: log this one.
                logging.error("Saving step %d failed: %s", step, error)
            else:
                logging.error("Stopped by an error; saved the last good step in %s.", path)
                return
