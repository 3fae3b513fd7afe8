"""The building blocks of ResUNet++ (Jha et al., 2019), written from the paper's description.

Every block keeps the spatial size except where its docstring says otherwise, so the decoder can
be assembled for any encoder from the encoder's channels and strides alone:

* :class:`SqueezeExcite`: channel re-weighting from globally pooled statistics.
* :class:`PreActResidualUnit`: BN-ReLU-conv3x3 twice plus a 1x1 projection shortcut (the
  "residual unit" of the encoder and decoder); ``stride`` 2 halves the size.
* :class:`StemBlock`: the paper's first block, conv-BN-ReLU-conv plus a 1x1 shortcut (its input
  is the normalised image, so it starts with a convolution rather than a norm).
* :class:`ASPP`: parallel dilated 3x3 convolutions, summed, then a 1x1 convolution; used as the
  bridge after the encoder and as the head before the classifier.
* :class:`AttentionGate`: the decoder's attention: the higher-resolution encoder feature, pooled
  to the decoder's size, gates the decoder feature.
* :class:`DecoderStep`: attention, x2 upsampling, concatenation with the skip, residual unit.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ASPP", "AttentionGate", "DecoderStep", "PreActResidualUnit", "SqueezeExcite",
           "StemBlock"]


def _bn_relu_conv(in_channels: int, out_channels: int, stride: int = 1,
                  dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                  dilation=dilation, bias=False),
    )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid, channel product."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        """
        Args:
            channels: input (= output) channels.
            reduction: bottleneck ratio; the hidden layer has ``max(channels // reduction, 4)``.
        """
        super().__init__()
        if reduction < 1:
            raise ValueError(f"SE reduction must be >= 1, got {reduction}.")
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.adaptive_avg_pool2d(x, 1)
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(weights), inplace=True)))
        return x * weights


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit: ``(BN-ReLU-conv3x3) x 2 + 1x1 conv-BN shortcut``.

    Output size is ``ceil(input / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _bn_relu_conv(in_channels, out_channels, stride=stride),
            _bn_relu_conv(out_channels, out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class StemBlock(nn.Module):
    """The first block: ``conv3x3-BN-ReLU-conv3x3 + 1x1 conv-BN shortcut``, full resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as ResUNet++ uses it.

    One ``conv3x3(dilation d)-BN`` branch per dilation; the branches are summed (not
    concatenated, which keeps the block cheap at full resolution in the head) and projected by a
    1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 dilations: Sequence[int] = (1, 6, 12, 18)) -> None:
        """
        Args:
            in_channels: input channels.
            out_channels: channels of every branch and of the output.
            dilations: one branch per value; the paper's bridge and head use 1, 6, 12, 18.
        """
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"ASPP dilations must be a non-empty list of integers >= 1, got "
                             f"{list(dilations)}.")
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=int(d), dilation=int(d),
                          bias=False),
                nn.BatchNorm2d(out_channels),
            )
            for d in dilations
        )
        self.project = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = self.branches[0](x)
        for branch in self.branches[1:]:
            summed = summed + branch(x)
        return self.project(summed)


class AttentionGate(nn.Module):
    """Attention of the decoder: the skip feature (twice the decoder's resolution) gates it.

    ``skip -> BN-ReLU-conv3x3 -> maxpool 2x2`` is added to ``decoder -> BN-ReLU-conv3x3``; the sum
    goes through ``BN-ReLU-conv3x3`` and multiplies the decoder feature. Output: the decoder
    feature's shape.
    """

    def __init__(self, skip_channels: int, decoder_channels: int) -> None:
        super().__init__()
        self.skip_path = _bn_relu_conv(skip_channels, decoder_channels)
        self.decoder_path = _bn_relu_conv(decoder_channels, decoder_channels)
        self.gate = _bn_relu_conv(decoder_channels, decoder_channels)

    def forward(self, skip: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(self.skip_path(skip), 2, ceil_mode=True)
        if pooled.shape[-2:] != decoder.shape[-2:]:
            raise ValueError(f"AttentionGate: the skip feature {tuple(skip.shape)} must have "
                             f"twice the size of the decoder feature {tuple(decoder.shape)}.")
        return self.gate(pooled + self.decoder_path(decoder)) * decoder


class DecoderStep(nn.Module):
    """One decoder step: attention, x2 upsampling, concatenation with the skip, residual unit.

    Input ``decoder`` at stride 2s, ``skip`` at stride s; output ``out_channels`` at stride s.
    """

    def __init__(self, skip_channels: int, decoder_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = AttentionGate(skip_channels, decoder_channels)
        self.fuse = PreActResidualUnit(decoder_channels + skip_channels, out_channels)

    def forward(self, skip: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        attended = self.attention(skip, decoder)
        upsampled = F.interpolate(attended, scale_factor=2.0, mode="nearest")
        upsampled = upsampled[..., : skip.shape[-2], : skip.shape[-1]]
        return self.fuse(torch.cat([upsampled, skip], dim=1))
