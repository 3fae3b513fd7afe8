"""Large-scale jitter (LSJ) for YAML configs: ``INPUT.LSJ.*`` gives the training mapper of
Detectron2's new baselines.

Why: Detectron2 offers LSJ only to LazyConfig users (``new_baselines/*_LSJ.py`` set the mapper's
augmentations by hand); a YAML config has no key for it. With ``INPUT.LSJ.ENABLED`` the
project's trainer builds the same augmentations from Detectron2's own transforms, in the same
order and with the same defaults as those baselines:

1. ``ResizeScale``: scale the image so that it fits ``SIZE x SIZE``, times a factor drawn
   uniformly from ``SCALE_RANGE``;
2. ``FixedSizeCrop``: a random ``SIZE x SIZE`` crop of a larger result, padding (right and
   bottom, value 128 as in Detectron2) of a smaller one, so every training image is exactly
   ``SIZE x SIZE``;
3. ``RandomFlip`` (horizontal).

Boxes are recomputed from the cropped masks when the model predicts masks (the baselines'
``recompute_boxes``). ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN`` and ``INPUT.CROP`` do not apply
then; test-time resizing stays ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``.
"""
from __future__ import annotations

import math
from typing import List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from resbackbones.errors import ConfigError

__all__ = ["build_lsj_augmentations", "build_lsj_train_mapper", "check_lsj"]


def check_lsj(cfg: CfgNode) -> None:
    """The owner of ``INPUT.LSJ.*``: raises ConfigError for a value that cannot work.

    Checked only when ``INPUT.LSJ.ENABLED``: ``SIZE`` a positive integer not below
    ``INPUT.MIN_SIZE_TEST`` (a model trained on smaller crops than it is tested on sees objects
    at scales it never learnt), ``SCALE_RANGE`` two numbers ``0 < low <= high``, and
    ``INPUT.CROP.ENABLED`` off (LSJ crops itself; the two would be silently combined otherwise).
    """
    if "LSJ" not in cfg.INPUT or not cfg.INPUT.LSJ.ENABLED:
        return
    lsj = cfg.INPUT.LSJ
    size = lsj.SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"INPUT.LSJ.SIZE {size!r} is invalid; valid: a positive integer (the "
                          "side of the square training images, e.g. 1024).")
    scale_range = tuple(lsj.SCALE_RANGE)
    if (len(scale_range) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                         for v in scale_range)
            or not 0 < scale_range[0] <= scale_range[1]):
        raise ConfigError(f"INPUT.LSJ.SCALE_RANGE {scale_range!r} is invalid; valid: two numbers "
                          "(low, high) with 0 < low <= high, e.g. (0.1, 2.0).")
    if size < cfg.INPUT.MIN_SIZE_TEST:
        raise ConfigError(f"INPUT.LSJ.SIZE {size} is smaller than INPUT.MIN_SIZE_TEST "
                          f"{cfg.INPUT.MIN_SIZE_TEST}; valid: INPUT.LSJ.SIZE >= "
                          "INPUT.MIN_SIZE_TEST (train on crops at least as large as the test "
                          "images): raise INPUT.LSJ.SIZE or lower INPUT.MIN_SIZE_TEST.")
    if cfg.INPUT.CROP.ENABLED:
        raise ConfigError("INPUT.LSJ.ENABLED and INPUT.CROP.ENABLED are both True; valid: one of "
                          "them (LSJ crops SIZE x SIZE itself): set INPUT.CROP.ENABLED False.")


def build_lsj_augmentations(size: int, scale_range: Sequence[float]) -> List[T.Augmentation]:
    """Detectron2's LSJ augmentations (new baselines' order and defaults) for ``size``.

    Args:
        size: side of the square training images (``INPUT.LSJ.SIZE``).
        scale_range: (low, high) factors of the jitter (``INPUT.LSJ.SCALE_RANGE``).

    Returns:
        ``[ResizeScale, FixedSizeCrop(pad=True), RandomFlip]``.
    """
    low, high = (float(v) for v in scale_range)
    return [
        T.ResizeScale(min_scale=low, max_scale=high, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size), pad=True),
        T.RandomFlip(horizontal=True),
    ]


def build_lsj_train_mapper(cfg: CfgNode) -> DatasetMapper:
    """Detectron2's training ``DatasetMapper`` of ``cfg`` with the LSJ augmentations instead of
    its resize/crop/flip (everything else, masks, keypoints, image format, comes from ``cfg``).

    Raises:
        ConfigError: see :func:`check_lsj`; also when ``INPUT.LSJ.ENABLED`` is False.
    """
    if not cfg.INPUT.LSJ.ENABLED:
        raise ConfigError("build_lsj_train_mapper needs INPUT.LSJ.ENABLED True.")
    check_lsj(cfg)
    arguments = DatasetMapper.from_config(cfg, is_train=True)
    arguments["augmentations"] = build_lsj_augmentations(cfg.INPUT.LSJ.SIZE,
                                                         cfg.INPUT.LSJ.SCALE_RANGE)
    # Crops cut masks: boxes are taken from what is left of them (needs instance masks).
    arguments["recompute_boxes"] = bool(arguments.get("use_instance_mask"))
    return DatasetMapper(**arguments)
