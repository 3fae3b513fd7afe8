"""Inference-only speed-ups of the bottom-up network: BatchNorm folding and channels-last.

At inference every BatchNorm (frozen or not) is a fixed per-channel affine map, so it can be
folded into the convolution before it: one op instead of two, and nothing else changes. The
folded network is a separate copy used only in eval mode; it is rebuilt whenever a parameter or
buffer of the trained network changes (checkpoint load, an optimizer step), detected through
PyTorch's tensor version counters, so training and checkpoints never see folded weights.
"""
from __future__ import annotations

import copy
import re
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["fold_batchnorm", "FoldedInferenceCopy", "is_compiling"]

# torch.compiler.is_compiling arrived in torch 2.3; older releases have the dynamo one.
_IS_COMPILING = (getattr(getattr(torch, "compiler", None), "is_compiling", None)
                 or (lambda: torch._dynamo.is_compiling()))


def is_compiling() -> bool:
    """Whether torch.compile is tracing this call: speed-ups whose Python bookkeeping or
    kernels cannot be traced (the folded copy, NNPACK) step aside then."""
    return bool(_IS_COMPILING())


# timm's ResNet blocks name a conv and the norm applied to its output alike: conv1 -> bn1, ...
_BN_NAME = re.compile(r"bn(\d*)")


def _is_foldable_norm(module: Optional[nn.Module]) -> bool:
    """BatchNorm of any kind (torch, SyncBN, Detectron2/timm frozen BN) with running stats."""
    if module is None or not all(hasattr(module, name) for name in
                                 ("weight", "bias", "running_mean", "running_var", "eps")):
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.affine
    return "BatchNorm" in type(module).__name__


def _last_conv(module: Optional[nn.Module]) -> Optional[nn.Conv2d]:
    if isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module if isinstance(module, nn.Conv2d) else None


def _conv_norm_pairs(parent: nn.Module) -> Iterator[Tuple[nn.Conv2d, str, nn.Module]]:
    """(conv, norm attribute name, norm) where ``norm`` is applied right after ``conv``."""
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        names = list(children)
        for conv_name, norm_name in zip(names, names[1:]):
            conv = children[conv_name]
            if isinstance(conv, nn.Conv2d) and _is_foldable_norm(children[norm_name]):
                yield conv, norm_name, children[norm_name]
    for norm_name, norm in children.items():
        match = _BN_NAME.fullmatch(norm_name)
        if match and _is_foldable_norm(norm):
            conv = _last_conv(children.get("conv" + match.group(1)))
            if conv is not None and conv.out_channels == norm.running_mean.numel():
                yield conv, norm_name, norm


def _replacement(norm: nn.Module) -> nn.Module:
    """What stays of a norm once folded: its activation, if it carries one (timm's NormAct)."""
    tail = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None))
            if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*tail) if tail else nn.Identity()


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    dtype = conv.weight.dtype
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=False)
    else:
        conv.bias.copy_(new_bias.to(dtype))


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a convolution into it.

    Pairs are found structurally (``nn.Sequential`` neighbours and timm's ``convN``/``bnN``
    naming); norms that precede their convolution (pre-activation ResNetV2) are left alone.
    Only valid for inference (running statistics).

    Args:
        module: a network in eval mode; it is modified in place.

    Returns:
        The number of norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        for conv, norm_name, norm in list(_conv_norm_pairs(parent)):
            _fold_into(conv, norm)
            setattr(parent, norm_name, _replacement(norm))
            folded += 1
    return folded


def _state_versions(module: nn.Module) -> List[Tuple[int, int]]:
    return [(t.data_ptr(), t._version) for t in
            list(module.parameters()) + list(module.buffers())]


class FoldedInferenceCopy:
    """A BN-folded (optionally channels-last, compiled) copy of a network, rebuilt when stale.

    Not an ``nn.Module`` attribute of its owner on purpose: the copy must not appear in the
    owner's ``state_dict`` nor in ``parameters()`` (optimizers, DDP, checkpoints).
    """

    def __init__(self, compile_for_inference: bool = False):
        self.compile_for_inference = compile_for_inference
        self._copy: Optional[nn.Module] = None
        self._key: Optional[tuple] = None
        self.folded_count = 0

    def get(self, source: nn.Module, channels_last: bool = False) -> nn.Module:
        """The folded copy of ``source``, refreshed if any of its tensors changed.

        When only values changed (a checkpoint load, an optimizer step between evaluations),
        the new folded values are copied into the existing copy's tensors, so a compiled copy is
        reused instead of compiled again.
        """
        key = (channels_last, tuple(_state_versions(source)))
        if self._copy is not None and key == self._key:
            return self._copy
        folded = copy.deepcopy(source).eval()
        for parameter in folded.parameters():
            parameter.requires_grad_(False)
        self.folded_count = fold_batchnorm(folded)
        if channels_last:
            folded = folded.to(memory_format=torch.channels_last)
        target = self._module()
        if (target is not None and self._key is not None and self._key[0] == channels_last
                and _same_structure(target, folded)):
            with torch.no_grad():
                target.load_state_dict(folded.state_dict())  # in place: same tensors
        else:
            self._copy = _CompiledIntermediates(folded) if self.compile_for_inference else folded
        self._key = key
        return self._copy

    def _module(self) -> Optional[nn.Module]:
        """The folded network itself (inside the compile wrapper, if any)."""
        if isinstance(self._copy, _CompiledIntermediates):
            return self._copy.body
        return self._copy

    def clear(self) -> None:
        """Drop the copy (its memory, on the GPU too); the next ``get`` builds it again."""
        self._copy = None
        self._key = None


def _same_structure(first: nn.Module, second: nn.Module) -> bool:
    """Same tensor names, shapes and dtypes: values of one can be copied into the other."""
    def layout(module: nn.Module):
        return [(name, tuple(t.shape), t.dtype) for name, t in module.state_dict().items()]
    return layout(first) == layout(second)


class _CompiledIntermediates(nn.Module):
    """Compiles ``forward_intermediates`` of a timm model; eager again on the first failure."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        # dynamic=None: the first new input size recompiles once with dynamic shapes; later
        # sizes reuse that graph (dynamic=False compiled again for every test size).
        self._compiled = torch.compile(body.forward_intermediates, dynamic=None)
        self._failed = False

    def forward_intermediates(self, x, **kwargs):
        if not self._failed:
            try:
                return self._compiled(x, **kwargs)
            except Exception as error:  # compilation problems surface at the first call
                import logging

                logging.getLogger(__name__).warning(
                    "torch.compile of the backbone failed (%s: %s); running it eagerly. Set "
                    "MODEL.RESBACKBONE.COMPILE False to skip the attempt.",
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self._failed = True
        return self.body.forward_intermediates(x, **kwargs)


def _compiled_or_eager(body: nn.Module) -> nn.Module:
    return _CompiledIntermediates(body)
