"""``ResBackboneRetinaNet``: Detectron2's RetinaNet with Winograd 3x3 convs in its head at CPU
inference.

RetinaNet's head runs ten 3x3 convs (four per subnet plus the two predictors) on each of P3-P7,
most of the detector's FLOPs; NNPACK's Winograd kernels compute them 2-2.7x faster on the large
levels (see :mod:`resbackbones.modeling.winograd`). Same parameters and training as RetinaNet.
"""
from __future__ import annotations

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from resbackbones.modeling.winograd import use_winograd_convolutions

__all__ = ["ResBackboneRetinaNet"]


@META_ARCH_REGISTRY.register()
class ResBackboneRetinaNet(RetinaNet):
    """RetinaNet whose head uses Winograd 3x3 convs at CPU inference (``MODEL.RESBACKBONE.WINOGRAD``)."""

    @configurable
    def __init__(self, *, winograd: bool = True, **kwargs) -> None:
        """
        Args:
            winograd: NNPACK Winograd 3x3 convs in the head at CPU inference.
            kwargs: the arguments of :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        if winograd:
            use_winograd_convolutions(self.head)

    @classmethod
    def from_config(cls, cfg):
        arguments = super().from_config(cfg)
        if "RESBACKBONE" not in cfg.MODEL:  # a plain Detectron2 config: __init__'s default
            return arguments
        return {**arguments, "winograd": cfg.MODEL.RESBACKBONE.WINOGRAD}
