"""3x3 convolutions through NNPACK's Winograd kernels at CPU inference.

The 256-channel 3x3 convolutions of the FPN outputs, the RPN and the mask head are ~45% of Mask
R-CNN R50-FPN's FLOPs. oneDNN computes them directly; NNPACK (built into PyTorch's CPU wheels)
computes them with Winograd transforms, which need fewer multiplications: measured on a 2-core
AVX-512 machine, a 256->256 3x3 conv on a 200x336 P2 map takes 0.15 s instead of 0.40 s.
Winograd is still float32 arithmetic, but it rounds differently from a direct convolution:
relative differences of ~1e-5 per layer (tests/test_speedups.py states the tolerance), as when
cuDNN picks a Winograd algorithm on a GPU. Training and CUDA keep PyTorch's own path.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from detectron2.layers import Conv2d as Detectron2Conv2d
from torch import nn

__all__ = ["nnpack_available", "use_winograd_convolutions", "winograd_applies"]

# Below this many output pixels (batch x height x width) oneDNN's direct convolution is as fast
# or faster (measured: one 13x21 map 1.5 ms direct vs 3.5 ms Winograd, 25x42 on par; the mask
# head's 100 ROIs x 14x14 take 68 ms instead of 109 ms).
MIN_WINOGRAD_PIXELS = 32 * 32


@functools.lru_cache(maxsize=None)
def nnpack_available() -> bool:
    """Whether PyTorch has NNPACK on this CPU; the call also initialises NNPACK."""
    return bool(getattr(torch, "_nnpack_available", lambda: False)())


def _eligible_layer(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def winograd_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether this call of ``conv`` on ``x`` runs through NNPACK."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and conv.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and x.shape[0] * x.shape[-2] * x.shape[-1] >= MIN_WINOGRAD_PIXELS and nnpack_available())


def _nnpack_conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias,
                                             list(conv.padding), [1, 1])


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (3x3, stride 1) that uses NNPACK at CPU inference."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        if winograd_applies(self, input):
            return _nnpack_conv(self, input, weight, bias)
        return super()._conv_forward(input, weight, bias)


class WinogradDetectron2Conv2d(Detectron2Conv2d):
    """Detectron2's ``Conv2d`` (with its norm and activation) that uses NNPACK likewise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not winograd_applies(self, x):
            return super().forward(x)
        x = _nnpack_conv(self, x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


_WINOGRAD_CLASSES = {nn.Conv2d: WinogradConv2d, Detectron2Conv2d: WinogradDetectron2Conv2d}


def use_winograd_convolutions(module: nn.Module) -> int:
    """Switch, in place, every eligible 3x3 stride-1 conv of ``module`` to the Winograd classes.

    Parameters, buffers and state-dict keys are unchanged; the classes fall back to the stock
    forward whenever :func:`winograd_applies` is false (training, CUDA, small maps).

    Returns:
        The number of convolutions switched.
    """
    switched = 0
    for layer in module.modules():
        replacement = _WINOGRAD_CLASSES.get(type(layer))
        if replacement is not None and _eligible_layer(layer):
            layer.__class__ = replacement
            switched += 1
    return switched
