"""Detectron2 modeling pieces: the timm backbone adapter, norms, speed-ups and the builders.

Importing this package registers ``build_resbackbone_backbone``,
``build_resbackbone_fpn_backbone`` and ``build_resbackbone_retinanet_fpn_backbone`` in
``BACKBONE_REGISTRY`` and ``ResBackboneRCNN``/``ResBackboneRetinaNet`` in
``META_ARCH_REGISTRY``. Each module here owns the allowed values of the config keys it reads
(``check_norm``, ``check_channels_last``, ...); ``resbackbones.config.validate_config`` asks them.
"""
from resbackbones._requirements import require_detectron2

require_detectron2("resbackbones.modeling")

from resbackbones.modeling.build import (  # noqa: E402
    build_resbackbone_backbone,
    build_resbackbone_fpn_backbone,
    build_resbackbone_retinanet_fpn_backbone,
)
from resbackbones.modeling.norms import convert_norm  # noqa: E402
from resbackbones.modeling.rcnn import ResBackboneRCNN  # noqa: E402
from resbackbones.modeling.retinanet import ResBackboneRetinaNet  # noqa: E402
from resbackbones.modeling.roi_align import ParallelROIAlign, with_parallel_roi_align  # noqa: E402
from resbackbones.modeling.timm_backbone import TimmBackbone  # noqa: E402
from resbackbones.modeling.winograd import with_winograd_convolutions  # noqa: E402

__all__ = [
    "ParallelROIAlign",
    "ResBackboneRCNN",
    "ResBackboneRetinaNet",
    "TimmBackbone",
    "build_resbackbone_backbone",
    "build_resbackbone_fpn_backbone",
    "build_resbackbone_retinanet_fpn_backbone",
    "convert_norm",
    "with_parallel_roi_align",
    "with_winograd_convolutions",
]
