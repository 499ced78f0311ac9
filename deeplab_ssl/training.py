"""The training loop: options, the distributed train step, and the loop around it.

The loop is deeplab's `train.py` on `tf.distribute`: the global batch of `train_batch_size`
images is split over the replicas (`distribute`), each replica computes its part of the loss
sums, and `losses.cross_replica_loss` all-reduces them so every replica sees the loss of the
WHOLE global batch. The optimizer SUM-all-reduces the gradients, so a step does not depend on
the number of replicas (apart from batch norm statistics, which are per replica as in deeplab).
The learning rate, gradient multipliers and initial weights are deeplab's (`train_utils`); the
checkpoints and the resume are `checkpointing`'s, the logs `train_log`'s.
"""
import dataclasses
import math

import keras
import tensorflow as tf
from absl import logging

from deeplab_ssl import checkpointing, distribute, losses, train_log, train_utils

MIXED_PRECISION_POLICIES = ("none", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class TrainOptions:
    """Settings of the training loop; field names are deeplab's train.py flag names."""
    train_logdir: str
    train_batch_size: int = 8
    training_number_of_steps: int = 30000
    learning_policy: str = "poly"
    base_learning_rate: float = 1e-4
    learning_rate_decay_factor: float = 0.1
    learning_rate_decay_step: int = 2000
    learning_power: float = 0.9
    slow_start_step: int = 0
    slow_start_learning_rate: float = 1e-4
    momentum: float = 0.9
    log_steps: int = 10
    save_interval_steps: int = 1000
    save_summaries_images: bool = True
    mixed_precision: str = "none"
    tf_initial_checkpoint: str = None
    initialize_last_layer: bool = True
    last_layers_contain_logits_only: bool = False
    last_layer_gradient_multiplier: float = 1.0

    def __post_init__(self):
        def check(ok, flag, requirement):
            if not ok:
                raise ValueError(f"--{flag}={getattr(self, flag)!r}: {requirement}")

        check(bool(self.train_logdir), "train_logdir", "a folder for checkpoints is required")
        check(self.train_batch_size >= 1, "train_batch_size", "must be >= 1")
        check(self.training_number_of_steps >= 1, "training_number_of_steps", "must be >= 1")
        check(self.base_learning_rate > 0, "base_learning_rate", "must be > 0")
        check(self.slow_start_learning_rate >= 0, "slow_start_learning_rate", "must be >= 0")
        check(self.learning_power > 0, "learning_power", "must be > 0")
        check(self.learning_rate_decay_factor > 0, "learning_rate_decay_factor", "must be > 0")
        check(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        check(self.last_layer_gradient_multiplier >= 0, "last_layer_gradient_multiplier",
              "must be >= 0")
        check(self.log_steps >= 1, "log_steps", "must be >= 1")
        check(self.save_interval_steps >= 1, "save_interval_steps", "must be >= 1")
        check(self.mixed_precision in MIXED_PRECISION_POLICIES, "mixed_precision",
              f"must be one of {MIXED_PRECISION_POLICIES}")
        self.learning_rate()  # Checks the learning-policy flags.

    def learning_rate(self):
        """The train_utils.DeepLabLearningRate of these options."""
        return train_utils.DeepLabLearningRate(
            self.base_learning_rate, self.training_number_of_steps, self.learning_policy,
            self.learning_power, self.slow_start_step, self.slow_start_learning_rate,
            self.learning_rate_decay_step, self.learning_rate_decay_factor)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or Inf; training stopped without saving."""


class _InputError(Exception):
    """Carries (as its __cause__) an error of the input pipeline out of the training loop."""


class Trainer:
    """One training run: model, optimizer, loss, the distributed step and the loop.

    Args:
        model_fn: callable () -> keras.Model mapping float32 images [B,H,W,3] to logits
            [B,H,W,C] at the label resolution; called inside the strategy scope under the
            mixed-precision policy.
        loss: a `deeplab_ssl.losses.SumsLoss`; the trainer gives it its step (`set_step`).
        options: TrainOptions.
        strategy: a tf.distribute.Strategy; default `distribute.get_strategy()`.
        colormap: name of a `deeplab_ssl.visualization` colormap for the TensorBoard pictures
            (`train_log`).
    """

    def __init__(self, model_fn, loss, options, strategy=None, colormap="pascal"):
        self.options = options
        self.strategy = strategy or distribute.get_strategy()
        self.loss = loss
        self.colormap = colormap
        replicas = self.strategy.num_replicas_in_sync
        if options.train_batch_size % replicas:
            raise ValueError(
                f"--train_batch_size={options.train_batch_size} is not divisible by the "
                f"{replicas} replicas of the strategy")
        self.per_replica_batch_size = options.train_batch_size // replicas
        self.is_chief = distribute.is_chief(self.strategy)
        with train_utils.dtype_policy(options.mixed_precision), self.strategy.scope():
            self.model = model_fn()
            self.optimizer = train_utils.make_optimizer(
                options.learning_rate(), options.momentum, options.mixed_precision)
            self.optimizer.build(self.model.trainable_variables)
        self._gradient_multipliers = train_utils.gradient_multipliers(
            self.model.trainable_variables, options.last_layer_gradient_multiplier,
            options.last_layers_contain_logits_only)
        loss.set_step(self.optimizer.iterations)  # For scheduled losses (SumsLoss.set_step).
        self._distributed_step = tf.function(self._distributed_step_fn)

    @property
    def step(self):
        """The global step: the number of updates applied so far (int)."""
        return int(self.optimizer.iterations.numpy())

    def _replica_step(self, images, labels, statistics):
        """One replica's share of a step, on its images float32 [b,H,W,3] and labels int32
        [b,H,W,1]; returns global values (the same on all replicas).

        Returns {"sums": the loss's global sums, "loss", "regularization_loss", "total_loss",
        "non_finite_gradients" (without loss scaling): float32 scalars}, and with `statistics`
        (a Python bool) the parts of the loss's `statistics` for the global batch
        ("statistic_sums", "statistic_maxima").
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        loss_scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss, sums = losses.cross_replica_loss(self.loss, labels, logits)
            regularization = tf.cast(tf.add_n(self.model.losses), tf.float32) \
                if self.model.losses else tf.constant(0.0)
            # Gradients are SUM-reduced over replicas: count the weight decay once.
            objective = loss + regularization / replicas
            if loss_scaling:
                objective = self.optimizer.scale_loss(objective)
        variables = self.model.trainable_variables
        gradients = [
            gradient if multiplier == 1.0 or gradient is None else gradient * multiplier
            for gradient, multiplier in zip(tape.gradient(objective, variables),
                                            self._gradient_multipliers)]
        self.optimizer.apply_gradients(zip(gradients, variables))
        metrics = dict(sums=sums, loss=loss, regularization_loss=regularization,
                       total_loss=loss + regularization)
        if statistics:
            statistic_sums, maxima = self.loss.statistics(labels, logits)
            # all_reduce fails on an empty structure (a loss without statistics).
            metrics["statistic_sums"] = context.all_reduce(
                tf.distribute.ReduceOp.SUM, statistic_sums) if statistic_sums else {}
            # tf.distribute reduces by SUM or MEAN only: gather the replicas' maxima.
            metrics["statistic_maxima"] = {
                name: tf.reduce_max(context.all_gather(value[None], axis=0), axis=0)
                for name, value in maxima.items()}
        if not loss_scaling:  # The loss-scale optimizer skips non-finite updates itself.
            # A finite loss can still give NaN gradients (e.g. NaN pixels zeroed by a ReLU).
            num_non_finite = tf.add_n([
                tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                for g in gradients if g is not None])
            metrics["non_finite_gradients"] = context.all_reduce(
                tf.distribute.ReduceOp.SUM, num_non_finite)
        return metrics

    def _distributed_step_fn(self, batch, statistics):
        images, labels = batch
        return self.strategy.run(self._replica_step, args=(images, labels),
                                 kwargs=dict(statistics=statistics))

    def train_step(self, batch, statistics=False):
        """Runs one step on a distributed batch; returns the figures of the global batch.

        Returns:
          dict of floats: the loss's sums, `loss`, `regularization_loss` (weight decay),
          `total_loss`, `non_finite_gradients` (without loss scaling), the loss's `terms` and
          `sum_statistics` (e.g. the SSL's `hard_example_fraction`, paper Fig. 4); with
          `statistics`, also "statistics": the loss's `summarize_statistics` (e.g. the SSL's
          Fig. 3 figures and per-class lists).
        """
        outputs = tf.nest.map_structure(
            lambda value: self.strategy.experimental_local_results(value)[0].numpy(),
            self._distributed_step(batch, statistics))
        sums = {name: float(value) for name, value in outputs.pop("sums").items()}
        statistic_parts = [outputs.pop(name, None)
                           for name in ("statistic_sums", "statistic_maxima")]
        metrics = dict(sums, **{name: float(value) for name, value in outputs.items()})
        for name, value in {**self.loss.terms(sums), **self.loss.sum_statistics(
                sums, self.model.output_shape[-1])}.items():
            metrics[name] = float(value)
        if statistics:
            metrics["statistics"] = self.loss.summarize_statistics(*statistic_parts)
        return metrics

    def make_iterator(self, dataset_fn):
        """`distribute.make_iterator` of this trainer's strategy."""
        return distribute.make_iterator(self.strategy, dataset_fn)

    def next_batch(self, iterator):
        """`distribute.next_batch` of this trainer's strategy and batch size."""
        return distribute.next_batch(self.strategy, iterator, self.per_replica_batch_size)

    def train(self, dataset_fn):
        """Trains until `training_number_of_steps` updates, resuming from train_logdir.

        Args:
            dataset_fn: callable (tf.distribute.InputContext) -> tf.data.Dataset of repeated
                (images float32 [b,h,w,3], labels int32 [b,h,w,1]) with
                b = input_context.get_per_replica_batch_size(train_batch_size).

        Returns:
            int, the final step.

        Raises:
            NonFiniteLossError: a loss was NaN or Inf; nothing was saved after the last good
                checkpoint. Any other error (the input pipeline's, a step's, Ctrl-C) first saves
                the last good step, with one worker.
        """
        options = self.options
        iterator = self.make_iterator(dataset_fn)
        saver = checkpointing.TrainCheckpoints(options.train_logdir, self.model, self.optimizer,
                                               iterator, self.strategy)
        if saver.restore_latest() is None and options.tf_initial_checkpoint:
            train_utils.initialize_from_checkpoint(
                self.model, options.tf_initial_checkpoint, options.initialize_last_layer,
                options.last_layers_contain_logits_only)
        if self.step >= options.training_number_of_steps:
            logging.info("Nothing to train: %s holds step %d of --training_number_of_steps=%d.",
                         options.train_logdir, self.step, options.training_number_of_steps)
            return self.step
        try:
            return self._train_steps(iterator, saver)
        except NonFiniteLossError:
            raise  # The weights may hold NaN or Inf now: nothing is saved.
        except _InputError as error:
            saver.save_last_good_step(with_iterator=False)
            raise error.__cause__ from None
        except (Exception, KeyboardInterrupt):
            saver.save_last_good_step(with_iterator=True)
            raise

    def _train_steps(self, iterator, saver):
        """The loop of `train`, from the current step to training_number_of_steps."""
        options = self.options
        total = options.training_number_of_steps
        step = self.step
        logger = train_log.TrainLogger(options.train_logdir, step, total,
                                       options.train_batch_size, self.is_chief, self.colormap)
        schedule = options.learning_rate()
        while step < total:
            try:
                batch = self.next_batch(iterator)
            except StopIteration:
                raise ValueError(f"the training dataset ended at step {step}; it must repeat "
                                 f"for --training_number_of_steps={total}") from None
            except Exception as error:
                raise _InputError() from error
            next_step = step + 1
            is_log_step = next_step % options.log_steps == 0 or next_step == total
            metrics = self.train_step(batch, statistics=is_log_step)
            _check_finite(metrics, next_step, saver)
            step = self.step
            if is_log_step:
                values = train_log.loss_values(self.loss, metrics, self.model.output_shape[-1])
                logger.log(step, dict(learning_rate=float(schedule(step - 1)), **values),
                           metrics.get("statistics", {}))
            if step % options.save_interval_steps == 0 or step == total:
                saver.save()
                if options.save_summaries_images:
                    images, labels = (self.strategy.experimental_local_results(t)[0]
                                      for t in batch)
                    logger.write_images(self.model, images, labels, step)
                logger.flush()
        return step


def _check_finite(metrics, step, saver):
    """Raises NonFiniteLossError naming the last good checkpoint if the loss or the gradients
    of step `step` (train_step's `metrics`) hold NaN or Inf."""
    # The statistics come from the same logits: the scalars tell.
    if (all(math.isfinite(value) for value in metrics.values() if isinstance(value, float))
            and not metrics.get("non_finite_gradients")):
        return
    raise NonFiniteLossError(
        f"non-finite loss or gradients at step {step}: {train_log.format_values(metrics)}. "
        f"Stopped without saving; the last good checkpoint is {saver.latest()}.")
