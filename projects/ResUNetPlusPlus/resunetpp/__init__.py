"""ResUNet++ (Jha et al., 2019) for Detectron2, with the paper's encoder or any resbackbones
catalog entry as encoder.

Importing the package registers the two encoders (``BACKBONE_REGISTRY``) and the decoder head
(``SEM_SEG_HEADS_REGISTRY``, used by Detectron2's ``SemanticSegmentor``).
"""
import resbackbones.modeling  # noqa: F401  (registers build_resbackbone_backbone)

from .config import add_resunetpp_config, build_resunetpp_config
from .encoders import (
    PaperEncoder,
    ResBackboneEncoder,
    build_resunetpp_paper_encoder,
    build_resunetpp_resbackbone_encoder,
)
from .head import ResUNetPPHead

__all__ = [
    "PaperEncoder",
    "ResBackboneEncoder",
    "ResUNetPPHead",
    "add_resunetpp_config",
    "build_resunetpp_config",
    "build_resunetpp_paper_encoder",
    "build_resunetpp_resbackbone_encoder",
]
