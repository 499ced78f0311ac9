"""What every record builder shares: reading and checking image/label pairs, and the shard writer.

Each `build_*_data.py` lists its (image, label) files and hands them to `write_split`, which
encodes them with `encode_pair` (or any other function) and writes deeplab's shards
`SPLIT-00000-of-0000N.tfrecord`. Checks made as it goes, with the file named in the error:
the image and its label must have the same size, label values must be < num_classes or equal
the ignore label, and every file must be readable. A split is replaced all at once or not at
all: its shards are written under temporary names and renamed only when all are complete; then
come the split's manifest (`SPLIT.manifest.json`: examples, shards, the builder's arguments) and
the dataset's description (`dataset.json`, read by every command line tool).
"""
import io
import json
import math
import os
import re

import numpy as np
import tensorflow as tf
import tqdm
from absl import flags, logging
from PIL import Image

from deeplab_ssl import errors
from deeplab_ssl.datasets import descriptors, records

# PIL's format names -> the names stored in `image/format`.
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
# Image modes deeplab's decoder reads as RGB without help; others are converted to RGB PNG.
_DECODABLE_MODES = ("RGB", "L")
TEMP_SUFFIX = ".tmp"


def define_output_flags(num_shards):
    """Defines --output_dir, --num_shards (default `num_shards`) and --resize.

    Builders call this (and define their other flags) only when run as a script: they share
    deeplab's flag names and must stay importable together (tests, notebooks).
    """
    flags.DEFINE_string("output_dir", "./tfrecord", "Where the shards are written.")
    flags.DEFINE_integer("num_shards", num_shards, "Shards per split.")
    flags.DEFINE_list("resize", None,
                      "Optional HEIGHT,WIDTH to resize every example to (bilinear image, "
                      "nearest-neighbour label), e.g. 180,240.")


def parse_size(values):
    """`["180", "240"]` (a --resize flag) -> (180, 240); None or empty -> None."""
    if not values:
        return None
    if len(values) != 2 or not all(str(v).isdigit() and int(v) > 0 for v in values):
        raise errors.UserError(f"--resize must be HEIGHT,WIDTH in pixels, got {values!r}")
    return int(values[0]), int(values[1])


def read_label(path):
    """Reads a label file as class indices.

    Args:
        path: str, a single-channel PNG (grayscale, or palette as in VOC's SegmentationClass,
            whose palette index is the class) or an SBD `cls/*.mat` file (GTcls.Segmentation).

    Returns:
        np.ndarray [H, W] of integer class indices (uint8 for 8-bit files).

    Raises:
        ValueError naming the file if it cannot be read or is not single-channel.
    """
    if path.endswith(".mat"):
        return _read_sbd_mat(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            label = Image.open(io.BytesIO(f.read()))
            label.load()
    except Exception as e:  # PIL raises several types for bad files; name the file in all.
        raise errors.UserError(f"cannot read label {path}: {e}") from e
    if label.mode not in ("P", "L", "I", "I;16"):
        raise errors.UserError(
            f"label {path} has mode {label.mode}; expected a single-channel PNG of class "
            "indices (grayscale or palette), not colors")
    return np.asarray(label)


def _read_sbd_mat(path):
    try:
        import scipy.io  # Only SBD needs scipy: `pip install scipy`.
    except ImportError as e:
        raise ImportError(f"reading the SBD label {path} needs scipy: pip install scipy") from e
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation)
    except Exception as e:
        raise errors.UserError(f"cannot read SBD label {path} (GTcls.Segmentation): {e}") from e


def read_image(path):
    """(raw file bytes, loaded PIL image); ValueError naming the file if unreadable."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        image = Image.open(io.BytesIO(data))
        image.load()  # Decodes fully, so truncated files fail here, not in training.
    except Image.UnidentifiedImageError as e:  # Its message names a BytesIO, not the file.
        raise errors.UserError(f"cannot read image {path}: not an image, or a corrupt one"
                               ) from e
    except Exception as e:
        raise errors.UserError(f"cannot read image {path}: {e}") from e
    return data, image


def check_label(label, num_classes, ignore_label, where):
    """Raises ValueError naming `where` and the bad values unless every label value is a class
    (< num_classes) or the ignore label. label: integer np.ndarray [H, W]."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        raise errors.UserError(
            f"label {where} has values {bad[:10].tolist()} outside the {num_classes} classes "
            f"(ignore_label {ignore_label})")


