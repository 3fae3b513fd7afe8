"""The two encoders of ResUNet++, registered in Detectron2's ``BACKBONE_REGISTRY``.

One config line chooses between them (``MODEL.BACKBONE.NAME``):

* ``build_resunetpp_paper_encoder``: the paper's encoder trained from scratch: a stem block and
  three pre-activation residual units with stride 2, each followed by squeeze-and-excitation.
  Outputs ``c1``..``c4`` at strides 1, 2, 4, 8 with ``MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS``
  (16-32-64-128 in the paper).
* ``build_resunetpp_resbackbone_encoder``: any resbackbones catalog entry
  (``MODEL.RESBACKBONE.ARCH``), built by resbackbones' own registered
  ``build_resbackbone_backbone`` (weights, norm conversion and freezing included), plus the
  stem output at stride 2 for full-resolution detail, read with a forward hook on the timm
  module that ``feature_info`` names for it.

The decoder (:mod:`resunetpp.head`) takes every output of ``output_shape()`` ordered by stride:
the deepest feeds the ASPP bridge, the others are skips.
"""
from __future__ import annotations

import contextvars
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone
from torch import nn

from .blocks import PreActResidualUnit, SqueezeExcite, StemBlock

__all__ = ["PaperEncoder", "ResBackboneEncoder", "build_resunetpp_paper_encoder",
           "build_resunetpp_resbackbone_encoder"]

# Name of the stride-2 output the resbackbone encoder adds to res2..res5.
STEM_FEATURE = "stem"
# Where the stem hook puts its output during one forward pass. A module-level function and a
# context variable (not a closure over the encoder) keep copies of the model working: deep copies
# (resbackbones' BN-folded inference copy, users' EMA copies) share the hook function.
_STEM_SINK: contextvars.ContextVar[Optional[Dict[str, torch.Tensor]]] = contextvars.ContextVar(
    "resunetpp_stem_sink", default=None)


def _keep_stem_output(module: nn.Module, inputs, output: torch.Tensor) -> None:
    sink = _STEM_SINK.get()
    if sink is not None:
        sink[STEM_FEATURE] = output


class PaperEncoder(Backbone):
    """The ResUNet++ encoder: stem + SE, then residual units with stride 2, each + SE.

    Outputs ``c1`` (stride 1) .. ``c{n}`` (stride ``2**(n-1)``) with the given channels.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3,
                 se_reduction: int = 8) -> None:
        """
        Args:
            channels: output channels of the stem and of each residual unit (at least two).
            in_channels: image channels.
            se_reduction: bottleneck ratio of the squeeze-and-excitation blocks.
        """
        super().__init__()
        if len(channels) < 2 or any(int(c) < 1 for c in channels):
            raise ValueError(f"MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS must list at least two "
                             f"positive widths (the paper: [16, 32, 64, 128]), got "
                             f"{list(channels)}.")
        self._out_features = [f"c{i + 1}" for i in range(len(channels))]
        self.stem = StemBlock(in_channels, channels[0])
        self.stem_se = SqueezeExcite(channels[0], se_reduction)
        self.stages = nn.ModuleList(
            nn.Sequential(PreActResidualUnit(c_in, c_out, stride=2),
                          SqueezeExcite(c_out, se_reduction))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self._out_feature_channels = dict(zip(self._out_features, map(int, channels)))
        self._out_feature_strides = {name: 2 ** i for i, name in enumerate(self._out_features)}

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feature = self.stem_se(self.stem(x))
        outputs = [feature]
        for stage in self.stages:
            feature = stage(feature)
            outputs.append(feature)
        return dict(zip(self._out_features, outputs))


@BACKBONE_REGISTRY.register()
def build_resunetpp_paper_encoder(cfg: CfgNode, input_shape: Optional[ShapeSpec] = None
                                  ) -> PaperEncoder:
    """Build the paper's encoder from ``MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS``."""
    channels = input_shape.channels if input_shape is not None and input_shape.channels else 3
    return PaperEncoder(cfg.MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS, in_channels=channels,
                        se_reduction=cfg.MODEL.RESUNETPP.SE_REDUCTION)


