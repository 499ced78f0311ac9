"""deeplab's tf.Example schema for segmentation records: encode and parse.

Records written here load in the original deeplab code and records written by deeplab's
`build_*_data.py` scripts load here unchanged. Shards are named like deeplab's:
`SPLIT-00000-of-00004.tfrecord`.
"""
import json
import os

import tensorflow as tf

# deeplab's build_data._IMAGE_FORMAT_MAP: the stored format names.
IMAGE_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}


def shard_filename(split, shard_id, num_shards):
    """deeplab's shard name, e.g. `train-00001-of-00004.tfrecord`."""
    return f"{split}-{shard_id:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(split):
    """Glob pattern of all shards of `split`."""
    return f"{split}-*-of-*.tfrecord"


def manifest_filename(split):
    """The manifest of a split's build, next to its shards, e.g. `train.manifest.json`."""
    return f"{split}.manifest.json"


def read_manifest(dataset_dir, split):
    """The manifest `write_split` wrote for `split` in `dataset_dir` (a dict), or None.

    Keys: split, num_examples, shards (a list of {name, num_examples, bytes}), builder (the
    builder's arguments).
    """
    path = os.path.join(dataset_dir, manifest_filename(split))
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def manifest_split_sizes(dataset_dir):
    """{split: num_examples} of the manifests in `dataset_dir`."""
    sizes = {}
    for path in tf.io.gfile.glob(os.path.join(dataset_dir, manifest_filename("*"))):
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
        sizes[manifest["split"]] = manifest["num_examples"]
    return sizes


def _bytes(value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(image_data, filename, height, width, seg_data, image_format="jpeg",
                   label_format="png"):
    """One serialized tf.Example in deeplab's schema (`build_data.image_seg_to_tfexample`).

    Args:
        image_data: bytes, the encoded RGB image (JPEG or PNG).
        filename: str, the image's name without folder (stored as `image/filename`).
        height, width: int, the image size in pixels.
        seg_data: bytes, the encoded single-channel label PNG, same size as the image.
        image_format: "jpeg"/"jpg" or "png".
        label_format: "png".

    Returns:
        bytes, the serialized tf.train.Example, the same in every process.
    """
    feature = {
        "image/encoded": _bytes(image_data),
        "image/filename": _bytes(filename),
        "image/format": _bytes(IMAGE_FORMATS[image_format.lower()]),
        "image/height": _int64(height),
        "image/width": _int64(width),
        "image/channels": _int64(3),
        "image/segmentation/class/encoded": _bytes(seg_data),
        "image/segmentation/class/format": _bytes(label_format),
    }
    # deterministic: the feature map in key order, so the same inputs give the same bytes in
    # every process (reproducible shards).
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


# deeplab's data_generator._parse_function keys and defaults.
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/segmentation/class/format": tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def parse_example(serialized):
    """Parses and decodes one record.

    Args:
        serialized: scalar tf.string, a serialized tf.Example in deeplab's schema.

    Returns:
        dict with `image` uint8 [H, W, 3], `label` uint8 [H, W, 1], `filename` tf.string,
        `height` and `width` int32 scalars from the record's header.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.io.decode_image(parsed["image/encoded"], channels=3, expand_animations=False)
    label = tf.io.decode_image(parsed["image/segmentation/class/encoded"], channels=1,
                               expand_animations=False)
    return {
        "image": image,
        "label": label,
        "filename": parsed["image/filename"],
        "height": tf.cast(parsed["image/height"], tf.int32),
        "width": tf.cast(parsed["image/width"], tf.int32),
    }
