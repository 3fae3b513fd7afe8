"""Config keys of resbackbones, added to a Detectron2 config by one function.

Like ``add_tridentnet_config`` in Detectron2's projects: nothing is added at import time, the user
calls ``add_resbackbone_config(cfg)`` on the config they build. FPN settings stay in Detectron2's
own ``MODEL.FPN.*`` keys and freezing in ``MODEL.BACKBONE.FREEZE_AT``.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

from detectron2.config import CfgNode as CN

from resbackbones.catalog import get_entry, input_normalization, is_timm_name

__all__ = [
    "add_resbackbone_config",
    "apply_catalog_input_normalization",
    "expected_input_normalization",
    "check_input_normalization",
    "VALID_NORMS",
]

logger = logging.getLogger(__name__)

# Values MODEL.RESBACKBONE.NORM accepts (Detectron2's spelling).
VALID_NORMS: Tuple[str, ...] = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN")


def add_resbackbone_config(cfg: CN) -> CN:
    """Add the ``MODEL.RESBACKBONE`` namespace with its defaults to ``cfg`` (in place).

    Args:
        cfg: a Detectron2 config, usually ``detectron2.config.get_cfg()``.

    Returns:
        The same ``cfg``, for chaining.
    """
    cfg.MODEL.RESBACKBONE = CN()
    # Architecture from resbackbones.catalog (e.g. "resnet50", "resnext101_32x8d",
    # "wide_resnet50_2"), or "timm:<any timm model>" outside the tested catalog.
    cfg.MODEL.RESBACKBONE.ARCH = "resnet50"
    # Bottom-up outputs to return, a subset of ["res2", "res3", "res4", "res5"]; stages after the
    # last one listed are not built.
    cfg.MODEL.RESBACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Normalisation layers of the bottom-up network: "FrozenBN" (needs pretrained weights),
    # "BN", "SyncBN", "naiveSyncBN" or "GN" (32 groups). Training from scratch: BN/GN/naiveSyncBN.
    cfg.MODEL.RESBACKBONE.NORM = "FrozenBN"
    # ImageNet weights for the bottom-up network: "" (random init, or MODEL.WEIGHTS provides them),
    # "imagenet" (the catalog entry's pinned timm tag), "timm:<model>.<tag>", or a local
    # .pth/.bin/.safetensors (timm or torchvision names) or resbackbones .pkl/.pth file.
    cfg.MODEL.RESBACKBONE.WEIGHTS = ""
    # If False (default), loading fails when any backbone parameter would stay random or the file
    # has backbone keys the architecture lacks. True only logs the report and goes on.
    cfg.MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS = False
    # True puts the stride of each downsampling bottleneck in its first 1x1 conv instead of the
    # 3x3 one: Detectron2's MODEL.RESNETS.STRIDE_IN_1X1, needed by MSRA weights (R-50.pkl,
    # R-101.pkl and the model-zoo R50/R101 detectors); False for timm, torchvision and FAIR X101.
    # Only for the ResNet, ResNeXt and Wide ResNet catalog families.
    cfg.MODEL.RESBACKBONE.STRIDE_IN_1X1 = False
    # Speed-ups of backbone + FPN (outputs equal within the tolerances of tests/test_speedups.py).
    # Channels-last memory format inside backbone + FPN (features reach the heads as NCHW):
    # "auto" (on for CPU, and on CUDA when autocast is active), "on" or "off".
    cfg.MODEL.RESBACKBONE.CHANNELS_LAST = "auto"
    # At inference (eval mode, no grad) run a copy of the bottom-up network whose BatchNorms are
    # folded into the preceding convolutions; rebuilt whenever the weights change.
    cfg.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE = True
    # Mixed precision for backbone + FPN at inference: "off", "bf16", "fp16" or "auto" (bf16 where
    # the device supports it, else fp16). Off by default: it changes outputs beyond float32
    # tolerance. Training AMP is Detectron2's SOLVER.AMP.ENABLED.
    cfg.MODEL.RESBACKBONE.INFERENCE_AMP = "off"
    # torch.compile the bottom-up network for inference (first call compiles, each new input
    # size recompiles); falls back to eager with a warning where compilation fails.
    cfg.MODEL.RESBACKBONE.COMPILE = False
    return cfg


def expected_input_normalization(cfg: CN) -> Tuple[str, List[float], List[float]]:
    """Return the (INPUT.FORMAT, PIXEL_MEAN, PIXEL_STD) that ``cfg``'s backbone weights expect.

    ``WEIGHTS: "timm:<model>.<tag>"`` uses that tag's statistics; everything else uses the
    catalog entry's pinned tag (local timm/torchvision ImageNet files use the same statistics).
    """
    weights = cfg.MODEL.RESBACKBONE.WEIGHTS
    if is_timm_name(weights):
        return input_normalization(weights[len("timm:"):])
    return input_normalization(cfg.MODEL.RESBACKBONE.ARCH)


def apply_catalog_input_normalization(cfg: CN) -> CN:
    """Set INPUT.FORMAT, MODEL.PIXEL_MEAN and MODEL.PIXEL_STD from the catalog (in place).

    Args:
        cfg: a config with ``MODEL.RESBACKBONE`` (see :func:`add_resbackbone_config`).

    Returns:
        The same ``cfg``.
    """
    get_entry(cfg.MODEL.RESBACKBONE.ARCH)  # validates the name with a helpful error
    input_format, mean, std = expected_input_normalization(cfg)
    cfg.INPUT.FORMAT = input_format
    cfg.MODEL.PIXEL_MEAN = list(mean)
    cfg.MODEL.PIXEL_STD = list(std)
    return cfg


def check_input_normalization(cfg: CN, tolerance: float = 1e-2) -> List[str]:
    """Warn when the config's input normalisation disagrees with the pretrained weights.

    Wrong mean/std or BGR/RGB does not crash: it silently costs accuracy. Called by the builders
    whenever ``MODEL.RESBACKBONE.WEIGHTS`` loads pretrained weights.

    Returns:
        The warning messages (also logged); empty when the config matches.
    """
    input_format, mean, std = expected_input_normalization(cfg)
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
