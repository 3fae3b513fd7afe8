"""Config keys of resbackbones, added to a Detectron2 config by one function.

Like ``add_tridentnet_config`` in Detectron2's projects: nothing is added at import time, the user
calls ``add_resbackbone_config(cfg)`` on the config they build. FPN settings stay in Detectron2's
own ``MODEL.FPN.*`` keys and freezing in ``MODEL.BACKBONE.FREEZE_AT``.
"""
from __future__ import annotations

import difflib
import logging

import os
from typing import List, Sequence

from resbackbones import compat
from resbackbones._requirements import require_detectron2

require_detectron2("resbackbones.config")

from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY  # noqa: E402

from resbackbones.catalog import get_entry, is_timm_name, weights_input_normalization  # noqa: E402
from resbackbones.data.lsj import check_lsj  # noqa: E402
from resbackbones.data.validation import check_validation_mode  # noqa: E402
from resbackbones.errors import ConfigError  # noqa: E402
from resbackbones.model_zoo_files import resolve_config_file  # noqa: E402
from resbackbones.modeling.build import check_input_normalization  # noqa: E402
from resbackbones.modeling.ema import check_ema_decay, check_ema_device  # noqa: E402
from resbackbones.modeling.fpn import check_inference_amp  # noqa: E402
from resbackbones.modeling.norms import check_norm  # noqa: E402
from resbackbones.modeling.timm_backbone import (  # noqa: E402
    check_channels_last,
    check_drop_path_rate,
    check_freeze_at,
    check_out_features,
)

__all__ = [
    "add_resbackbone_config",
    "apply_catalog_input_normalization",
    "build_config",
    "check_input_normalization",
    "ConfigError",
    "merge_config_checked",
    "validate_config",
]

logger = logging.getLogger(__name__)

