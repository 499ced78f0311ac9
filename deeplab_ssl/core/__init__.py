"""Backbones of deeplab: resnet_v1(_beta), xception, mobilenet_v2, with atrous strides."""
