"""The ResUNet++ decoder as a Detectron2 semantic-segmentation head (``SEM_SEG_HEADS_REGISTRY``).

Used with Detectron2's ``SemanticSegmentor``: it takes every feature of the encoder's
``output_shape()``, ordered by stride. The coarsest goes through the ASPP bridge; each finer one
is a skip for one decoder step (attention, x2 upsampling, concatenation, residual unit); an ASPP
head and a 1x1 convolution give the logits. When the finest encoder feature is coarser than
the input (the catalog encoders' stem is at stride 2) the logits are upsampled bilinearly, or,
with ``MODEL.RESUNETPP.FULL_RESOLUTION_CHANNELS`` > 0, the decoder output is upsampled and
refined by one more residual unit before the head.

``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` 2 is the binary case: one logit channel trained with
Dice + BCE; at inference the head returns the two-channel logits ``[0, z]`` so that Detectron2's
``argmax`` post-processing and ``SemSegEvaluator`` see background/foreground, and
``softmax`` of them equals ``sigmoid(z)``. More classes: K channels, Dice + cross-entropy.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .blocks import ASPP, DecoderStep, PreActResidualUnit
from .encoders import ordered_features
from .losses import binary_dice_bce_loss, multiclass_dice_ce_loss

__all__ = ["ResUNetPPHead", "decoder_widths"]

# Cap of the decoder widths derived from the skips (keeps bottleneck encoders affordable).
_MAX_DERIVED_WIDTH = 256


def decoder_widths(skip_channels: Sequence[int], configured: Sequence[int] = ()) -> List[int]:
    """Width of each decoder step, deepest first.

    Args:
        skip_channels: channels of the skips, deepest first.
        configured: ``MODEL.RESUNETPP.DECODER_CHANNELS``; empty derives twice the skip's width
            (the paper's 128/64/32 for skips 64/32/16), at most 256.

    Returns:
        One width per skip.
    """
    if configured:
        if len(configured) != len(skip_channels):
            raise ValueError(f"MODEL.RESUNETPP.DECODER_CHANNELS {list(configured)} has "
                             f"{len(configured)} values; the encoder has {len(skip_channels)} "
                             f"skips (channels {list(skip_channels)}). Give one width per skip, "
                             "or [] to derive them.")
        return [int(c) for c in configured]
    return [min(2 * int(c), _MAX_DERIVED_WIDTH) for c in skip_channels]


@SEM_SEG_HEADS_REGISTRY.register()
class ResUNetPPHead(nn.Module):
    """ASPP bridge, attention decoder steps and ASPP head of ResUNet++."""

    def __init__(self, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        settings = cfg.MODEL.RESUNETPP
        names = ordered_features(input_shape)
        if len(names) < 2:
            raise ValueError(f"ResUNetPPHead needs at least two encoder features, got {names}.")
        strides = [input_shape[name].stride for name in names]
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(f"ResUNetPPHead upsamples by 2 per step: encoder strides "
                                 f"{dict(zip(names, strides))} must double from one feature "
                                 "to the next.")
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        if self.num_classes < 2:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {self.num_classes} is invalid: 2 is "
                             "binary (background + foreground), more is multi-class.")
        self.ignore_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        self.loss_weight = float(cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT)
        self.dice_weight = float(settings.DICE_WEIGHT)
        self.pixel_weight = float(settings.PIXEL_LOSS_WEIGHT)
        self.in_features = names
        self.output_stride = strides[0]
        dilations = list(settings.ASPP_DILATIONS)

        self.bridge = ASPP(input_shape[names[-1]].channels, settings.BRIDGE_CHANNELS, dilations)
        skips = names[:-1][::-1]
        widths = decoder_widths([input_shape[name].channels for name in skips],
                                settings.DECODER_CHANNELS)
        steps, channels = [], int(settings.BRIDGE_CHANNELS)
        for name, width in zip(skips, widths):
            steps.append(DecoderStep(input_shape[name].channels, channels, width))
            channels = width
        self.steps = nn.ModuleList(steps)
        self.skip_names = skips
        self.full_resolution = None
        if self.output_stride > 1 and settings.FULL_RESOLUTION_CHANNELS > 0:
            self.full_resolution = PreActResidualUnit(channels, settings.FULL_RESOLUTION_CHANNELS)
            channels = int(settings.FULL_RESOLUTION_CHANNELS)
        self.aspp_head = ASPP(channels, settings.HEAD_CHANNELS, dilations)
        logit_channels = 1 if self.num_classes == 2 else self.num_classes
        self.predictor = nn.Conv2d(settings.HEAD_CHANNELS, logit_channels, 1)

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the input resolution (the encoder's input, padded), before post-processing."""
        decoded = self.bridge(features[self.in_features[-1]])
        for name, step in zip(self.skip_names, self.steps):
            decoded = step(features[name], decoded)
        if self.full_resolution is not None:
            decoded = F.interpolate(decoded, scale_factor=float(self.output_stride),
                                    mode="nearest")
            decoded = self.full_resolution(decoded)
        logits = self.predictor(self.aspp_head(decoded))
        if self.output_stride > 1 and self.full_resolution is None:
            logits = F.interpolate(logits, scale_factor=float(self.output_stride),
                                   mode="bilinear", align_corners=False)
        return logits

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
                ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Detectron2's head interface: ``(predictions or None, losses)``."""
        logits = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("ResUNetPPHead needs 'sem_seg' targets in training mode.")
            return None, self.losses(logits, targets)
        if logits.shape[1] == 1:  # binary: background logit 0, foreground logit z
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits, {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Dice + BCE (binary) or Dice + CE (multi-class), times ``SEM_SEG_HEAD.LOSS_WEIGHT``."""
        logits = logits[..., : targets.shape[-2], : targets.shape[-1]].float()
        if self.num_classes == 2:
            losses = binary_dice_bce_loss(logits, targets, self.ignore_value,
                                          self.dice_weight, self.pixel_weight)
        else:
            losses = multiclass_dice_ce_loss(logits, targets, self.ignore_value,
                                             self.dice_weight, self.pixel_weight)
        return {name: value * self.loss_weight for name, value in losses.items()}
