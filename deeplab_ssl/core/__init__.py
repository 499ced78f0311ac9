"""Backbones of deeplab with atrous strides: resnet_v1(_beta), xception, mobilenet_v2.

feature_extractor.py picks the backbone, preprocessing, mean pixel and decoder end points of a
model_variant; utils.py holds the shared conv / batch norm / separable layers and naming rules.
"""
