"""Mask R-CNN + FPN, ResNet-50 (timm) trained from scratch with large-scale jitter, 100 epochs.

Detectron2's new-baselines recipe (``new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``: SyncBN
everywhere, 1024x1024 LSJ crops, batch 64, LR 0.1, AMP) with the bottom-up network replaced by a
resbackbones catalog entry. Everything else is Detectron2's config tree, node for node, so its
documented overrides apply unchanged; train it with Detectron2's own tool::

    python tools/lazyconfig_train_net.py \\
        --config-file configs/new_baselines/mask_rcnn_R50_FPN_100ep_LSJ.py \\
        model.roi_heads.num_classes=3 model.backbone.bottom_up.entry.name=resnet18

(``import resbackbones`` happens in this file; the tool needs nothing else.)
"""
from detectron2.config import LazyCall as L

from resbackbones.catalog import get_entry, input_normalization
from resbackbones.compat import detectron2_config
from resbackbones.modeling import ResBackboneRCNN, TimmBackbone

ARCH = "resnet50"  # any resbackbones catalog name

_base = detectron2_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader = _base.dataloader
lr_multiplier = _base.lr_multiplier
model = _base.model
optimizer = _base.optimizer
train = _base.train

# GeneralizedRCNN plus faster CPU inference in the heads; same weights and training. The
# speed-ups are chosen by keys, and ResBackboneRCNN puts them into Detectron2's heads as built
# (model.proposal_generator and model.roi_heads stay Detectron2's nodes).
model._target_ = ResBackboneRCNN
# Winograd 3x3 convs in the RPN and ROI heads (where PyTorch has NNPACK).
model.winograd_heads = True
# ROIAlign split over the CPU threads at inference (bit-identical).
model.parallel_roi_align = True

# The same stages (res2..res5) as Detectron2's ResNet, so the FPN above is unchanged. From
# scratch nothing is frozen (Detectron2's recipe sets freeze_at = 0).
model.backbone.bottom_up = L(TimmBackbone)(
    entry=L(get_entry)(name=ARCH),
    out_features=["res2", "res3", "res4", "res5"],
    norm="SyncBN",  # from scratch: statistics are learnt, synchronised across GPUs
)

# timm's convention: RGB input with ImageNet statistics on the 0-255 scale (the test mapper
# follows the train mapper's image_format, as in Detectron2's config).
_format, model.pixel_mean, model.pixel_std = input_normalization(ARCH)
model.input_format = _format
dataloader.train.mapper.image_format = _format
