"""Normalisation layers: convert timm's BatchNorm to what MODEL.RESBACKBONE.NORM asks for.

timm's ResNets use ``nn.BatchNorm2d``, and ResNetV2 uses ``BatchNormAct2d`` (a BatchNorm2d
subclass that also applies its activation). Converters here keep that activation: Detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm`` would silently drop it. Parameter and buffer names
stay the same, so checkpoints load whatever the norm.
"""
from __future__ import annotations

from typing import Optional

import torch
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from timm.layers import BatchNormAct2d, GroupNormAct, convert_sync_batchnorm, freeze_batch_norm_2d
from torch import nn

from resbackbones.errors import check_choice

__all__ = ["NaiveSyncBatchNormAct2d", "NORM_CHOICES", "check_norm", "convert_norm", "GN_GROUPS"]

# Values MODEL.RESBACKBONE.NORM accepts (Detectron2's spelling). Training from scratch needs a
# norm that trains: BN, GN or naiveSyncBN (SyncBN on CUDA).
NORM_CHOICES = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN")


def check_norm(norm: str) -> str:
    """The owner of ``MODEL.RESBACKBONE.NORM``: returns it or raises ConfigError."""
    return check_choice("MODEL.RESBACKBONE.NORM", norm, NORM_CHOICES)

# Groups of GroupNorm, as Detectron2's get_norm("GN").
GN_GROUPS = 32


class NaiveSyncBatchNormAct2d(NaiveSyncBatchNorm):
    """Detectron2's NaiveSyncBatchNorm followed by the dropout and activation of timm's
    ``BatchNormAct2d`` it replaces (pre-activation ResNetV2 keeps its ReLU)."""

    def __init__(self, num_features: int, drop: nn.Module, act: nn.Module, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _copy_bn_state(source: nn.modules.batchnorm._BatchNorm, target: nn.Module) -> nn.Module:
    """Copy affine parameters (and running statistics when the target has them)."""
    with torch.no_grad():
        if source.affine and getattr(target, "weight", None) is not None:
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(target, name, None) is not None and getattr(source, name) is not None:
                getattr(target, name).copy_(getattr(source, name))
    target.train(source.training)
    return target


def _to_naive_sync(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    kwargs = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
    if isinstance(bn, BatchNormAct2d):
        new = NaiveSyncBatchNormAct2d(bn.num_features, drop=bn.drop, act=bn.act, **kwargs)
    else:
        new = NaiveSyncBatchNorm(bn.num_features, **kwargs)
    return _copy_bn_state(bn, new)


def _to_group_norm(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    channels = bn.num_features
    if channels % GN_GROUPS:
        raise ValueError(f"NORM 'GN' uses {GN_GROUPS} groups, but a BatchNorm has {channels} "
                         "channels (not divisible); use NORM 'BN' or 'naiveSyncBN' for this model.")
    if isinstance(bn, BatchNormAct2d):
        new = GroupNormAct(channels, num_groups=GN_GROUPS, eps=bn.eps)
        new.drop, new.act = bn.drop, bn.act
    else:
        new = nn.GroupNorm(GN_GROUPS, channels, eps=bn.eps)
    # The affine init is kept: timm zero-initialises the last norm of each residual block.
    return _copy_bn_state(bn, new)


def _replace_batch_norms(module: nn.Module, convert) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return convert(module)
    for name, child in module.named_children():
        new_child = _replace_batch_norms(child, convert)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _check_sync_bn_possible() -> None:
    if not torch.cuda.is_available() and comm.get_world_size() > 1:
        raise ValueError(
            "MODEL.RESBACKBONE.NORM 'SyncBN' uses torch.nn.SyncBatchNorm, which synchronises only "
            "CUDA tensors, and CUDA is not available in this multi-process run. "
            "Use NORM 'naiveSyncBN' (works with the gloo backend on CPU) or 'GN'."
        )


def convert_norm(module: nn.Module, norm: str, process_group: Optional[object] = None) -> nn.Module:
    """Convert every BatchNorm in ``module`` to the layer named by ``norm``.

    Args:
        module: a timm model (or part of it) built with BatchNorm layers.
        norm: one of ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"naiveSyncBN"``, ``"GN"``.
        process_group: for SyncBN only, passed to ``torch.nn.SyncBatchNorm``.

    Returns:
        The converted module (the same object unless ``module`` itself is a BatchNorm).
        Names of parameters and buffers are unchanged, so weights load before or after.
    """
    check_norm(norm)
    if norm == "BN":
        return module
    if norm == "FrozenBN":
        return freeze_batch_norm_2d(module)
    if norm == "SyncBN":
        _check_sync_bn_possible()
        return convert_sync_batchnorm(module, process_group)
    if norm == "naiveSyncBN":
        return _replace_batch_norms(module, _to_naive_sync)
    if norm == "GN":
        return _replace_batch_norms(module, _to_group_norm)
    raise AssertionError(f"NORM_CHOICES and convert_norm disagree on {norm!r}")
