"""Reproduce Detectron2's built-in ResNets on the timm models, for Detectron2's own weights.

Detectron2's ResNets and timm's share every layer but one choice: MSRA's Caffe2 ResNets (the
``R-50.pkl``/``R-101.pkl`` ImageNet files and the model-zoo R50/R101 detectors trained from
them) put the stride of a downsampling bottleneck in its first 1x1 convolution
(``MODEL.RESNETS.STRIDE_IN_1X1: True``), timm and torchvision in the 3x3 one. The weights have
the same shapes either way, so a wrong choice loads silently and costs accuracy. Here the stride
is moved on timm's own modules (an attribute change, no second implementation of the blocks).

The other Detectron2 options map onto the catalog: ResNeXt groups x width are catalog entries
(``resnext101_32x8d`` is Detectron2's X101-32x8d), ResNet-18/34 basic blocks are ``resnet18``/
``resnet34`` (Detectron2's ``RES2_OUT_CHANNELS: 64``), and FrozenBN has the same epsilon (1e-5)
in both libraries.
"""
from __future__ import annotations

from typing import List, Tuple

from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from resbackbones.catalog import Family

__all__ = ["STRIDE_IN_1X1_FAMILIES", "set_stride_in_1x1"]

# Catalog families whose blocks are Detectron2's BottleneckBlock (plain 1x1-3x3-1x1, no SE, no
# anti-aliasing, 1x1-conv shortcut), so that STRIDE_IN_1X1 has Detectron2's meaning.
STRIDE_IN_1X1_FAMILIES: Tuple[Family, ...] = (Family.RESNET, Family.RESNEXT, Family.WIDE_RESNET)


def _stages(body: nn.Module) -> List[nn.Module]:
    return [getattr(body, name) for name in ("layer1", "layer2", "layer3", "layer4")
            if hasattr(body, name)]


def set_stride_in_1x1(backbone: nn.Module) -> nn.Module:
    """Move the stride of each downsampling bottleneck from its 3x3 conv to its first 1x1 conv.

    This is Detectron2's ``MODEL.RESNETS.STRIDE_IN_1X1: True`` (MSRA weights), selected in
    resbackbones by ``MODEL.RESBACKBONE.STRIDE_IN_1X1``. Parameter names and shapes do not change.

    Args:
        backbone: a :class:`~resbackbones.modeling.TimmBackbone` (its ``body`` is changed in
            place).

    Returns:
        The same backbone.

    Raises:
        ValueError: the architecture is not a plain bottleneck ResNet/ResNeXt (ResNet-18/34 basic
            blocks have no 1x1 conv; ResNet-D, SE, -RS and ResNetV2 differ from Detectron2's
            blocks in other ways).
    """
    entry = backbone.entry
    stages = _stages(backbone.body)
    blocks = [block for stage in stages for block in stage]
    if any(isinstance(block, BasicBlock) for block in blocks):
        raise ValueError(
            f"MODEL.RESBACKBONE.STRIDE_IN_1X1 is True, but '{entry.name}' uses basic blocks "
            "(two 3x3 convs, no 1x1 conv). Detectron2 ignores the key for ResNet-18/34; set it "
            "False.")
    plain = entry.family in STRIDE_IN_1X1_FAMILIES and entry.in_catalog
    if not plain or not blocks or not all(_is_plain_bottleneck(block) for block in blocks):
        raise ValueError(
            f"MODEL.RESBACKBONE.STRIDE_IN_1X1 is True, but '{entry.name}' (family "
            f"'{entry.family}') is not one of Detectron2's bottleneck ResNets. It applies to the "
            f"catalog families {', '.join(map(str, STRIDE_IN_1X1_FAMILIES))} (e.g. resnet50, resnet101, "
            "resnext101_32x8d); set it False for other architectures.")
    for stage in stages:
        block = stage[0]
        stride = block.conv2.stride
        if stride != (1, 1):
            block.conv1.stride, block.conv2.stride = stride, (1, 1)
    return backbone


def _is_plain_bottleneck(block: nn.Module) -> bool:
    return (isinstance(block, Bottleneck) and block.se is None
            and isinstance(block.aa, nn.Identity) and block.conv1.kernel_size == (1, 1))
