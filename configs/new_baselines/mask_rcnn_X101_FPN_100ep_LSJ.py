"""Mask R-CNN + FPN, ResNeXt-101 32x8d (timm), new-baselines LSJ recipe, 100 epochs."""
from resbackbones.catalog import input_normalization

from .mask_rcnn_R50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

ARCH = "resnext101_32x8d"

model.backbone.bottom_up.entry.name = ARCH
# The input statistics of this architecture's pinned weights.
_format, model.pixel_mean, model.pixel_std = input_normalization(ARCH)
model.input_format = _format
dataloader.train.mapper.image_format = _format
