"""tf.distribute for training: the strategy, the cluster of TF_CONFIG, distributed batches.

The global batch of `train_batch_size` images is split over the replicas. Each worker reads its
own shard of the input (deeplab's per-worker sharding); its local replicas take successive
batches of its pipeline, through an ordinary iterator that tf.train.Checkpoint can save.
"""
import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("mirrored", "multi_worker", "one_device")


def tf_config_num_workers():
    """Number of worker tasks (chief included) named by the TF_CONFIG environment variable."""
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def get_strategy(name="mirrored"):
    """The tf.distribute strategy called `name`.

    Args:
        name: "mirrored" (all local GPUs, or the CPU; becomes "multi_worker" when TF_CONFIG names
            several workers), "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG) or
            "one_device" (the first GPU, or the CPU: for debugging).

    Returns:
        a tf.distribute.Strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r} is not one of {STRATEGIES}")
    if name == "mirrored" and tf_config_num_workers() > 1:
        logging.info("TF_CONFIG names %d workers: using MultiWorkerMirroredStrategy.",
                     tf_config_num_workers())
        name = "multi_worker"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "one_device":
        device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    return tf.distribute.MirroredStrategy()


def worker_index_and_count(strategy):
    """(index of this worker's input pipeline, number of workers) as in deeplab's sharding."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    num_chiefs = len(cluster.get("chief", []))
    num_workers = num_chiefs + len(cluster.get("worker", []))
    if resolver.task_type == "chief":
        return 0, max(num_workers, 1)
    return num_chiefs + (resolver.task_id or 0), max(num_workers, 1)


def is_chief(strategy):
    """Whether this worker writes the checkpoints and logs (always true with one worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    if resolver.task_type in (None, "chief"):
        return True
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief



def input_context(strategy):
    """The tf.distribute.InputContext of this worker (for sharding and the batch size)."""
    index, count = worker_index_and_count(strategy)
    return tf.distribute.InputContext(num_input_pipelines=count, input_pipeline_id=index,
                                      num_replicas_in_sync=strategy.num_replicas_in_sync)


def make_iterator(strategy, dataset_fn):
    """A checkpointable iterator over this worker's per-replica batches.

    `dataset_fn(input_context)` returns a tf.data.Dataset of (images, labels) batches of
    `input_context.get_per_replica_batch_size(train_batch_size)` examples. Like
    `strategy.distribute_datasets_from_function`, the local replicas take successive batches
    (`next_batch`); unlike it, the iterator is an ordinary one that tf.train.Checkpoint can save.
    """
    options = tf.data.Options()
    # Datasets with stateful ops (a user's random augmentation; our pipeline's is stateless)
    # can still be saved: their buffered outputs are, the ops' state is not.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return iter(dataset_fn(input_context(strategy)).with_options(options))


def next_batch(strategy, iterator, per_replica_batch_size):
    """The next distributed (images, labels) batch: one per-replica batch per local replica.

    Raises:
        ValueError: a batch of another size (naming --train_batch_size and the replicas).
    """
    num_local = len(strategy.extended.worker_devices)
    batches = [next(iterator) for _ in range(num_local)]
    for images, _ in batches:
        if images.shape[0] != per_replica_batch_size:
            raise ValueError(
                f"the dataset yielded a batch of {images.shape[0]} images; each replica needs "
                f"{per_replica_batch_size} (--train_batch_size="
                f"{per_replica_batch_size * strategy.num_replicas_in_sync} over "
                f"{strategy.num_replicas_in_sync} replicas): batch with drop_remainder=True")
    return strategy.experimental_distribute_values_from_function(
        lambda context: batches[context.replica_id_in_sync_group % num_local])