# Keys of earlier releases -> their name now (the error for an old config says so).
RENAMED_KEYS = {
    "DATASETS.VALIDATE": "DATA_VALIDATION.MODE",
    "DATASETS.SKIP_BAD_RECORDS": "DATA_VALIDATION.SKIP_BAD_RECORDS",
}


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
    # Normalisation layers of the bottom-up network (valid values: modeling.norms.NORM_CHOICES):
    # "FrozenBN" (needs pretrained weights), "BN", "SyncBN", "naiveSyncBN" or "GN" (32 groups).
    # Training from scratch: BN/GN/naiveSyncBN.
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
    # Mixed precision at inference for backbone + FPN (and, with ResBackboneRCNN, the RPN and ROI
    # heads): "off", "bf16", "fp16" or "auto" (bf16 where the device computes it natively: GPUs,
    # CPUs with AVX512-BF16 or AMX; else fp16 on CUDA, off on CPU). Off by default: it changes
    # outputs beyond float32 tolerance (COCO AP within 0.5, tests/test_train.py). Training AMP
    # is Detectron2's SOLVER.AMP.ENABLED.
    cfg.MODEL.RESBACKBONE.INFERENCE_AMP = "off"
    # torch.compile the bottom-up network for inference (first call compiles, each new input
    # size recompiles); falls back to eager with a warning where compilation fails. For long
    # runs, the demos' --compile (modeling/serving.py) compiles backbone + FPN once per padded
    # input-size bucket instead.
    cfg.MODEL.RESBACKBONE.COMPILE = False
    # Only with MODEL.META_ARCHITECTURE "ResBackboneRCNN": at inference on CPU, split ROIAlign
    # over all threads (torchvision's kernel uses one); outputs are bit-identical. The same
    # meta-architecture runs the RPN and mask head channels-last when CHANNELS_LAST applies.
    cfg.MODEL.RESBACKBONE.PARALLEL_ROI_ALIGN = True
    # At inference on CPU, compute the FPN's 3x3 output convs (and, with ResBackboneRCNN or
    # ResBackboneRetinaNet, the 3x3 convs of the heads) with NNPACK's Winograd kernels where this
    # CPU runs them faster: measured once per shape bucket, CPU model and torch version, cached in
    # ~/.cache/resbackbones (modeling/kernel_choice.py; $RESBACKBONES_CPU_TUNING=off: always).
    # 2-2.7x faster on an AMD EPYC, little or nothing on an Intel Xeon with AVX-512. Still
    # float32, relative differences ~1e-5 (tests/test_speedups.py).
    cfg.MODEL.RESBACKBONE.WINOGRAD = True
    # Stochastic depth (timm's drop_path_rate) in training: the residual branch of block i of N
    # is dropped per image with probability DROP_PATH_RATE * i / (N - 1) (the last block's is
    # DROP_PATH_RATE). Valid: [0, 1); 0 (default) builds the model without it. Eval mode, the
    # BN-folded copy and exported models never drop.
    cfg.MODEL.RESBACKBONE.DROP_PATH_RATE = 0.0
    # Checks of the COCO-format data sets before step 0 (this project's trainer, on rank 0).
    # Their own namespace: Detectron2's DATASETS keys stay Detectron2's.
    cfg.DATA_VALIDATION = CN()
    # Check DATASETS.TRAIN and TEST: "off", "header" (files exist, image headers match the JSON
    # sizes: fast) or "full" (also decode every image). Valid: data.validation.VALIDATION_MODES.
    cfg.DATA_VALIDATION.MODE = "header"
    # With problems found: False stops before training with a report; True drops the bad
    # images/annotations (a cleaned copy of the JSON goes to OUTPUT_DIR/cleaned_datasets).
    cfg.DATA_VALIDATION.SKIP_BAD_RECORDS = False
    # An exponential moving average (EMA) of the weights (parameters and buffers), updated after
    # every step, saved in every checkpoint (entry "ema") and restored by --resume; the trainer
    # evaluates the averaged weights. d2go's key names and defaults (resbackbones.engine.ema).
    cfg.MODEL_EMA = CN()
    cfg.MODEL_EMA.ENABLED = False
    # Weight of the old average at each step, in (0, 1): ema = DECAY * ema + (1 - DECAY) * w.
    cfg.MODEL_EMA.DECAY = 0.999
    # Where the average lives: "" (with the model) or a torch device, e.g. "cpu".
    cfg.MODEL_EMA.DEVICE = ""
    # With --eval-only: evaluate the checkpoint's averaged weights instead of its model weights.
    cfg.MODEL_EMA.USE_EMA_WEIGHTS_FOR_EVAL_ONLY = False
    # In training: evaluate the trained weights too, besides the average (results under "raw/").
    cfg.MODEL_EMA.EVAL_BOTH = False
    # Large-scale jitter for training (Detectron2's new baselines: ResizeScale + FixedSizeCrop
    # with padding + horizontal flip; resbackbones.data.lsj). Replaces INPUT.MIN_SIZE_TRAIN,
    # MAX_SIZE_TRAIN, RANDOM_FLIP and INPUT.CROP in training; testing keeps MIN/MAX_SIZE_TEST.
    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.ENABLED = False
    # Factors (low, high) of the random scale relative to fitting SIZE x SIZE; 0 < low <= high.
    cfg.INPUT.LSJ.SCALE_RANGE = (0.1, 2.0)
    # Side of the square training images (crops, or padded); at least INPUT.MIN_SIZE_TEST.
    cfg.INPUT.LSJ.SIZE = 1024
    return cfg


def apply_catalog_input_normalization(cfg: CN) -> CN:
    """Set INPUT.FORMAT, MODEL.PIXEL_MEAN and MODEL.PIXEL_STD from the catalog (in place).

    Args:
        cfg: a config with ``MODEL.RESBACKBONE`` (see :func:`add_resbackbone_config`).

    Returns:
        The same ``cfg``.
    """
    get_entry(cfg.MODEL.RESBACKBONE.ARCH)  # validates the name with a helpful error
    input_format, mean, std = weights_input_normalization(cfg.MODEL.RESBACKBONE.ARCH,
                                                          cfg.MODEL.RESBACKBONE.WEIGHTS)
    cfg.INPUT.FORMAT = input_format
    cfg.MODEL.PIXEL_MEAN = list(mean)
    cfg.MODEL.PIXEL_STD = list(std)
    return cfg


def _all_keys(node: CN, prefix: str = "") -> List[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CN) else [full])
    return keys


