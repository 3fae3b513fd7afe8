"""Detectron2 modeling pieces: the timm backbone adapter, norms and the registered builders.

Importing this package registers ``build_resbackbone_backbone``,
``build_resbackbone_fpn_backbone`` and ``build_resbackbone_retinanet_fpn_backbone``.
"""
from resbackbones.modeling.build import (
    build_resbackbone_backbone,
    build_resbackbone_fpn_backbone,
    build_resbackbone_retinanet_fpn_backbone,
)
from resbackbones.modeling.norms import convert_norm
from resbackbones.modeling.timm_backbone import TimmResNetBackbone

__all__ = [
    "TimmResNetBackbone",
    "build_resbackbone_backbone",
    "build_resbackbone_fpn_backbone",
    "build_resbackbone_retinanet_fpn_backbone",
    "convert_norm",
]
