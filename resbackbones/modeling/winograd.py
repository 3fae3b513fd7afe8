"""3x3 convolutions through NNPACK's Winograd kernels at CPU inference.

The 256-channel 3x3 convolutions of the FPN outputs, the RPN and the mask head are ~45% of Mask
R-CNN R50-FPN's FLOPs. oneDNN computes them directly; NNPACK (built into PyTorch's CPU wheels)
computes them with Winograd transforms, which need fewer multiplications: measured on a 2-core
AVX-512 machine, a 256->256 3x3 conv on a 200x336 P2 map takes 0.15 s instead of 0.40 s.
Winograd is still float32 arithmetic, but it rounds differently from a direct convolution:
relative differences of ~1e-5 per layer (tests/test_speedups.py states the tolerance), as when
cuDNN picks a Winograd algorithm on a GPU. Training and CUDA keep PyTorch's own path.

The gain depends on the CPU: large on an AMD EPYC, small or negative on an Intel Xeon whose
oneDNN direct convolutions use AVX-512 well. So each shape bucket takes NNPACK only where a
one-off measurement on this machine found it at least 10% faster
(:mod:`resbackbones.modeling.kernel_choice`, cached per CPU model and PyTorch version).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from detectron2.layers import Conv2d as Detectron2Conv2d
from torch import nn
from torch.nn import functional as F

from resbackbones.modeling.inference import is_compiling
from resbackbones.modeling.kernel_choice import choose_kernel, shape_bucket

__all__ = ["WinogradConv2d", "WinogradDetectron2Conv2d", "nnpack_available",
           "with_winograd_convolutions", "winograd_applies"]

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
    """Whether this call of ``conv`` on ``x`` runs through NNPACK.

    Eligible calls (CPU, float32 without autocast, no grad, large enough) go through NNPACK
    where this machine measured it faster for the shape (:mod:`kernel_choice`; always with
    ``RESBACKBONES_CPU_TUNING=off``). Under bf16 autocast oneDNN's direct bf16 kernels are
    used instead: Winograd would compute in float32. Never while ``torch.compile`` traces.
    """
    if is_compiling():
        # A traced graph gets the compiler's kernels: NNPACK has no fake-tensor kernel to trace.
        return False
    eligible = (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and conv.weight.dtype == torch.float32 and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")
                and x.shape[0] * x.shape[-2] * x.shape[-1] >= MIN_WINOGRAD_PIXELS
                and nnpack_available())
    return eligible and _measured_faster(conv, x)


def _measured_faster(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether NNPACK beats oneDNN's direct convolution for this layer's shape bucket here."""
    weight, bias = conv.weight, conv.bias
    candidates = {
        "direct": lambda: F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                                   conv.groups),
        "winograd": lambda: _nnpack_conv(conv, x, weight, bias),
    }
    kind = f"conv3x3 {conv.in_channels}->{conv.out_channels}"
    return choose_kernel(kind, shape_bucket(x), candidates, fixed_rule="winograd") == "winograd"


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


def _winograd_twin(conv: nn.Conv2d) -> nn.Conv2d:
    """A Winograd module constructed with ``conv``'s settings, sharing its parameters."""
    settings = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device="meta")  # no initialisation work: the parameters are conv's own
    if isinstance(conv, Detectron2Conv2d):
        twin: nn.Conv2d = WinogradDetectron2Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, norm=conv.norm,
            activation=conv.activation, **settings)
    else:
        twin = WinogradConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **settings)
    twin.weight, twin.bias = conv.weight, conv.bias
    twin.train(conv.training)
    return twin


def _eligible(module: nn.Module) -> bool:
    return type(module) in (nn.Conv2d, Detectron2Conv2d) and _eligible_layer(module)


def with_winograd_convolutions(module: nn.Module) -> nn.Module:
    """``module`` with every eligible 3x3 stride-1 conv replaced by a Winograd twin.

    The twins are constructed with the same settings and share the original parameters, so
    parameters, buffers and state-dict keys are unchanged; they fall back to the stock forward
    whenever :func:`winograd_applies` is false (training, CUDA, small maps).

    Args:
        module: a conv, or a module holding convs (its children are replaced in place).

    Returns:
        The twin if ``module`` itself is an eligible conv, else ``module``.
    """
    if _eligible(module):
        return _winograd_twin(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _eligible(child):
                setattr(parent, name, _winograd_twin(child))
    return module