def encode_label(label):
    """PNG bytes of a label np.ndarray [H, W] of values in 0..255 (8-bit grayscale)."""
    buffer = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image, image_format="png"):
    """JPEG (quality 95) or PNG bytes of an RGB image, a PIL image or uint8 np.ndarray [H,W,3]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, mode="RGB")
    buffer = io.BytesIO()
    if records.IMAGE_FORMATS[image_format] == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_arrays(name, image, label, num_classes, ignore_label, image_format="png"):
    """Checks and encodes an image and label held in memory as a record in deeplab's schema.

    Args:
        name: str, stored as `image/filename` and named in errors.
        image: uint8 np.ndarray [H, W, 3].
        label: integer np.ndarray [H, W].
        num_classes, ignore_label: int, the allowed label values.
        image_format: "jpeg" (quality 95) or "png", how the image is stored.

    Returns:
        bytes, a serialized tf.Example.
    """
    if label.shape != image.shape[:2]:
        raise errors.UserError(f"label of {name} is {label.shape} (HxW) but its image is "
                               f"{image.shape[:2]}")
    check_label(label, num_classes, ignore_label, name)
    return records.encode_example(encode_image(image, image_format), name, label.shape[0],
                                  label.shape[1], encode_label(label), image_format=image_format)


def encode_pair(image_path, label_path, num_classes, ignore_label, name=None, size=None,
                label_map=None):
    """Reads, checks and encodes one image/label pair as a record in deeplab's schema.

    Args:
        image_path: str, an RGB (or grayscale) JPEG or PNG file.
        label_path: str, a label file for `read_label`.
        num_classes, ignore_label: int, the allowed label values.
        name: str stored as `image/filename`; default: the image's name without extension.
        size: optional (height, width) to resize to: bilinear image, nearest-neighbour label.
        label_map: optional np.ndarray lookup table applied to the label values first
            (e.g. Cityscapes labelIds -> trainIds).

    Returns:
        bytes, a serialized tf.Example.

    Raises:
        ValueError naming the file: unreadable file, size mismatch, label value out of range.
    """
    data, image = read_image(image_path)
    label = read_label(label_path)
    if label_map is not None:
        label = label_map[label]
    if label.shape != (image.height, image.width):
        raise errors.UserError(
            f"label {label_path} is {label.shape[0]}x{label.shape[1]} (HxW) but image "
            f"{image_path} is {image.height}x{image.width}")
    check_label(label, num_classes, ignore_label, label_path)
    image_format = _PIL_FORMATS.get(image.format)
    if image_format is None or image.mode not in _DECODABLE_MODES:
        image, image_format, data = image.convert("RGB"), "png", None
    if size is not None and size != (image.height, image.width):
        image = image.convert("RGB").resize(size[::-1], Image.BILINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.uint8), mode="L").resize(
            size[::-1], Image.NEAREST))
        data = None
    if data is None:
        data = encode_image(image, image_format)
    if name is None:
        name = os.path.splitext(os.path.basename(image_path))[0]
    return records.encode_example(data, name, label.shape[0], label.shape[1],
                                  encode_label(label), image_format=image_format)


def write_split(items, encode, output_dir, split, num_shards, descriptor, builder_args=None,
                progress=True):
    """Writes `encode(item)` for every item, in order, as deeplab's shards of `split`.

    Items are spread like deeplab's builders: shard i holds items
    [i * ceil(N / num_shards), (i + 1) * ceil(N / num_shards)). The split is replaced all at
    once or not at all: every shard is written as `SHARD.tmp`, and only when all are complete
    are they renamed over the old ones; if `encode` raises, the temporary files are removed, the
    error propagates and the old shards stay. Temporary files that a killed build left are
    removed first, and shards of an earlier build with another shard count once the new ones
    are in place. Last come the manifest `SPLIT.manifest.json` (see records.read_manifest) and
    `dataset.json` (descriptors.write_description), each written whole and renamed.

    Args:
        items: sequence of anything `encode` takes (e.g. (image_path, label_path) pairs).
        encode: function item -> bytes, one serialized tf.Example.
        output_dir: str, folder of the shards (created if needed; local or any tf.io.gfile path).
        split: str, the split name, e.g. "train_aug".
        num_shards: int >= 1.
        descriptor: descriptors.DatasetDescriptor of the records (its classes and ignore label).
        builder_args: dict of the builder's arguments, JSON-ready, kept in the manifest.
        progress: bool, show a tqdm progress bar.

    Returns:
        list of the shard paths written.
    """
    if not items:
        raise errors.UserError(f"split {split!r} has no examples to write to {output_dir}")
    if num_shards < 1:
        raise errors.UserError(f"num_shards must be >= 1, got {num_shards}")
    created = not tf.io.gfile.exists(output_dir)
    tf.io.gfile.makedirs(output_dir)
    _remove_temporary_shards(output_dir, split)
    per_shard = math.ceil(len(items) / num_shards)
    paths = [os.path.join(output_dir, records.shard_filename(split, shard_id, num_shards))
             for shard_id in range(num_shards)]
    counts = []
    try:
        with tqdm.tqdm(total=len(items), desc=split, unit="img", disable=not progress) as bar:
            for shard_id, path in enumerate(paths):
                shard_items = items[shard_id * per_shard:(shard_id + 1) * per_shard]
                with tf.io.TFRecordWriter(path + TEMP_SUFFIX) as writer:
                    for item in shard_items:
                        writer.write(encode(item))
                        bar.update()
                counts.append(len(shard_items))
    except BaseException:
        _remove_temporary_shards(output_dir, split, log=False)
        if created and not tf.io.gfile.listdir(output_dir):
            tf.io.gfile.rmtree(output_dir)  # A failed first build leaves no empty folder.
        raise
    for path in paths:
        tf.io.gfile.rename(path + TEMP_SUFFIX, path, overwrite=True)
    _remove_stale_shards(output_dir, split, paths)
    _write_json(os.path.join(output_dir, records.manifest_filename(split)), {
        "split": split, "num_examples": len(items),
        "shards": [{"name": os.path.basename(path), "num_examples": count,
                    "bytes": tf.io.gfile.stat(path).length}
                   for path, count in zip(paths, counts)],
        "builder": builder_args or {}})
    descriptors.write_description(output_dir, descriptor, split, len(items))
    return paths


def _write_json(path, values):
    """Writes `values` as JSON to `path` under a temporary name, then renames it."""
    with tf.io.gfile.GFile(path + TEMP_SUFFIX, "w") as f:
        f.write(json.dumps(values, indent=2) + "\n")
    tf.io.gfile.rename(path + TEMP_SUFFIX, path, overwrite=True)


def _remove_temporary_shards(output_dir, split, log=True):
    """Removes the temporary shard files of `split` (a failed or killed build's); `log`: say
    so (a killed build's), not for the build that failed just now."""
    pattern = os.path.join(output_dir, records.shard_pattern(split) + TEMP_SUFFIX + "*")
    for path in tf.io.gfile.glob(pattern):
        if log:
            logging.warning("removing %s, a temporary file of an unfinished build", path)
        tf.io.gfile.remove(path)


def _remove_stale_shards(output_dir, split, keep):
    """Removes shards of `split` not in `keep` (left by a build with another shard count), so
    `records.shard_pattern(split)` matches only this build."""
    shard_re = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")
    keep = {os.path.basename(p) for p in keep}
    for path in tf.io.gfile.glob(os.path.join(output_dir, records.shard_pattern(split))):
        name = os.path.basename(path)
        if shard_re.fullmatch(name) and name not in keep:
            logging.warning("removing %s, a shard of an earlier build of %r", path, split)
            tf.io.gfile.remove(path)


def read_list(path):
    """Names listed one per line in `path` (deeplab's ImageSets/*.txt), blank lines skipped."""
    if not tf.io.gfile.exists(path):
        raise errors.UserError(f"list file {path} does not exist")
    with tf.io.gfile.GFile(path) as f:
        return [line.strip() for line in f if line.strip()]


def pair_by_stem(image_folder, label_folder, image_format="jpg", label_format="png"):
    """(image_path, label_path) pairs of the files of two folders with the same name stem.

    Args:
        image_folder, label_folder: str folders.
        image_format, label_format: str file extensions without dot, e.g. "jpg", "png".

    Returns:
        list of (image_path, label_path), sorted by name.

    Raises:
        ValueError naming the folder if it has no such file, and naming files without a partner.
    """
    found = []
    for folder, ext in ((image_folder, image_format), (label_folder, label_format)):
        paths = tf.io.gfile.glob(os.path.join(folder, "*." + ext))
        if not paths:
            raise errors.UserError(f"no *.{ext} files in {folder}")
        found.append({os.path.splitext(os.path.basename(p))[0]: p for p in paths})
    images, labels = found
    for kind, names, folder in (("label", images.keys() - labels.keys(), label_folder),
                                ("image", labels.keys() - images.keys(), image_folder)):
        if names:
            raise errors.UserError(f"no {kind} in {folder} for {len(names)} files, e.g. "
                                   f"{sorted(names)[:5]}")
    return [(images[name], labels[name]) for name in sorted(images)]
