"""tf.data input pipeline: tfrecord shards -> decode -> deeplab preprocessing -> batches.

The counterpart of deeplab's `datasets/data_generator.Dataset`, with parallel reads over the shard
files, parallel decoding and preprocessing (AUTOTUNE), a shuffle buffer of serialized records,
prefetch, per-worker sharding under tf.distribute, and bad records reported by filename. Only
complete splits are read (`complete_shards`): every shard present, as many examples as the
split's manifest (or, without one, the dataset's descriptor) says.
"""
import os
import re
import sys

import tensorflow as tf
from absl import logging

from deeplab_ssl import errors
from deeplab_ssl.datasets import descriptors, preprocess, records

AUTOTUNE = tf.data.AUTOTUNE

_FILENAME_FEATURE = {"image/filename": records.FEATURES["image/filename"]}


def _decode_or_fail(serialized):
    """records.parse_example, or a placeholder with ok=False where decoding raises an error.

    A decoding error inside a tf.data map would stop the pipeline without naming the record;
    running the decode in a one-element dataset with ignore_errors turns it into a flag instead.
    """
    decoded = tf.data.Dataset.from_tensors(serialized).map(
        lambda s: (records.parse_example(s), True)).ignore_errors()
    placeholder = tf.data.Dataset.from_tensors(({
        "image": tf.zeros([0, 0, 3], tf.uint8),
        "label": tf.zeros([0, 0, 1], tf.uint8),
        "filename": tf.constant(""),
        "height": tf.constant(0),
        "width": tf.constant(0),
    }, False))
    return decoded.concatenate(placeholder).take(1).get_single_element()


def decode_record(serialized):
    """Decodes one record in deeplab's schema and checks it.

    Args:
        serialized: scalar tf.string, a serialized tf.Example (see `records`).

    Returns:
        dict with `image` uint8 [H, W, 3], `label` uint8 [H, W, 1], `filename` tf.string,
        `height`, `width` int32 scalars (the decoded image size), `valid` bool scalar and
        `error` tf.string scalar: "bad record FILENAME: REASON" when not valid, where the
        image or label cannot be decoded or their sizes differ.
    """
    example, decoded = _decode_or_fail(serialized)
    filename = tf.io.parse_single_example(serialized, _FILENAME_FEATURE)["image/filename"]
    image_size = tf.shape(example["image"])[:2]
    label_size = tf.shape(example["label"])[:2]
    same_size = tf.reduce_all(tf.equal(image_size, label_size))
    reason = tf.cond(
        decoded,
        lambda: tf.strings.format("label size {}x{} differs from image size {}x{}", (
            label_size[0], label_size[1], image_size[0], image_size[1])),
        lambda: tf.constant("image or label cannot be decoded"))
    return {
        "image": example["image"],
        "label": example["label"],
        "filename": filename,
        "height": image_size[0],
        "width": image_size[1],
        "valid": tf.logical_and(decoded, same_size),
        "error": tf.strings.join(["bad record ", filename, ": ", reason]),
    }


def _fail_on_bad_record(example):
    message = tf.strings.join([errors.DATA_ERROR, example["error"], " (--skip_bad_records "
                               "skips such records)"])
    with tf.control_dependencies([tf.debugging.Assert(example["valid"], [message])]):
        return {key: tf.identity(value) for key, value in example.items()}


def _check_labels(example, descriptor):
    """`example`, once its label values are checked to be classes or the ignore label."""
    label = tf.cast(example["label"], tf.int32)
    fits = tf.logical_or(label < descriptor.num_classes, tf.equal(label, descriptor.ignore_label))
    message = tf.strings.join([
        errors.DATA_ERROR, "label value ",
        tf.strings.as_string(tf.reduce_max(tf.where(fits, -1, label))), " in ",
        example["filename"], f" is neither a class of --dataset={descriptor.name} (0 to "
        f"{descriptor.num_classes - 1}) nor its ignore label {descriptor.ignore_label}: give "
        "--ignore_label (or --num_classes) to fit the records"])
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(fits), [message])]):
        return {key: tf.identity(value) for key, value in example.items()}


