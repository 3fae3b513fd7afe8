"""Builders registered in Detectron2's BACKBONE_REGISTRY (selected by MODEL.BACKBONE.NAME).

* ``build_resbackbone_backbone``: the bottom-up network alone, outputs res2..res5.
* ``build_resbackbone_fpn_backbone``: + FPN with P2-P6 (LastLevelMaxPool), for Faster/Mask R-CNN.
* ``build_resbackbone_retinanet_fpn_backbone``: + FPN with P3-P7 (LastLevelP6P7 from res5), for
  RetinaNet.

All read ``MODEL.RESBACKBONE.*`` (see :mod:`resbackbones.config`), ``MODEL.BACKBONE.FREEZE_AT``
and Detectron2's ``MODEL.FPN.*``.
"""
from __future__ import annotations

import logging
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from resbackbones.catalog import get_entry, weights_input_normalization
from resbackbones.modeling.detectron2_compat import set_stride_in_1x1
from resbackbones.modeling.fpn import ResBackboneFPN
from resbackbones.modeling.norms import check_norm
from resbackbones.modeling.timm_backbone import TimmBackbone
from resbackbones.weights.loader import load_backbone_weights

__all__ = [
    "build_resbackbone_backbone",
    "build_resbackbone_fpn_backbone",
    "build_resbackbone_retinanet_fpn_backbone",
    "check_input_normalization",
]

logger = logging.getLogger(__name__)

_FPN_DEFAULT_IN_FEATURES = ["res2", "res3", "res4", "res5"]
_RETINANET_DEFAULT_IN_FEATURES = ["res3", "res4", "res5"]


def _check_config(cfg: CfgNode) -> None:
    if "RESBACKBONE" not in cfg.MODEL:
        raise KeyError("cfg.MODEL.RESBACKBONE is missing: call "
                       "resbackbones.add_resbackbone_config(cfg) before merging the YAML file.")
    norm = check_norm(cfg.MODEL.RESBACKBONE.NORM)
    has_weights = bool(cfg.MODEL.RESBACKBONE.WEIGHTS) or bool(cfg.MODEL.WEIGHTS)
    if norm == "FrozenBN" and not has_weights:
        raise ValueError(
            "MODEL.RESBACKBONE.NORM is 'FrozenBN' but no weights are given (MODEL.RESBACKBONE."
            "WEIGHTS and MODEL.WEIGHTS are both empty): frozen BatchNorm on a randomly "
            "initialised backbone disables normalisation. To train from scratch use NORM 'BN', "
            "'GN' or 'naiveSyncBN'; otherwise set MODEL.RESBACKBONE.WEIGHTS (e.g. 'imagenet').")
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0 and not has_weights:
        logger.warning(
            f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT} freezes randomly initialised "
            "layers (no MODEL.RESBACKBONE.WEIGHTS or MODEL.WEIGHTS); set FREEZE_AT 0 to train "
            "from scratch.")


def check_input_normalization(cfg: CfgNode, tolerance: float = 1e-2) -> List[str]:
    """Warn when the config's input normalisation disagrees with the pretrained weights.

    Wrong mean/std or BGR/RGB does not crash: it silently costs accuracy. Called by the builders
    whenever ``MODEL.RESBACKBONE.WEIGHTS`` loads pretrained weights.

    Returns:
        The warning messages (also logged); empty when the config matches.
    """
    input_format, mean, std = weights_input_normalization(cfg.MODEL.RESBACKBONE.ARCH,
                                                          cfg.MODEL.RESBACKBONE.WEIGHTS)
    problems = []
    if cfg.INPUT.FORMAT != input_format:
        problems.append(f"INPUT.FORMAT is {cfg.INPUT.FORMAT!r}, the weights expect "
                        f"{input_format!r}")
    for key, want in (("PIXEL_MEAN", mean), ("PIXEL_STD", std)):
        have = list(cfg.MODEL[key])
        if len(have) != len(want) or any(abs(h - w) > tolerance for h, w in zip(have, want)):
            problems.append(f"MODEL.{key} is {have}, the weights expect {want}")
    messages = []
    if problems:
        message = (
            f"Input normalisation does not match the weights of '{cfg.MODEL.RESBACKBONE.ARCH}' "
            f"(WEIGHTS={cfg.MODEL.RESBACKBONE.WEIGHTS!r}): " + "; ".join(problems) + ". Call "
            "resbackbones.config.apply_catalog_input_normalization(cfg) or set these keys."
        )
        logger.warning(message)
        messages.append(message)
    return messages


