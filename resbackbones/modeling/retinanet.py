"""``ResBackboneRetinaNet``: Detectron2's RetinaNet with Winograd 3x3 convs in its head at CPU
inference.

RetinaNet's head runs ten 3x3 convs (four per subnet plus the two predictors) on each of P3-P7,
most of the detector's FLOPs; NNPACK's Winograd kernels compute them 2-2.7x faster on the large
levels (see :mod:`resbackbones.modeling.winograd`). Same parameters and training as RetinaNet.
"""
from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from resbackbones.modeling.winograd import nnpack_available, with_winograd_convolutions

__all__ = ["ResBackboneRetinaNet"]


@META_ARCH_REGISTRY.register()
class ResBackboneRetinaNet(RetinaNet):
    """RetinaNet whose head uses Winograd 3x3 convs at CPU inference (``MODEL.RESBACKBONE.WINOGRAD``)."""

    @classmethod
    def from_config(cls, cfg):
        """RetinaNet's arguments, with a head whose 3x3 convs are Winograd twins (same
        parameters) unless ``MODEL.RESBACKBONE.WINOGRAD`` is False."""
        arguments = super().from_config(cfg)
        winograd = cfg.MODEL.RESBACKBONE.WINOGRAD if "RESBACKBONE" in cfg.MODEL else True
        if winograd and nnpack_available():
            arguments["head"] = with_winograd_convolutions(arguments["head"])
        return arguments