def _skip_bad_records(examples):
    """Drops invalid examples, logging each with the running count of records skipped.

    Printed to stderr rather than through TensorFlow's C++ log, which TF_CPP_MIN_LOG_LEVEL=2
    (as set by the Makefile) would silence.
    """
    def count(num_skipped, example):
        num_skipped += tf.cast(tf.logical_not(example["valid"]), tf.int64)
        return num_skipped, (example, num_skipped)

    def log(example, num_skipped):
        if_bad = tf.cond(
            example["valid"], tf.no_op,
            lambda: tf.print("WARNING: skip_bad_records: skipped", example["error"], "(",
                             num_skipped, "bad records skipped so far )",
                             output_stream=sys.stderr))
        with tf.control_dependencies([if_bad]):
            return tf.identity(example["valid"])

    examples = examples.scan(tf.constant(0, tf.int64), count)
    return examples.filter(log).map(lambda example, _: example)


def _read_through(path):
    """(number of readable records, None) of a shard file, or (records before the damage, the
    reader's error message) where it is truncated or corrupt."""
    try:
        return int(tf.data.TFRecordDataset(path).reduce(0, lambda count, _: count + 1)), None
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            # Without TF's "{{function_node ...}}" prefix and "[Op:...]" suffix.
            return count, re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", error.message, flags=re.S)
        return count, None


def _shard_names(dataset_dir, split):
    """The shard file names of `split` in `dataset_dir`, and their number N of `-of-0000N`."""
    pattern = os.path.join(dataset_dir, records.shard_pattern(split))
    names = sorted(os.path.basename(path) for path in tf.io.gfile.glob(pattern))
    if not names:
        unfinished = tf.io.gfile.glob(pattern + ".tmp*")
        raise errors.UserError(
            f"no tfrecord shards of split {split!r} found: {pattern}" + (
                f"; {len(unfinished)} temporary files of an unfinished (killed?) build are "
                "there: build the split again" if unfinished else ""))
    counts = {int(re.search(r"-of-(\d+)\.tfrecord$", name).group(1)) for name in names}
    if len(counts) > 1:
        raise errors.UserError(f"the shards of split {split!r} in {dataset_dir} come from builds "
                               f"with {sorted(counts)} shards: build the split again")
    return names, counts.pop()


def complete_shards(dataset_dir, split, expected_size=None, skip_bad_records=False):
    """The shards of a split, checked to be complete: what `get_dataset` reads.

    Every shard of `-of-0000N` must exist. With the split's manifest (written by the builders),
    the shards must be the manifest's, and a shard whose size differs from the manifest's is
    read through to find how much of it is whole; without one, every shard is read through
    (counted) and `expected_size` (the descriptor's) is checked.

    Args:
        dataset_dir: str, folder of the shards.
        split: str.
        expected_size: int or None, the split's size where no manifest gives it.
        skip_bad_records: bool; a truncated or corrupt shard is then read up to the damage
            (logged), instead of an error.

    Returns:
        list of (shard path, number of records to read from it, -1 for all).

    Raises:
        ValueError: naming the missing, foreign or damaged shards, or the count that differs.
    """
    names, num_shards = _shard_names(dataset_dir, split)
    missing = sorted(set(records.shard_filename(split, i, num_shards)
                         for i in range(num_shards)) - set(names))
    if missing:
        raise errors.UserError(f"split {split!r} in {dataset_dir} is incomplete (a killed build?): "
                               f"missing {', '.join(missing)}; build it again")
    manifest = records.read_manifest(dataset_dir, split)
    built = {}
    if manifest is not None:
        built = {shard["name"]: shard for shard in manifest["shards"]}
        if set(built) != set(names):
            raise errors.UserError(f"the shards of split {split!r} in {dataset_dir} are not those "
                                   f"of its {records.manifest_filename(split)}: build it again")
        expected_size = manifest["num_examples"]
    else:
        logging.info("Split %r of %s has no manifest (built by an older version): counting its "
                     "records.", split, dataset_dir)
    shards, total = [], 0
    for name in names:
        path = os.path.join(dataset_dir, name)
        shard = built.get(name)
        if shard is not None and tf.io.gfile.stat(path).length == shard["bytes"]:
            count, error = shard["num_examples"], None
        else:
            count, error = _read_through(path)
        if error is None and shard is not None and count != shard["num_examples"]:
            error = f"{count} records where the manifest says {shard['num_examples']}"
        if error is not None:
            if not skip_bad_records:
                raise errors.UserError(
                    f"shard {path} is damaged after {count} readable records ({error}): build "
                    "the split again, or give --skip_bad_records to read what is whole")
            logging.warning("skip_bad_records: shard %s is damaged after %d records (%s); the "
                            "rest of it is skipped.", path, count, error)
            expected_size = None
        shards.append((path, count if error is not None else -1))
        total += count
    if expected_size is not None and total != expected_size:
        raise errors.UserError(f"split {split!r} in {dataset_dir} holds {total} examples where "
                               f"{expected_size} are expected: build it again")
    return shards


