"""Mask R-CNN + FPN, ResNet-50 (timm) trained from scratch with large-scale jitter, 100 epochs.

Detectron2's new-baselines recipe (``new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``: SyncBN
everywhere, 1024x1024 LSJ crops, batch 64, LR 0.1, AMP) with the bottom-up network replaced by a
resbackbones catalog entry. Load and train it with Detectron2's ``tools/lazyconfig_train_net.py``
after ``import resbackbones``.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from resbackbones.catalog import get_entry, input_normalization
from resbackbones.modeling import (
    ResBackboneRCNN,
    TimmBackbone,
    with_parallel_roi_align,
    with_winograd_convolutions,
)

ARCH = "resnet50"  # any resbackbones catalog name

_base = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader = _base.dataloader
lr_multiplier = _base.lr_multiplier
model = _base.model
# GeneralizedRCNN plus faster CPU inference around the heads; same weights and training. The
# speed-up layers are constructed here, as ResBackboneRCNN.from_config does for YAML configs:
# Winograd 3x3 convs in the RPN and ROI heads, ROIAlign split over the CPU threads.
model._target_ = ResBackboneRCNN
model.winograd_heads = True
model.proposal_generator = L(with_winograd_convolutions)(module=_base.model.proposal_generator)
model.roi_heads = L(with_parallel_roi_align)(
    module=L(with_winograd_convolutions)(module=_base.model.roi_heads))
optimizer = _base.optimizer
train = _base.train

# The same stages (res2..res5) as Detectron2's ResNet, so the FPN above is unchanged.
model.backbone.bottom_up = L(TimmBackbone)(
    entry=L(get_entry)(name=ARCH),
    out_features=["res2", "res3", "res4", "res5"],
    norm="SyncBN",  # from scratch: statistics are learnt, synchronised across GPUs
)

# timm's convention: RGB input with ImageNet statistics on the 0-255 scale.
_format, model.pixel_mean, model.pixel_std = input_normalization(ARCH)
dataloader.train.mapper.image_format = _format
dataloader.test.mapper.image_format = _format
