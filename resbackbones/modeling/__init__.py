"""Detectron2 modeling pieces: the timm backbone adapter, norms and the registered builders.

Importing this package registers ``build_resbackbone_backbone``,
``build_resbackbone_fpn_backbone`` and ``build_resbackbone_retinanet_fpn_backbone`` in
``BACKBONE_REGISTRY`` and ``ResBackboneRCNN``/``ResBackboneRetinaNet`` in
``META_ARCH_REGISTRY``.
"""
from resbackbones.modeling.build import (
    build_resbackbone_backbone,
    build_resbackbone_fpn_backbone,
    build_resbackbone_retinanet_fpn_backbone,
)
from resbackbones.modeling.norms import convert_norm
from resbackbones.modeling.rcnn import ResBackboneRCNN
from resbackbones.modeling.retinanet import ResBackboneRetinaNet
from resbackbones.modeling.roi_align import ParallelROIAlign, parallelize_roi_align
from resbackbones.modeling.timm_backbone import TimmResNetBackbone

__all__ = [
    "ParallelROIAlign",
    "ResBackboneRCNN",
    "ResBackboneRetinaNet",
    "TimmResNetBackbone",
    "build_resbackbone_backbone",
    "build_resbackbone_fpn_backbone",
    "build_resbackbone_retinanet_fpn_backbone",
    "convert_norm",
    "parallelize_roi_align",
]
