r"""Builds Cityscapes records (19 train classes, 255 ignored) in deeplab's schema.

Reads the official layout under `--cityscapes_root`:

    leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelTrainIds.png

and writes deeplab's split names: train -> `train_fine`, val -> `val_fine`, both ->
`trainval_fine`, test -> `test_fine` (10 shards each, as deeplab). The `*_labelTrainIds.png` files are made by cityscapesscripts'
`createTrainIdLabelImgs` (`CITYSCAPES_DATASET=ROOT csCreateTrainIdLabelImgs`); where one is
missing, the `*_labelIds.png` next to it is converted here with the same id -> trainId table
(cityscapesscripts/helpers/labels.py). `image/filename` is `CITY_SEQ_FRAME`, as in deeplab.

Usage:
    python -m deeplab_ssl.datasets.build_cityscapes_data \
        --cityscapes_root=cityscapes --output_dir=cityscapes/tfrecord
"""
import os

import numpy as np
import tensorflow as tf
from absl import flags

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors

SPLIT_FOLDERS = {"train_fine": ("train",), "val_fine": ("val",),
                 "trainval_fine": ("train", "val"), "test_fine": ("test",)}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
_IDS_SUFFIX = "_gtFine_labelIds.png"

# cityscapesscripts labels.py: trainId of each label id 0..33; every other value -> 255.
_TRAIN_ID_OF_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                   24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _id, _train_id in _TRAIN_ID_OF_ID.items():
    LABEL_ID_TO_TRAIN_ID[_id] = _train_id


def encode_pair(pair, size=None):
    """One record of an (image, label) pair of list_pairs; `size` (h, w) resizes it."""
    image_path, label_path = pair
    cityscapes = descriptors.get_descriptor("cityscapes")
    label_map = LABEL_ID_TO_TRAIN_ID if label_path.endswith(_IDS_SUFFIX) else None
    name = os.path.basename(image_path)[:-len(_IMAGE_SUFFIX)]
    return build_data.encode_pair(image_path, label_path, cityscapes.num_classes,
                                  cityscapes.ignore_label, name=name, size=size,
                                  label_map=label_map)


def list_pairs(cityscapes_root, split):
    """(image_path, label_path) pairs of a deeplab split name, sorted; the label is the
    labelTrainIds PNG, or the labelIds PNG where that is missing."""
    pairs = []
    for folder in SPLIT_FOLDERS[split]:
        images = sorted(tf.io.gfile.glob(
            os.path.join(cityscapes_root, "leftImg8bit", folder, "*", "*" + _IMAGE_SUFFIX)))
        if not images:
            raise errors.UserError(
                f"no *{_IMAGE_SUFFIX} in {cityscapes_root}/leftImg8bit/{folder}/*/")
        pairs += [(image, _label_path(cityscapes_root, folder, image)) for image in images]
    return pairs


def _label_path(cityscapes_root, folder, image):
    city = os.path.basename(os.path.dirname(image))
    stem = os.path.join(cityscapes_root, "gtFine", folder, city,
                        os.path.basename(image)[:-len(_IMAGE_SUFFIX)])
    for label in (stem + _TRAIN_IDS_SUFFIX, stem + _IDS_SUFFIX):
        if tf.io.gfile.exists(label):
            return label
    raise errors.UserError(f"no label for {image}: neither {stem + _TRAIN_IDS_SUFFIX} nor "
                           f"{stem + _IDS_SUFFIX} exists")


def build_cityscapes(cityscapes_root, output_dir, splits=("train_fine", "val_fine"),
                     num_shards=10, size=None, progress=True):
    """Writes the Cityscapes splits as deeplab's shards.

    Args:
        cityscapes_root: str, the folder holding leftImg8bit/ and gtFine/.
        output_dir: str, where the shards go.
        splits: deeplab split names among train_fine, val_fine, trainval_fine, test_fine.
        num_shards: int, shards per split.
        size: optional (height, width) to resize to, e.g. (512, 1024).
        progress: bool, show progress bars.

    Returns:
        dict split -> list of shard paths.
    """
    written = {}
    for split in splits:
        if split not in SPLIT_FOLDERS:
            raise errors.UserError(
                f"unknown Cityscapes split {split!r}; known: {list(SPLIT_FOLDERS)}")
        pairs = list_pairs(cityscapes_root, split)
        written[split] = build_data.write_split(
            pairs, lambda pair: encode_pair(pair, size), output_dir, split, num_shards,
            descriptors.get_descriptor("cityscapes"), progress=progress,
            builder_args=dict(builder="build_cityscapes_data", cityscapes_root=cityscapes_root,
                              size=size))
    return written


def main(argv):
    del argv
    f = flags.FLAGS
    build_cityscapes(f.cityscapes_root, f.output_dir, splits=f.splits, num_shards=f.num_shards,
                     size=build_data.parse_size(f.resize))


if __name__ == "__main__":
    # Flags are defined only when run as a script (see build_data.define_output_flags).
    flags.DEFINE_string("cityscapes_root", "./cityscapes",
                        "Folder holding leftImg8bit/ and gtFine/.")
    flags.DEFINE_list("splits", ["train_fine", "val_fine"],
                      "Splits to build among train_fine, val_fine, trainval_fine, test_fine.")
    build_data.define_output_flags(num_shards=10)
    errors.run(main)
