"""Config keys of the ResUNet++ project, added by one function (like Detectron2's projects).

``MODEL.RESUNETPP`` holds the architecture and loss, ``RESUNETPP`` the data, optimiser and
evaluation settings that Detectron2's own namespaces have no key for. Nothing is added at import
time; :func:`build_resunetpp_config` is the one way the tools build a config.
"""
from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from resbackbones.config import (
    ConfigError,
    add_resbackbone_config,
    merge_config_checked,
    validate_config,
)

__all__ = ["OPTIMIZERS", "VALIDATION_MODES", "add_resunetpp_config", "build_resunetpp_config"]

# Values of RESUNETPP.SOLVER.OPTIMIZER.
OPTIMIZERS = ("Adam", "NAdam", "AdamW", "SGD")
# Values of RESUNETPP.DATA.VALIDATE.
VALIDATION_MODES = ("off", "full")
# Values of MODEL.BACKBONE.NAME this project's models are built with.
ENCODER_BUILDERS = ("build_resunetpp_paper_encoder", "build_resunetpp_resbackbone_encoder")


def add_resunetpp_config(cfg: CN) -> CN:
    """Add ``MODEL.RESUNETPP`` and ``RESUNETPP`` with their defaults to ``cfg`` (in place).

    Args:
        cfg: a Detectron2 config that already has ``MODEL.RESBACKBONE``
            (``resbackbones.config.add_resbackbone_config``).

    Returns:
        The same ``cfg``.
    """
    cfg.MODEL.RESUNETPP = CN()
    # Widths of the paper encoder's stem and residual units (build_resunetpp_paper_encoder);
    # each unit halves the resolution. The paper: [16, 32, 64, 128].
    cfg.MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS = [16, 32, 64, 128]
    # Squeeze-and-excitation bottleneck ratio (hidden units = channels // ratio, at least 4).
    cfg.MODEL.RESUNETPP.SE_REDUCTION = 8
    # With build_resunetpp_resbackbone_encoder: re-weight every encoder output (stem, res2..)
    # by squeeze-and-excitation, as the paper's encoder does; catalog encoders lack it.
    cfg.MODEL.RESUNETPP.SKIP_SE = True
    # Output channels of the ASPP bridge on the deepest encoder feature (the paper: 256).
    cfg.MODEL.RESUNETPP.BRIDGE_CHANNELS = 256
    # Width of each decoder step, deepest first, one per skip; [] derives twice the skip's
    # width capped at 256 (the paper's 128/64/32 for its 64/32/16 skips).
    cfg.MODEL.RESUNETPP.DECODER_CHANNELS = []
    # Encoders whose finest feature is coarser than the input (the catalog's stem, stride 2):
    # width of a residual unit run after upsampling the decoder to full resolution; 0 (default)
    # upsamples the logits bilinearly instead (cheaper; 32 gave no gain in compare_peers.py).
    cfg.MODEL.RESUNETPP.FULL_RESOLUTION_CHANNELS = 0
    # Output channels of the ASPP head before the 1x1 classifier (the paper: 16).
    cfg.MODEL.RESUNETPP.HEAD_CHANNELS = 16
    # Dilations of the ASPP branches in bridge and head, one 3x3 branch each.
    cfg.MODEL.RESUNETPP.ASPP_DILATIONS = [1, 6, 12, 18]
    # Factor of the soft Dice loss term.
    cfg.MODEL.RESUNETPP.DICE_WEIGHT = 1.0
    # Factor of the per-pixel term: BCE (NUM_CLASSES 2) or cross-entropy (more classes).
    cfg.MODEL.RESUNETPP.PIXEL_LOSS_WEIGHT = 1.0

    cfg.RESUNETPP = CN()
    cfg.RESUNETPP.INPUT = CN()
    # Every image and mask is resized to this (height, width) for training and inference, as in
    # the paper (256x256); predictions are resized back to the original size for evaluation.
    cfg.RESUNETPP.INPUT.SIZE = [256, 256]
    # Training augmentation: random horizontal and vertical flips (probability 0.5 each).
    cfg.RESUNETPP.INPUT.RANDOM_FLIP = True
    cfg.RESUNETPP.SOLVER = CN()
    # Optimiser: "Adam" (the PyTorch port), "NAdam" (the Keras original), "AdamW" or "SGD"
    # (Detectron2's, with SOLVER.MOMENTUM). Learning rate, weight decay and schedule stay in
    # Detectron2's SOLVER keys.
    cfg.RESUNETPP.SOLVER.OPTIMIZER = "Adam"
    cfg.RESUNETPP.DATA = CN()
    # Check the training and test sets before step 0: "full" decodes every image and mask and
    # reports missing pairs, size mismatches, non-binary masks and unreadable files; "off" skips.
    cfg.RESUNETPP.DATA.VALIDATE = "full"
    # With problems found: False stops with the report; True trains on the good pairs only.
    cfg.RESUNETPP.DATA.SKIP_BAD_PAIRS = False
    cfg.RESUNETPP.EVAL = CN()
    # Write per-image Dice, IoU, precision and recall to OUTPUT_DIR/inference/<dataset>.csv.
    cfg.RESUNETPP.EVAL.PER_IMAGE_CSV = True
    return cfg


def build_resunetpp_config(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """Detectron2's defaults + resbackbones' and this project's keys, the file and overrides.

    Args:
        config_file: a YAML config (usually one of ``projects/ResUNetPlusPlus/configs``).
        opts: flat ``KEY VALUE`` overrides.

    Returns:
        The (unfrozen) config.

    Raises:
        ConfigError: a file is missing, a key unknown or a value invalid (the message names it).
    """
    from . import encoders, head  # noqa: F401  (registers the encoders and the head)

    cfg = get_cfg()
    add_resbackbone_config(cfg)
    add_resunetpp_config(cfg)
    merge_config_checked(cfg, config_file, opts)
    validate_config(cfg)
    choices = {"RESUNETPP.SOLVER.OPTIMIZER": (cfg.RESUNETPP.SOLVER.OPTIMIZER, OPTIMIZERS),
               "RESUNETPP.DATA.VALIDATE": (cfg.RESUNETPP.DATA.VALIDATE, VALIDATION_MODES)}
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key} {value!r} is invalid; valid: {', '.join(valid)}.")
    size = list(cfg.RESUNETPP.INPUT.SIZE)
    if len(size) != 2 or min(size) < 8:
        raise ConfigError(f"RESUNETPP.INPUT.SIZE {size} is invalid; give [height, width], "
                          "each at least 8 (the paper: [256, 256]).")
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" and \
            cfg.MODEL.SEM_SEG_HEAD.NAME == "ResUNetPPHead" and \
            cfg.MODEL.BACKBONE.NAME not in ENCODER_BUILDERS:
        raise ConfigError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r} gives no features "
                          f"ResUNetPPHead can decode; valid: {', '.join(ENCODER_BUILDERS)}.")
    return cfg