def resolve_defaults(is_training, crop_size, shuffle, repeat, deterministic):
    """get_dataset's (shuffle, repeat, deterministic): None means is_training, is_training,
    not is_training. Raises ValueError if training has no crop_size."""
    if is_training and crop_size is None:
        raise ValueError("get_dataset: training needs crop_size [crop_height, crop_width]")
    return (is_training if shuffle is None else shuffle,
            is_training if repeat is None else repeat,
            not is_training if deterministic is None else deterministic)


def preprocess_options(crop_size, min_resize_value, max_resize_value, resize_factor,
                       min_scale_factor, max_scale_factor, scale_factor_step_size, mean_pixel,
                       ignore_label):
    """Keyword arguments of preprocess.preprocess_image_and_label from get_dataset's."""
    crop_height, crop_width = crop_size if crop_size is not None else (None, None)
    return dict(crop_height=crop_height, crop_width=crop_width,
                min_resize_value=min_resize_value, max_resize_value=max_resize_value,
                resize_factor=resize_factor, min_scale_factor=min_scale_factor,
                max_scale_factor=max_scale_factor, scale_factor_step_size=scale_factor_step_size,
                mean_pixel=mean_pixel, ignore_label=ignore_label)


def shuffle_and_repeat(dataset, shuffle, shuffle_buffer_size, repeat, seed):
    """Shuffles (each epoch anew) then repeats forever, as deeplab's data_generator."""
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    if repeat:
        dataset = dataset.repeat()
    return dataset


