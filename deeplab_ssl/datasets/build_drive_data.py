r"""Builds DRIVE records (retinal vessels: 0 background, 1 vessel, 255 outside the field of view).

Reads DRIVE as it is downloaded, under `--drive_root`:

    training/images/NN_training.tif   training/1st_manual/NN_manual1.gif   training/mask/NN_training_mask.gif
    test/images/NN_test.tif           test/1st_manual/NN_manual1.gif       test/mask/NN_test_mask.gif

(training NN = 21..40, test NN = 01..20). A pixel is a vessel where the first observer's map is
bright (> 127), background elsewhere, and takes the ignore label 255 outside the field of view
(mask 0), so that training and evaluation stay inside it, as the field does. Images are stored
as PNG (lossless; TensorFlow does not decode TIFF). Splits:

    train     the 15 training images not in VAL_IMAGES
    val       VAL_IMAGES, 5 of the training images: choose schedules on these
    trainval  all 20 training images
    test      the 20 test images (where `test/` is present)

Usage:
    python -m deeplab_ssl.datasets.build_drive_data \
        --drive_root=../shared/data/drive --output_dir=data/drive [--splits=train,val]
"""
import glob
import os

import numpy as np
from absl import app, flags

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors

# The validation images, fixed: the last 5 of DRIVE's training numbers (its order is random).
VAL_IMAGES = ("36", "37", "38", "39", "40")
SPLITS = ("train", "val", "trainval", "test")
IGNORE_LABEL = 255


def list_images(drive_root, split):
    """[(number, image path, vessel map path, mask path)] of `split`, sorted by number.

    Raises:
        ValueError: naming the folder when the split's images are missing, or a file of an
            image that is missing.
    """
    folder = "test" if split == "test" else "training"
    images = sorted(glob.glob(os.path.join(drive_root, folder, "images", f"*_{folder}.tif")))
    if not images:
        raise errors.UserError(f"no DRIVE images in {os.path.join(drive_root, folder, 'images')} "
                               f"(expected NN_{folder}.tif)")
    found = []
    for image in images:
        number = os.path.basename(image).split("_")[0]
        vessels = os.path.join(drive_root, folder, "1st_manual", f"{number}_manual1.gif")
        mask = os.path.join(drive_root, folder, "mask", f"{number}_{folder}_mask.gif")
        for path in (vessels, mask):
            if not os.path.exists(path):
                raise errors.UserError(f"{path} is missing (for {image})")
        if split == "test" or split == "trainval" or (split == "val") == (number in VAL_IMAGES):
            found.append((number, image, vessels, mask))
    return found


def drive_label(vessels, mask):
    """uint8 [H, W] labels: 1 vessel, 0 background, IGNORE_LABEL outside the field of view.

    Args:
        vessels, mask: integer arrays [H, W], DRIVE's 0 / 255 maps.
    """
    return np.where(mask > 127, (vessels > 127).astype(np.uint8), IGNORE_LABEL).astype(np.uint8)


def encode(item):
    """A record in deeplab's schema of one (number, image, vessel map, mask) of list_images."""
    number, image_path, vessels_path, mask_path = item
    image = np.asarray(build_data.read_image(image_path)[1].convert("RGB"))
    vessels, mask = (np.asarray(build_data.read_image(path)[1].convert("L"))
                     for path in (vessels_path, mask_path))
    for path, array in ((vessels_path, vessels), (mask_path, mask)):
        if array.shape != image.shape[:2]:
            raise errors.UserError(f"{path} is {array.shape[0]}x{array.shape[1]} (HxW) but "
                                   f"{image_path} is {image.shape[0]}x{image.shape[1]}")
    name = os.path.splitext(os.path.basename(image_path))[0]
    return build_data.encode_arrays(name, image, drive_label(vessels, mask), 2, IGNORE_LABEL)


def build_drive(drive_root, output_dir, splits=None, num_shards=1, progress=True):
    """Writes the DRIVE splits as deeplab's shards.

    Args:
        drive_root: str, the folder holding training/ (and test/).
        output_dir: str, where the shards go.
        splits: split names of SPLITS; default train, val, trainval, and test where present.
        num_shards: int, shards per split.
        progress: bool, show progress bars.

    Returns:
        dict split -> list of shard paths.
    """
    drive = descriptors.get_descriptor("drive")
    if splits is None:
        splits = [s for s in SPLITS
                  if s != "test" or os.path.isdir(os.path.join(drive_root, "test"))]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise errors.UserError(f"unknown DRIVE splits {unknown}; known: {list(SPLITS)}")
    builder_args = dict(builder="build_drive_data", drive_root=drive_root)
    return {split: build_data.write_split(list_images(drive_root, split), encode, output_dir,
                                          split, num_shards, drive, builder_args, progress)
            for split in splits}


def main(argv):
    del argv
    f = flags.FLAGS
    if f.resize:
        raise app.UsageError("--resize: DRIVE is built at its own size (565x584)")
    build_drive(f.drive_root, f.output_dir, splits=f.splits, num_shards=f.num_shards)


if __name__ == "__main__":
    # Flags are defined only when run as a script (see build_data.define_output_flags).
    flags.DEFINE_string("drive_root", "./DRIVE", "Folder holding DRIVE's training/ and test/.")
    flags.DEFINE_list("splits", None, "Splits to build; default all present.")
    build_data.define_output_flags(num_shards=1)
    errors.run(main)
