"""Mask R-CNN + FPN, ResNeXt-101 32x8d (timm), new-baselines LSJ recipe, 100 epochs."""
from detectron2.config import LazyCall as L

from resbackbones.catalog import get_entry

from .mask_rcnn_R50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.entry = L(get_entry)(name="resnext101_32x8d")