def preprocess_and_batch(examples, batch_size, is_training, seed=None, deterministic=False,
                         **preprocess_options):
    """Applies deeplab's preprocessing to decoded examples and batches them.

    Args:
        examples: tf.data.Dataset of dicts with `image` uint8 [H, W, 3], `label` integer
            [H, W, 1], `filename` tf.string (e.g. from `decode_record`).
        batch_size: int, examples per batch.
        is_training, seed, deterministic: see `get_dataset`.
        **preprocess_options: keyword arguments of `preprocess.preprocess_image_and_label`
            (crop_height, crop_width, min_resize_value, ..., mean_pixel, ignore_label).

    Returns:
        See `get_dataset`.
    """
    if is_training:
        # One stateless seed [2] per example, attached before the parallel map so that the
        # augmentation of a record does not depend on which thread runs it.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)

        def train_map(example, example_seed):
            return preprocess.preprocess_image_and_label(
                example["image"], example["label"], is_training=True, seed=example_seed,
                **preprocess_options)

        batches = tf.data.Dataset.zip(examples, seeds).map(
            train_map, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=True)
    else:
        def eval_map(example):
            image, label = preprocess.preprocess_image_and_label(
                example["image"], example["label"], is_training=False, **preprocess_options)
            size = tf.shape(example["image"])[:2]
            return {"image": image, "label": label, "filename": example["filename"],
                    "height": size[0], "width": size[1]}

        def pad_with_mean_pixel(batch):
            mean = tf.constant(preprocess_options["mean_pixel"], tf.float32)
            return dict(batch, image=tf.where(batch["image"] < 0, mean, batch["image"]))

        # padded_batch pads with one scalar per component: pad images with -1, which no raw
        # pixel has, then put the mean pixel there.
        batches = examples.map(eval_map, num_parallel_calls=AUTOTUNE).padded_batch(
            batch_size, padding_values={"image": -1.0, "label": preprocess_options["ignore_label"],
                                        "filename": "", "height": 0, "width": 0})
        batches = batches.map(pad_with_mean_pixel, num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    # The ops tf.data calls stateful here (the one-element decode in `decode_record`, the bad
    # record assertion and log) keep no state from one element to the next, and the random
    # seeds come from a checkpointable Dataset.random: a saved iterator resumes exactly.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return batches.prefetch(AUTOTUNE).with_options(options)



def get_dataset(dataset_name, dataset_dir, split, batch_size, crop_size=None, is_training=False,
                min_scale_factor=1.0, max_scale_factor=1.0, scale_factor_step_size=0.0,
                min_resize_value=None, max_resize_value=None, resize_factor=None,
                mean_pixel=(127.5, 127.5, 127.5), num_readers=4, shuffle=None,
                shuffle_buffer_size=100, repeat=None, deterministic=None, seed=None,
                skip_bad_records=False, input_context=None):
    """The tf.data pipeline of one split of a dataset's tfrecords, deeplab's way.

    Args:
        dataset_name: str, a dataset name of `descriptors.get_descriptor` (with dataset_dir), or
            a descriptors.DatasetDescriptor: it gives the classes, ignore_label and the splits.
        dataset_dir: str, folder of the shards `SPLIT-00000-of-0000N.tfrecord`.
        split: str, a split of the dataset, e.g. "train_aug" or "val".
        batch_size: int, the global batch size; under `input_context` each input pipeline
            makes batches of `input_context.get_per_replica_batch_size(batch_size)`.
        crop_size: [crop_height, crop_width] ints; required for training; for evaluation, images
            smaller than it are padded to it (deeplab's eval_crop_size), None pads nothing.
        is_training: bool, training (augment, crop, (images, labels) tuples) or evaluation
            (whole images, dicts).
        min_scale_factor, max_scale_factor, scale_factor_step_size: floats, deeplab's random
            scale (training only), e.g. 0.5, 2.0, 0.25.
        min_resize_value, max_resize_value, resize_factor: deeplab's resizing of every image
            (training and evaluation) before the rest, e.g. 513, 513, 16 for ADE20K; see
            `preprocess.resize_to_range`. None: no resizing.
        mean_pixel: 3 floats, padding value of images: the model variant's mean pixel
            (`deeplab_ssl.core.feature_extractor.mean_pixel(model_variant)`).
        num_readers: int, shard files read in parallel (interleave cycle length).
        shuffle: bool, shuffle files and records; defaults to is_training.
        shuffle_buffer_size: int, records in the shuffle buffer (serialized, so cheap).
        repeat: bool, repeat forever; defaults to is_training.
        deterministic: bool, keep the element order fixed despite parallelism (with `seed`,
            training batches are identical from run to run); defaults to not is_training, so
            evaluation follows the order of the records.
        seed: int or None, seed of file and record shuffling and of the augmentation.
        skip_bad_records: bool; False: a record whose image or label cannot be decoded, or whose
            label size differs from the image's, stops iteration with an InvalidArgumentError
            "bad record FILENAME: REASON"; True: such records are skipped and each is logged
            (a warning on stderr) with the running count of skipped records. The same for
            shards: False stops at a truncated or corrupt shard (naming it) before reading;
            True reads it up to the damage (`complete_shards`).
        input_context: tf.distribute.InputContext or None; shards the input per pipeline (by
            files when there are at least as many files as pipelines, else by records).

    Returns:
        tf.data.Dataset. Training: tuples (images float32 [B, crop_height, crop_width, 3] raw
        pixels in [0, 255], labels int32 [B, crop_height, crop_width, 1]) with a static batch
        size B (the last partial batch is dropped), ready for model.fit.
        Evaluation: dicts of `image` float32 [B, h, w, 3], `label` int32 [B, h, w, 1] (h, w the
        largest padded size in the batch: padding with the mean pixel and the ignore label at
        the bottom/right), `filename` tf.string [B], `height`, `width` int32 [B] (the original
        image sizes, before any min_resize_value resizing); batch_size 1 keeps each image at
        its own size.

    Raises:
        ValueError: unknown dataset or split (naming it), no shards matching the glob (naming the
            path), an incomplete or damaged split (`complete_shards`), or training without
            crop_size. Labels outside the dataset's classes that are not its ignore label stop
            the iteration with an InvalidArgumentError naming the value, the record and the flags.
    """
    descriptor = (dataset_name if isinstance(dataset_name, descriptors.DatasetDescriptor)
                  else descriptors.get_descriptor(dataset_name, dataset_dir))
    shuffle, repeat, deterministic = resolve_defaults(
        is_training, crop_size, shuffle, repeat, deterministic)
    files = complete_shards(dataset_dir, split, descriptor.split_size(split), skip_bad_records)

    shard_records = False
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        num_pipelines = input_context.num_input_pipelines
        if len(files) >= num_pipelines:
            files = files[input_context.input_pipeline_id::num_pipelines]
        else:
            shard_records = num_pipelines > 1
        if seed is not None:
            seed += input_context.input_pipeline_id

    paths, counts = zip(*files)
    dataset = tf.data.Dataset.from_tensor_slices(
        (list(paths), tf.constant(counts, tf.int64)))
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        lambda path, count: tf.data.TFRecordDataset(path).take(count),
        cycle_length=min(num_readers, len(files)), num_parallel_calls=AUTOTUNE)
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    dataset = shuffle_and_repeat(dataset, shuffle, shuffle_buffer_size, repeat, seed)
    examples = dataset.map(decode_record, num_parallel_calls=AUTOTUNE)
    if skip_bad_records:
        examples = _skip_bad_records(examples)
    else:
        examples = examples.map(_fail_on_bad_record)
    examples = examples.map(lambda example: _check_labels(example, descriptor))
    return preprocess_and_batch(
        examples, batch_size, is_training, seed, deterministic,
        **preprocess_options(crop_size, min_resize_value, max_resize_value, resize_factor,
                             min_scale_factor, max_scale_factor, scale_factor_step_size,
                             mean_pixel, descriptor.ignore_label))


