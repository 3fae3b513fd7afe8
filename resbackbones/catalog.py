"""The catalog: every architecture resbackbones supports, as data.

This module is the single source of truth for architecture names, their family, the channels and
strides of res2..res5 and the ImageNet weights (a pinned timm tag) each one loads by default.
Configs, docs, the CLI listing and the tests read it instead of repeating it. The blocks
themselves come from timm (``timm.create_model``); nothing here re-implements them.

Names outside the table may be used with a ``timm:`` prefix (``timm:convnext_tiny``): such
models are built from timm's ``feature_info`` at run time and are *not* covered by the tests.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import timm
import torch
from timm.models import get_pretrained_cfg

__all__ = [
    "CatalogEntry",
    "CATALOG",
    "TIMM_PREFIX",
    "STAGE_NAMES",
    "catalog_names",
    "get_entry",
    "input_normalization",
    "is_timm_name",
]

# Prefix that marks an architecture as "any timm model", outside the tested catalog.
TIMM_PREFIX = "timm:"
# Detectron2's names for the outputs at strides 4, 8, 16 and 32.
STAGE_NAMES: Tuple[str, ...] = ("res2", "res3", "res4", "res5")

_BASIC = (64, 128, 256, 512)
_BOTTLENECK = (256, 512, 1024, 2048)
_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class CatalogEntry:
    """One supported architecture.

    Attributes:
        name: the name users write in ``MODEL.RESBACKBONE.ARCH``.
        family: human-readable family (ResNet, ResNeXt, ...), used by the listing and tests.
        timm_name: the model name passed to ``timm.create_model``.
        weight_tag: the pinned timm pretrained tag loaded by ``WEIGHTS: "imagenet"``; pinned
            because timm's default tag for a name moves between releases.
        channels: output channels of res2..res5 (checked against timm's ``feature_info``).
        strides: output strides of res2..res5 (always 4, 8, 16, 32).
        tested: False only for ``timm:`` entries created on the fly.
    """

    name: str
    family: str
    timm_name: str
    weight_tag: Optional[str]
    channels: Tuple[int, int, int, int]
    strides: Tuple[int, int, int, int] = _STRIDES
    tested: bool = True

    @property
    def timm_weights(self) -> Optional[str]:
        """``"<timm_name>.<weight_tag>"``: the full timm name of the default weights."""
        return f"{self.timm_name}.{self.weight_tag}" if self.weight_tag else None

    def channel_dict(self) -> Dict[str, int]:
        """Return ``{"res2": C2, ..., "res5": C5}``."""
        return dict(zip(STAGE_NAMES, self.channels))

    def stride_dict(self) -> Dict[str, int]:
        """Return ``{"res2": 4, ..., "res5": 32}``."""
        return dict(zip(STAGE_NAMES, self.strides))


def _entry(name: str, family: str, tag: str, channels=_BOTTLENECK) -> CatalogEntry:
    return CatalogEntry(name=name, family=family, timm_name=name, weight_tag=tag,
                        channels=channels)


# Tags are timm 1.0's defaults for each name, pinned, except resnext101_32x4d: its default
# (fb_ssl_yfcc100m_ft_in1k) is licensed CC-BY-NC, so the ImageNet-1k gluon weights are used.
_ENTRIES: List[CatalogEntry] = [
    _entry("resnet18", "ResNet", "a1_in1k", _BASIC),
    _entry("resnet34", "ResNet", "a1_in1k", _BASIC),
    _entry("resnet50", "ResNet", "a1_in1k"),
    _entry("resnet101", "ResNet", "a1h_in1k"),
    _entry("resnet152", "ResNet", "a1h_in1k"),
    _entry("resnet50d", "ResNet-D", "ra2_in1k"),
    _entry("resnet101d", "ResNet-D", "ra2_in1k"),
    _entry("resnet152d", "ResNet-D", "ra2_in1k"),
    _entry("resnext50_32x4d", "ResNeXt", "a1h_in1k"),
    _entry("resnext101_32x4d", "ResNeXt", "gluon_in1k"),
    _entry("resnext101_32x8d", "ResNeXt", "tv_in1k"),
    _entry("resnext101_64x4d", "ResNeXt", "c1_in1k"),
    _entry("wide_resnet50_2", "Wide ResNet", "racm_in1k"),
    _entry("wide_resnet101_2", "Wide ResNet", "tv_in1k"),
    _entry("seresnet50", "SE-ResNet", "a1_in1k"),
    _entry("seresnext50_32x4d", "SE-ResNeXt", "racm_in1k"),
    _entry("seresnext101_32x4d", "SE-ResNeXt", "gluon_in1k"),
    _entry("resnetv2_50", "ResNetV2 (pre-activation)", "a1h_in1k"),
    _entry("resnetv2_101", "ResNetV2 (pre-activation)", "a1h_in1k"),
    _entry("resnetrs50", "ResNet-RS", "tf_in1k"),
    _entry("resnetrs101", "ResNet-RS", "tf_in1k"),
    _entry("resnetrs152", "ResNet-RS", "tf_in1k"),
]

# name -> entry, in table order.
CATALOG: Dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}


def catalog_names() -> List[str]:
    """Return the names of the tested catalog, in table order."""
    return list(CATALOG)


def is_timm_name(name: str) -> bool:
    """True when ``name`` uses the ``timm:`` prefix (outside the tested catalog)."""
    return name.startswith(TIMM_PREFIX)


def _timm_entry(name: str) -> CatalogEntry:
    """Describe an arbitrary timm model from its ``feature_info`` (no weights downloaded)."""
    timm_name = name[len(TIMM_PREFIX):]
    architecture, _, tag = timm_name.partition(".")
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise KeyError(f"Unknown timm model '{architecture}' in architecture '{name}'.{hint} "
                       "See timm.list_models() for the names timm knows.")
    # Imported here: the modeling package imports this module.
    from resbackbones.modeling.timm_backbone import select_stride_indices

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = timm.create_model(architecture, pretrained=False)
    indices = select_stride_indices(model.feature_info, name)
    info = model.feature_info
    channels = tuple(int(info[i]["num_chs"]) for i in indices)
    strides = tuple(int(info[i]["reduction"]) for i in indices)
    if not tag:
        cfg = get_pretrained_cfg(architecture)
        tag = cfg.tag if cfg is not None else None
    return CatalogEntry(name=name, family="timm (untested)", timm_name=architecture,
                        weight_tag=tag or None, channels=channels, strides=strides, tested=False)


def get_entry(name: str) -> CatalogEntry:
    """Return the catalog entry for ``name``.

    Args:
        name: a catalog name (``"resnet50"``) or ``"timm:<timm model>[.<tag>]"``.

    Returns:
        The entry; for ``timm:`` names one built on the fly from timm's ``feature_info``.

    Raises:
        KeyError: unknown name; the message lists the closest valid names.
    """
    if name in CATALOG:
        return CATALOG[name]
    if is_timm_name(name):
        return _timm_entry(name)
    close = difflib.get_close_matches(name, catalog_names(), n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(
        f"Unknown architecture '{name}' (MODEL.RESBACKBONE.ARCH).{hint} Valid names: "
        f"{', '.join(catalog_names())}; or '{TIMM_PREFIX}<any timm model>' (outside the tested "
        "catalog). `python -m resbackbones list` prints the catalog."
    )


def input_normalization(name_or_weights: str) -> Tuple[str, List[float], List[float]]:
    """Return the (INPUT.FORMAT, MODEL.PIXEL_MEAN, MODEL.PIXEL_STD) that some weights expect.

    Values are in Detectron2's convention: pixels in 0-255 and channels in INPUT.FORMAT order.
    timm weights are trained on RGB images scaled to 0-1, so mean and std are multiplied by 255.
    Read from timm's registered ``pretrained_cfg`` (no network).

    Args:
        name_or_weights: a catalog name (its pinned tag is used), ``"timm:<model>[.<tag>]"``,
            or a full timm weight name ``"<model>.<tag>"``.

    Returns:
        ``("RGB", [mean_r, mean_g, mean_b], [std_r, std_g, std_b])``.
    """
    if name_or_weights in CATALOG or is_timm_name(name_or_weights):
        name = name_or_weights
        if is_timm_name(name) and "." in name:
            weights = name[len(TIMM_PREFIX):]
        else:
            entry = get_entry(name)
            weights = entry.timm_weights or entry.timm_name
    else:
        weights = name_or_weights
    cfg = get_pretrained_cfg(weights, allow_unregistered=True)
    if cfg is None:
        raise KeyError(f"timm has no pretrained config for '{weights}'; cannot tell which input "
                       "normalisation its weights expect.")
    mean = [round(float(m) * 255.0, 3) for m in cfg.mean]
    std = [round(float(s) * 255.0, 3) for s in cfg.std]
    return "RGB", mean, std
