import pytest

from deeplab_ssl.datasets import descriptors


def test_every_descriptor_is_consistent():
    for d in descriptors.DATASETS.values():
        assert len(d.class_names) == d.num_classes, d.name
        assert d.splits_to_sizes, d.name


def test_deeplab_values():
    voc = descriptors.get_descriptor("pascal_voc_seg")
    assert (voc.num_classes, voc.ignore_label, voc.split_size("train_aug")) == (21, 255, 10582)
    assert descriptors.get_descriptor("cityscapes").split_size("train_fine") == 2975
    assert descriptors.get_descriptor("ade20k").ignore_label == 0
    camvid = descriptors.get_descriptor("camvid")
    assert (camvid.num_classes, camvid.ignore_label) == (11, 11)


def test_unknown_names_are_named_in_the_error():
    with pytest.raises(ValueError, match="no_such_set"):
        descriptors.get_descriptor("no_such_set")
    with pytest.raises(ValueError, match="'tain'"):
        descriptors.get_descriptor("pascal_voc_seg").split_size("tain")
