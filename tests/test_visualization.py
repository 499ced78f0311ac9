"""Tests of deeplab_ssl.visualization: colormaps, colored labels, the pictures vis.py writes."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_ssl import inference, visualization
from deeplab_ssl.datasets import descriptors


def test_pascal_colormap_is_deeplabs():
    colormap = visualization.get_colormap("pascal")
    assert colormap.shape == (512, 3) and colormap.dtype == np.uint8
    assert colormap[0].tolist() == [0, 0, 0]
    assert colormap[1].tolist() == [128, 0, 0]
    assert colormap[2].tolist() == [0, 128, 0]
    assert colormap[15].tolist() == [192, 128, 128]  # person
    assert colormap[255].tolist() == [224, 224, 192]  # VOC's void boundary color


def test_dataset_colormaps():
    cityscapes = visualization.get_colormap("cityscapes")
    assert cityscapes.shape == (256, 3)
    assert cityscapes[0].tolist() == [128, 64, 128] and cityscapes[18].tolist() == [119, 11, 32]
    assert cityscapes[255].tolist() == [0, 0, 0]
    ade20k = visualization.get_colormap("ade20k")
    assert ade20k.shape == (151, 3) and ade20k[150].tolist() == [92, 0, 255]
    camvid = visualization.get_colormap("camvid")
    assert camvid.shape == (12, 3)
    assert camvid[3].tolist() == [128, 64, 128] and camvid[11].tolist() == [0, 0, 0]


@pytest.mark.parametrize("name", sorted(descriptors.DATASETS))
def test_every_dataset_colormap_covers_its_classes_and_ignore_label(name):
    descriptor = descriptors.get_descriptor(name)
    colormap = visualization.get_colormap(descriptor.colormap)
    assert len(colormap) > max(descriptor.num_classes - 1, descriptor.ignore_label)
    labels = np.arange(descriptor.num_classes).reshape(1, -1)
    colors = visualization.label_to_color_image(labels, colormap)[0]
    if name != "ade20k":  # deeplab's ADE20K map repeats (140, 140, 140)
        assert len({tuple(color) for color in colors}) == descriptor.num_classes


def test_label_to_color_image_errors_name_the_problem():
    colormap = visualization.get_colormap("camvid")
    with pytest.raises(ValueError, match=r"\[0, 12\).*\[0, 12\]"):
        visualization.label_to_color_image(np.array([[0, 12]]), colormap)
    with pytest.raises(ValueError, match="2-D"):
        visualization.label_to_color_image(np.zeros((1, 2, 2), np.int32), colormap)
    with pytest.raises(ValueError, match="unknown colormap 'voc'"):
        visualization.get_colormap("voc")


def test_overlay_and_side_by_side():
    image = np.full((2, 3, 3), 100, np.uint8)
    color = np.full((2, 3, 3), 200, np.uint8)
    assert visualization.overlay(image, color, alpha=0.25)[0, 0].tolist() == [125, 125, 125]
    panel = visualization.side_by_side([image, color], gap=2)
    assert panel.shape == (2, 8, 3)
    assert panel[:, 3:5].min() == 255


def test_visualize_writes_deeplabs_files(tmp_path):
    images = keras.Input((None, None, 3))
    model = keras.Model(images, keras.layers.Conv2D(3, 1)(images))
    # Two images of 5x6 and 4x4, padded to 5x6 in one batch as the input pipeline does.
    batch = {
        "image": tf.random.uniform([2, 5, 6, 3], 0, 255, seed=1),
        "label": tf.concat([tf.zeros([2, 4, 6, 1], tf.int32),
                            tf.fill([2, 1, 6, 1], 255)], axis=1),
        "filename": tf.constant(["dir/a.jpg", "b.png"]),
        "height": tf.constant([5, 4]),
        "width": tf.constant([6, 4]),
    }
    dataset = tf.data.Dataset.from_tensors(batch)
    count = visualization.visualize(
        inference.KerasPredictor(model), dataset, visualization.get_colormap("pascal"), str(tmp_path),
        also_save_raw_predictions=True, raw_label_ids=[7, 8, 11])
    assert count == 2
    results = tmp_path / "segmentation_results"
    assert sorted(p.name for p in results.iterdir()) == [
        "000000_image.png", "000000_panel.png", "000000_prediction.png",
        "000001_image.png", "000001_panel.png", "000001_prediction.png"]
    assert Image.open(results / "000001_image.png").size == (4, 4)
    assert Image.open(results / "000000_panel.png").size == (4 * 6 + 3 * 4, 5)
    raw = np.array(Image.open(tmp_path / "raw_segmentation_results" / "a.png"))
    assert raw.shape == (5, 6) and set(np.unique(raw)) <= {7, 8, 11}
    assert (tmp_path / "raw_segmentation_results" / "b.png").exists()
    assert visualization.visualize(inference.KerasPredictor(model), dataset,
                                   visualization.get_colormap("pascal"),
                                   str(tmp_path / "one"), max_examples=1) == 1