def label_histogram(descriptor, dataset_dir, split):
    """Per class, its pixels in the split and the labelled pixels of the images that show it.

    What median frequency balancing needs (train_utils.median_frequency_weights). Reads the
    whole split once (CamVid's 367 training labels: a few seconds).

    Args:
        descriptor: datasets.descriptors.DatasetDescriptor.
        dataset_dir: str, folder of the split's shards.
        split: str.

    Returns:
        (pixel_counts, image_pixel_counts): int64 numpy arrays [num_classes]; pixels labelled
        ignore_label count in neither.
    """
    num_classes = descriptor.num_classes

    def counts(example):
        labels = tf.reshape(tf.cast(example["label"], tf.int32), [-1])
        labels = tf.boolean_mask(labels, tf.not_equal(labels, descriptor.ignore_label))
        histogram = tf.math.bincount(labels, minlength=num_classes, maxlength=num_classes,
                                     dtype=tf.int64)
        shown = tf.where(histogram > 0, tf.reduce_sum(histogram), tf.zeros_like(histogram))
        return histogram, shown

    zeros = tf.zeros([num_classes], tf.int64)
    pixel_counts, image_pixel_counts = get_dataset(descriptor, dataset_dir, split, 1).map(
        counts).reduce((zeros, zeros), lambda total, image: (total[0] + image[0],
                                                             total[1] + image[1]))
    return pixel_counts.numpy(), image_pixel_counts.numpy()
