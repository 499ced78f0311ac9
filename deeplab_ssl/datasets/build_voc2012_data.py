r"""Builds PASCAL VOC 2012 records (and `train_aug` with the SBD labels) in deeplab's schema.

Reads the devkit layout directly:

    VOCdevkit/VOC2012/JPEGImages/NAME.jpg
    VOCdevkit/VOC2012/SegmentationClass/NAME.png        palette PNGs: the palette index is the
                                                        class, 255 the ignore boundary; deeplab's
                                                        SegmentationClassRaw (grayscale) works too
    VOCdevkit/VOC2012/ImageSets/Segmentation/SPLIT.txt  train, val, trainval

and writes `OUTPUT_DIR/SPLIT-0000i-of-00004.tfrecord` for every list file (or `--splits`).

train_aug (10,582 images), the usual recipe (DeepLab v2/v3, mmsegmentation's voc_aug.py):
with `--sbd_label_folder` pointing at SBD's `benchmark_RELEASE/dataset/cls` (`NAME.mat`,
GTcls.Segmentation; needs scipy) or at a folder of pre-converted `SegmentationClassAug` PNGs,
train_aug = (every name of that folder, i.e. SBD train + val, + VOC train) - VOC val. A
`train_aug.txt` in `--list_folder` is used instead when present. Each image takes VOC's own label
when `SegmentationClass` has one (finer, with the 255 boundary) and SBD's otherwise; the images
all come from JPEGImages, which holds every SBD image.

Usage:
    python -m deeplab_ssl.datasets.build_voc2012_data \
        --image_folder=VOCdevkit/VOC2012/JPEGImages \
        --semantic_segmentation_folder=VOCdevkit/VOC2012/SegmentationClass \
        --list_folder=VOCdevkit/VOC2012/ImageSets/Segmentation \
        --sbd_label_folder=benchmark_RELEASE/dataset/cls --output_dir=tfrecord
"""
import os

from absl import flags, logging
import tensorflow as tf

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors

TRAIN_AUG = "train_aug"


def _stems(folder, ext):
    return {os.path.splitext(os.path.basename(p))[0]
            for p in tf.io.gfile.glob(os.path.join(folder, "*." + ext))}


def train_aug_names(list_folder, sbd_label_folder, sbd_format):
    """Names of train_aug: (SBD names + VOC train) - VOC val, sorted."""
    sbd = _stems(sbd_label_folder, sbd_format)
    train = build_data.read_list(os.path.join(list_folder, "train.txt"))
    val = build_data.read_list(os.path.join(list_folder, "val.txt"))
    names = sorted((sbd | set(train)) - set(val))
    expected = descriptors.get_descriptor("pascal_voc_seg").split_size(TRAIN_AUG)
    if len(names) != expected:
        logging.warning("train_aug has %d images, not the standard %d: is %s complete?",
                        len(names), expected, sbd_label_folder)
    return names


def build_voc2012(image_folder, semantic_segmentation_folder, list_folder, output_dir,
                  sbd_label_folder=None, splits=None, image_format="jpg", label_format="png",
                  num_shards=4, size=None, progress=True):
    """Writes the VOC 2012 splits as deeplab's shards.

    Args:
        image_folder: str, JPEGImages.
        semantic_segmentation_folder: str, SegmentationClass (palette) or SegmentationClassRaw.
        list_folder: str, ImageSets/Segmentation with SPLIT.txt files.
        output_dir: str, where the shards go.
        sbd_label_folder: optional str, SBD `cls` (*.mat) or SegmentationClassAug (*.png).
        splits: optional list of split names; default every SPLIT.txt of list_folder, plus
            train_aug when sbd_label_folder is given.
        image_format, label_format: str extensions of the image and VOC label files.
        num_shards: int, shards per split.
        size: optional (height, width) to resize every example to.
        progress: bool, show progress bars.

    Returns:
        dict split -> list of shard paths.
    """
    voc = descriptors.get_descriptor("pascal_voc_seg")
    sbd_format = None
    if sbd_label_folder:
        sbd_format = "mat" if _stems(sbd_label_folder, "mat") else "png"
    if splits is None:
        splits = sorted(_stems(list_folder, "txt"))
        if sbd_label_folder and TRAIN_AUG not in splits:
            splits.append(TRAIN_AUG)
    written = {}
    for split in splits:
        list_path = os.path.join(list_folder, split + ".txt")
        if split == TRAIN_AUG and not tf.io.gfile.exists(list_path):
            if not sbd_label_folder:
                raise errors.UserError(f"{TRAIN_AUG} needs --sbd_label_folder or {list_path}")
            names = train_aug_names(list_folder, sbd_label_folder, sbd_format)
        else:
            names = build_data.read_list(list_path)
        pairs = []
        for name in names:
            label = os.path.join(semantic_segmentation_folder, f"{name}.{label_format}")
            if sbd_label_folder and not tf.io.gfile.exists(label):
                label = os.path.join(sbd_label_folder, f"{name}.{sbd_format}")
            pairs.append((os.path.join(image_folder, f"{name}.{image_format}"), label))
        _check_exist(pairs, split)

        def encode(pair):
            return build_data.encode_pair(*pair, voc.num_classes, voc.ignore_label, size=size)

        written[split] = build_data.write_split(
            pairs, encode, output_dir, split, num_shards, voc, progress=progress,
            builder_args=dict(builder="build_voc2012_data", image_folder=image_folder,
                              semantic_segmentation_folder=semantic_segmentation_folder,
                              list_folder=list_folder, sbd_label_folder=sbd_label_folder,
                              size=size))
    return written


def _check_exist(pairs, split):
    """Fails before writing anything if files of `split` are missing, naming them."""
    missing = [p for pair in pairs for p in pair if not tf.io.gfile.exists(p)]
    if missing:
        raise errors.UserError(f"split {split!r}: {len(missing)} files missing, e.g. {missing[:5]}")


def main(argv):
    del argv
    f = flags.FLAGS
    build_voc2012(f.image_folder, f.semantic_segmentation_folder, f.list_folder, f.output_dir,
                  sbd_label_folder=f.sbd_label_folder, splits=f.splits,
                  image_format=f.image_format, label_format=f.label_format,
                  num_shards=f.num_shards, size=build_data.parse_size(f.resize))


if __name__ == "__main__":
    # Flags are defined only when run as a script (see build_data.define_output_flags).
    flags.DEFINE_string("image_folder", "./VOCdevkit/VOC2012/JPEGImages",
                        "Folder of the JPEG images.")
    flags.DEFINE_string("semantic_segmentation_folder",
                        "./VOCdevkit/VOC2012/SegmentationClass",
                        "Folder of the VOC labels: palette PNGs (SegmentationClass) or "
                        "grayscale class indices (SegmentationClassRaw).")
    flags.DEFINE_string("list_folder", "./VOCdevkit/VOC2012/ImageSets/Segmentation",
                        "Folder of the SPLIT.txt lists of image names.")
    flags.DEFINE_string("sbd_label_folder", None,
                        "SBD labels for train_aug: benchmark_RELEASE/dataset/cls (*.mat) or "
                        "SegmentationClassAug (*.png).")
    flags.DEFINE_list("splits", None,
                      "Splits to build; default every list file, plus train_aug with SBD.")
    flags.DEFINE_enum("image_format", "jpg", ["jpg", "jpeg", "png"], "Image file extension.")
    flags.DEFINE_enum("label_format", "png", ["png"], "VOC label file extension.")
    build_data.define_output_flags(num_shards=4)
    errors.run(main)