@BACKBONE_REGISTRY.register()
def build_resbackbone_backbone(cfg: CfgNode, input_shape: Optional[ShapeSpec] = None,
                               *, return_channels_last: bool = False) -> Backbone:
    """Build the bottom-up backbone (res2..res5) from ``MODEL.RESBACKBONE``.

    Order: timm model -> norm conversion -> pretrained weights (with report) -> freezing.

    Args:
        cfg: config with ``MODEL.RESBACKBONE`` (see ``add_resbackbone_config``).
        input_shape: Detectron2's input ShapeSpec; only 3-channel input is supported.
        return_channels_last: for the FPN builders (see :class:`TimmBackbone`).

    Returns:
        a :class:`TimmBackbone`.
    """
    _check_config(cfg)
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"resbackbones backbones take 3-channel images; MODEL.PIXEL_MEAN has "
                         f"{input_shape.channels} values.")
    settings = cfg.MODEL.RESBACKBONE
    entry = get_entry(settings.ARCH)
    if not entry.in_catalog:
        logger.warning(f"Architecture '{settings.ARCH}' is outside the tested catalog.")
    backbone = TimmBackbone(
        entry, out_features=settings.OUT_FEATURES, norm=settings.NORM,
        channels_last=settings.CHANNELS_LAST,
        fold_bn_for_inference=settings.FOLD_BN_FOR_INFERENCE,
        compile_for_inference=settings.COMPILE,
        return_channels_last=return_channels_last,
        drop_path_rate=settings.DROP_PATH_RATE,
    )
    if settings.STRIDE_IN_1X1:
        set_stride_in_1x1(backbone)
    if settings.WEIGHTS:
        report = load_backbone_weights(backbone, settings.WEIGHTS,
                                       allow_partial=settings.ALLOW_PARTIAL_WEIGHTS)
        if report.timm_input_normalization:  # Detectron2/Caffe2 files: the config decides
            check_input_normalization(cfg)
    return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


def _fpn_in_features(cfg: CfgNode, bottom_up: Backbone, default: List[str]) -> List[str]:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or default
    available = list(bottom_up.output_shape())
    missing = [name for name in in_features if name not in available]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features} needs {missing}, which "
                         f"MODEL.RESBACKBONE.OUT_FEATURES {available} does not produce; add them "
                         "to OUT_FEATURES.")
    return in_features


@BACKBONE_REGISTRY.register()
def build_resbackbone_fpn_backbone(cfg: CfgNode, input_shape: Optional[ShapeSpec] = None) -> FPN:
    """Bottom-up backbone + FPN with outputs p2..p6 (Faster/Mask R-CNN).

    ``MODEL.FPN.IN_FEATURES`` defaults to res2..res5 when empty.

    Returns:
        Detectron2's :class:`FPN` (``size_divisibility`` 32).
    """
    bottom_up = build_resbackbone_backbone(cfg, input_shape, return_channels_last=True)
    return ResBackboneFPN(
        bottom_up=bottom_up,
        in_features=_fpn_in_features(cfg, bottom_up, _FPN_DEFAULT_IN_FEATURES),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        inference_amp=cfg.MODEL.RESBACKBONE.INFERENCE_AMP,
        winograd=cfg.MODEL.RESBACKBONE.WINOGRAD,
    )


@BACKBONE_REGISTRY.register()
def build_resbackbone_retinanet_fpn_backbone(
    cfg: CfgNode, input_shape: Optional[ShapeSpec] = None
) -> FPN:
    """Bottom-up backbone + FPN with outputs p3..p7 (RetinaNet); P6 is computed from res5.

    ``MODEL.FPN.IN_FEATURES`` defaults to res3..res5 when empty.

    Returns:
        Detectron2's :class:`FPN`.
    """
    bottom_up = build_resbackbone_backbone(cfg, input_shape, return_channels_last=True)
    if "res5" not in bottom_up.output_shape():
        raise ValueError("The RetinaNet FPN computes P6/P7 from res5: add 'res5' to "
                         "MODEL.RESBACKBONE.OUT_FEATURES.")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return ResBackboneFPN(
        bottom_up=bottom_up,
        in_features=_fpn_in_features(cfg, bottom_up, _RETINANET_DEFAULT_IN_FEATURES),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels, "res5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        inference_amp=cfg.MODEL.RESBACKBONE.INFERENCE_AMP,
        winograd=cfg.MODEL.RESBACKBONE.WINOGRAD,
    )
