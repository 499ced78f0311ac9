r"""Builds records of one split from any folder of images and a folder of label PNGs.

Images and labels are paired by name stem (`a.jpg` with `a.png`); labels are single-channel
PNGs of class indices (grayscale or palette). Label values are checked against `--dataset`'s
descriptor, or against `--num_classes` and `--ignore_label`, which `dataset.json` then records
next to the shards for the command line tools (`--dataset=custom`).

Usage:
    python -m deeplab_ssl.datasets.build_folder_data --image_folder=images \
        --semantic_segmentation_folder=labels --split=train --num_classes=5 \
        --ignore_label=255 --output_dir=tfrecord
"""
from absl import app, flags

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors


def build_folder(image_folder, semantic_segmentation_folder, output_dir, split, descriptor,
                 image_format="jpg", label_format="png", num_shards=4, size=None, progress=True):
    """Writes the pairs of two folders as deeplab's shards of `split`.

    Args:
        image_folder: str, folder of RGB images `NAME.image_format`.
        semantic_segmentation_folder: str, folder of labels `NAME.label_format`.
        output_dir: str, where the shards go.
        split: str, the split name of the shards.
        descriptor: descriptors.DatasetDescriptor, the allowed label values (its classes and
            ignore label), e.g. descriptors.custom_descriptor(num_classes, ignore_label).
        image_format, label_format: str file extensions.
        num_shards: int, number of shards.
        size: optional (height, width) to resize to.
        progress: bool, show a progress bar.

    Returns:
        list of shard paths.
    """
    pairs = build_data.pair_by_stem(image_folder, semantic_segmentation_folder, image_format,
                                    label_format)

    def encode(pair):
        return build_data.encode_pair(*pair, descriptor.num_classes, descriptor.ignore_label,
                                      size=size)

    return build_data.write_split(
        pairs, encode, output_dir, split, num_shards, descriptor, progress=progress,
        builder_args=dict(builder="build_folder_data", image_folder=image_folder,
                          semantic_segmentation_folder=semantic_segmentation_folder, size=size))


def main(argv):
    del argv
    f = flags.FLAGS
    if f.dataset:
        descriptor = descriptors.get_descriptor(f.dataset)
    elif f.num_classes is None:
        raise app.UsageError("give --dataset, or --num_classes (and --ignore_label)")
    else:
        descriptor = descriptors.custom_descriptor(f.num_classes, f.ignore_label)
    build_folder(f.image_folder, f.semantic_segmentation_folder, f.output_dir, f.split,
                 descriptor, image_format=f.image_format,
                 label_format=f.label_format, num_shards=f.num_shards,
                 size=build_data.parse_size(f.resize))


if __name__ == "__main__":
    # Flags are defined only when run as a script (see build_data.define_output_flags).
    flags.DEFINE_string("image_folder", None, "Folder of the images.", required=True)
    flags.DEFINE_string("semantic_segmentation_folder", None, "Folder of the label PNGs.",
                        required=True)
    flags.DEFINE_string("image_format", "jpg", "Image file extension, e.g. jpg or png.")
    flags.DEFINE_string("label_format", "png", "Label file extension.")
    flags.DEFINE_string("split", "train", "Split name of the shards.")
    flags.DEFINE_string("dataset", None,
                        "Dataset descriptor giving num_classes and ignore_label.")
    flags.DEFINE_integer("num_classes", None, "Number of classes (without --dataset).")
    flags.DEFINE_integer("ignore_label", 255, "Ignore label (without --dataset).")
    build_data.define_output_flags(num_shards=4)
    errors.run(main)