class ResBackboneEncoder(Backbone):
    """A resbackbones bottom-up backbone plus its stride-2 stem output.

    The stem output is captured by a forward hook on the timm module that ``feature_info[0]``
    names (``act1`` for ResNet-like models, ``stem.conv`` for ResNetV2); the BN-folded inference
    copy that resbackbones deep-copies from the backbone keeps the hook. Optionally each output
    is re-weighted by squeeze-and-excitation (the catalog's encoders lack it, ResUNet++ has it).
    """

    def __init__(self, backbone: Backbone, skip_se: bool = True, se_reduction: int = 8) -> None:
        """
        Args:
            backbone: what ``build_resbackbone_backbone`` returns (a timm model under ``body``).
            skip_se: add a squeeze-and-excitation block on every output.
            se_reduction: bottleneck ratio of those blocks.
        """
        super().__init__()
        body = getattr(backbone, "body", None)
        info = getattr(body, "feature_info", None)
        if info is None or len(info) == 0:
            raise ValueError(f"{type(backbone).__name__} has no timm model with feature_info "
                             "under .body; use MODEL.BACKBONE.NAME "
                             "'build_resunetpp_paper_encoder' or a resbackbones catalog entry.")
        stem = info[0]
        if int(stem["reduction"]) != 2:
            raise ValueError(f"The first feature of {backbone.entry.name} has stride "
                             f"{stem['reduction']}, not 2; it cannot give the stem output.")
        self.backbone = backbone
        body.get_submodule(stem["module"]).register_forward_hook(_keep_stem_output)
        shapes = backbone.output_shape()
        self._out_features = [STEM_FEATURE] + list(shapes)
        self._out_feature_channels = {STEM_FEATURE: int(stem["num_chs"])}
        self._out_feature_strides = {STEM_FEATURE: 2}
        for name, shape in shapes.items():
            self._out_feature_channels[name] = int(shape.channels)
            self._out_feature_strides[name] = int(shape.stride)
        self.skip_se = nn.ModuleDict(
            {name: SqueezeExcite(channels, se_reduction)
             for name, channels in self._out_feature_channels.items()} if skip_se else {}
        )

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        sink: Dict[str, torch.Tensor] = {}
        token = _STEM_SINK.set(sink)
        try:
            features = self.backbone(x)
        finally:
            _STEM_SINK.reset(token)
        stem = sink.get(STEM_FEATURE)
        if stem is None:
            raise RuntimeError("The stem hook of the resbackbone encoder did not fire; set "
                               "MODEL.RESBACKBONE.COMPILE False (compiled copies skip hooks).")
        outputs = {STEM_FEATURE: stem.contiguous(), **features}
        for name, se in self.skip_se.items():
            outputs[name] = se(outputs[name])
        return outputs


@BACKBONE_REGISTRY.register()
def build_resunetpp_resbackbone_encoder(cfg: CfgNode, input_shape: Optional[ShapeSpec] = None
                                        ) -> ResBackboneEncoder:
    """Build ``MODEL.RESBACKBONE.ARCH`` through resbackbones' registered backbone, + stem output.

    ``MODEL.RESBACKBONE.OUT_FEATURES`` chooses the stages (res2..res5 by default); the deepest
    one feeds the bridge.
    """
    inner = cfg.clone()
    inner.defrost()
    inner.MODEL.BACKBONE.NAME = "build_resbackbone_backbone"
    backbone = build_backbone(inner, input_shape)
    return ResBackboneEncoder(backbone, skip_se=cfg.MODEL.RESUNETPP.SKIP_SE,
                              se_reduction=cfg.MODEL.RESUNETPP.SE_REDUCTION)


def ordered_features(shapes: Dict[str, ShapeSpec]) -> List[str]:
    """Feature names from the finest stride to the coarsest (the decoder's order)."""
    return sorted(shapes, key=lambda name: shapes[name].stride)