def merge_config_checked(cfg: CN, config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """Merge a YAML file and ``KEY VALUE`` overrides, with errors that say what would be valid.

    Detectron2 rejects an unknown key with "Non-existent config key" and a wrong type with a
    yacs type mismatch; this adds the file at fault and the closest valid key names.

    Args:
        cfg: a config that already has the project's namespaces (``add_resbackbone_config``).
        config_file: YAML file to merge ("" for none).
        opts: flat list of overrides, e.g. ``["MODEL.RESBACKBONE.ARCH", "resnet18"]``.

    Returns:
        ``cfg``, merged.
    """
    if config_file and not os.path.isfile(config_file):
        raise ConfigError(f"Config file not found: {config_file}")
    # A config.yaml written by a run on upstream main holds main-only keys; on v0.6 they are
    # accepted at main's defaults and dropped again (compat.MAIN_ONLY_CONFIG_DEFAULTS).
    main_only = compat.add_main_only_keys(cfg)
    sources = [(config_file, lambda: cfg.merge_from_file(config_file))] if config_file else []
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"Overrides must be KEY VALUE pairs; got an odd list {list(opts)}")
        sources.append(("command-line overrides", lambda: cfg.merge_from_list(list(opts))))
    for source, merge in sources:
        try:
            merge()
        except (KeyError, AssertionError) as error:  # yacs asserts for unknown override keys
            message = str(error.args[0]) if error.args else str(error)
            bad_key = message.rsplit(":", 1)[-1].strip()
            close = difflib.get_close_matches(bad_key, _all_keys(cfg), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            if bad_key in RENAMED_KEYS:
                hint = f" It was renamed {RENAMED_KEYS[bad_key]}."
            raise ConfigError(f"{source}: unknown config key {bad_key!r}.{hint}") from error
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from error
    try:
        compat.remove_main_only_keys(cfg, main_only, config_file or "command-line overrides")
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return cfg


def validate_config(cfg: CN) -> CN:
    """Check every ``MODEL.RESBACKBONE`` value and the backbone name before any work starts.

    Building a model would catch most of these too, but only after datasets were loaded or
    processes spawned; here each error names the key, the value and the valid choices.

    Returns:
        ``cfg``, unchanged.
    """
    backbone_names = sorted(BACKBONE_REGISTRY._obj_map)
    if cfg.MODEL.BACKBONE.NAME not in backbone_names:
        raise ConfigError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r} is not registered; "
                          f"valid: {', '.join(backbone_names)}.")
    check_freeze_at(cfg.MODEL.BACKBONE.FREEZE_AT)
    if "RESBACKBONE" not in cfg.MODEL:
        return cfg
    settings = cfg.MODEL.RESBACKBONE
    try:
        get_entry(settings.ARCH)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"MODEL.RESBACKBONE.ARCH: {error}") from error
    # Each key's owner defines its valid values and its one error message.
    check_norm(settings.NORM)
    check_channels_last(settings.CHANNELS_LAST)
    check_inference_amp(settings.INFERENCE_AMP)
    check_out_features(settings.OUT_FEATURES)
    check_drop_path_rate(settings.DROP_PATH_RATE)
    if "DATA_VALIDATION" in cfg:
        check_validation_mode(cfg.DATA_VALIDATION.MODE)
    if "MODEL_EMA" in cfg:
        check_ema_decay(cfg.MODEL_EMA.DECAY)
        check_ema_device(cfg.MODEL_EMA.DEVICE)
    check_lsj(cfg)
    weights = settings.WEIGHTS
    looks_local = weights and weights != "imagenet" and "://" not in weights and not (
        is_timm_name(weights))
    if looks_local and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.RESBACKBONE.WEIGHTS file not found: {weights!r}. Valid: '' "
                          "(random init), 'imagenet', 'timm:<model>.<tag>' or an existing file.")
    return cfg


def build_config(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """The one way to build a resbackbones config: Detectron2's defaults, this project's keys,
    ``config_file`` and ``KEY VALUE`` overrides merged with checked errors, then validated.

    Train, demo, benchmark, export and listing all start here; device choice is left to the
    caller (``MODEL.DEVICE`` is returned as written).

    Args:
        config_file: a Detectron2 YAML config: a path, or a packaged name such as
            ``"COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3x.yaml"`` (an existing path
            wins; see :func:`resbackbones.model_zoo_files.resolve_config_file`); "" for
            Detectron2's defaults.
        opts: flat list of overrides, e.g. ``["MODEL.RESBACKBONE.ARCH", "resnet18"]``.

    Returns:
        The (unfrozen) config.

    Raises:
        ConfigError: the file is missing (``ConfigNotFoundError``, with the closest packaged
            names), a key is unknown or a value is invalid.
    """
    cfg = get_cfg()
    add_resbackbone_config(cfg)
    merge_config_checked(cfg, resolve_config_file(config_file) if config_file else "", opts)
    validate_config(cfg)
    return cfg
