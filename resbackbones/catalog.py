"""The catalog: every architecture resbackbones supports, as data.

This module is the single source of truth for an architecture: its name, family, the timm model
it is built from, the pinned tag of its ImageNet weights and, where Detectron2 has the same
network built in, that twin. Channels and strides of res2..res5 are read from timm's
``feature_info`` (never typed by hand). Configs, the README model table, the CLI listing, the
benchmark and the tests read it instead of repeating it. The blocks themselves come from timm
(``timm.create_model``); nothing here re-implements them.

Adding an architecture is one line in ``_ENTRIES`` plus one generator command::

    python tools/generate_configs.py   # writes configs/COCO-*/ and the README model table

(``tests/test_configs.py`` fails until the generated files are current.)

Names outside the table may be used with a ``timm:`` prefix (``timm:convnext_tiny``): such
models are built from timm's ``feature_info`` at run time and are *not* covered by the tests.
"""
from __future__ import annotations

import difflib
import enum
import functools
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
from timm.models import get_pretrained_cfg

__all__ = [
    "CatalogEntry",
    "CATALOG",
    "Detectron2ResNet",
    "Family",
    "TIMM_PREFIX",
    "STAGE_NAMES",
    "STAGE_STRIDES",
    "catalog_names",
    "get_entry",
    "input_normalization",
    "is_timm_name",
    "one_per_family",
    "select_stride_indices",
    "weights_input_normalization",
]

# Prefix that marks an architecture as "any timm model", outside the tested catalog.
TIMM_PREFIX = "timm:"
# Detectron2's names for the outputs at strides 4, 8, 16 and 32.
STAGE_NAMES: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
# Stride of each Detectron2 stage name.
STAGE_STRIDES: Dict[str, int] = dict(zip(STAGE_NAMES, (4, 8, 16, 32)))


class Family(enum.Enum):
    """Architecture families; the value is the name the listing and the README print."""

    RESNET = "ResNet"
    RESNET_D = "ResNet-D"
    RESNEXT = "ResNeXt"
    WIDE_RESNET = "Wide ResNet"
    SE_RESNET = "SE-ResNet"
    SE_RESNEXT = "SE-ResNeXt"
    RESNET_V2 = "ResNetV2 (pre-activation)"
    RESNET_RS = "ResNet-RS"
    TIMM = "timm (untested)"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Detectron2ResNet(NamedTuple):
    """Detectron2's built-in ResNet with the same layers (``MODEL.RESNETS.*``), for the benchmark
    and the checkpoint converters."""

    depth: int
    num_groups: int
    width_per_group: int
    res2_out_channels: int


def select_stride_indices(feature_info, name: str = "") -> List[int]:
    """Pick the timm ``feature_info`` indices that give strides 4, 8, 16 and 32.

    For each stride the last feature with that reduction is taken (the end of the stage).

    Args:
        feature_info: a timm model's ``feature_info`` (list of dicts or ``FeatureInfo``).
        name: architecture name, for the error message.

    Returns:
        Four indices, for res2..res5.
    """
    info = list(feature_info.info if hasattr(feature_info, "info") else feature_info)
    indices = []
    for stride in STAGE_STRIDES.values():
        matches = [i for i, item in enumerate(info) if int(item["reduction"]) == stride]
        if not matches:
            available = [int(item["reduction"]) for item in info]
            raise ValueError(f"Architecture '{name}' has no feature at stride {stride} (its "
                             f"features have strides {available}); resbackbones needs 4, 8, 16 "
                             "and 32.")
        indices.append(matches[-1])
    return indices


@functools.lru_cache(maxsize=None)
def _stage_shapes(timm_name: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(channels, strides) of res2..res5, from timm's ``feature_info`` of a shape-only model."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = timm.create_model(timm_name, pretrained=False)
    indices = select_stride_indices(model.feature_info, timm_name)
    info = model.feature_info
    return (tuple(int(info[i]["num_chs"]) for i in indices),
            tuple(int(info[i]["reduction"]) for i in indices))


@dataclass(frozen=True)
class CatalogEntry:
    """One supported architecture.

    Attributes:
        name: the name users write in ``MODEL.RESBACKBONE.ARCH``.
        family: its :class:`Family`.
        timm_name: the model name passed to ``timm.create_model``.
        weight_tag: the pinned timm pretrained tag loaded by ``WEIGHTS: "imagenet"``; pinned
            because timm's default tag for a name moves between releases.
        detectron2_twin: Detectron2's built-in ResNet with the same layers, if there is one.
        in_catalog: True for the table below (tested); False for ``timm:`` names built on the fly.
    """

    name: str
    family: Family
    timm_name: str
    weight_tag: Optional[str]
    detectron2_twin: Optional[Detectron2ResNet] = None
    in_catalog: bool = True

    @property
    def timm_weights(self) -> Optional[str]:
        """``"<timm_name>.<weight_tag>"``: the full timm name of the default weights."""
        return f"{self.timm_name}.{self.weight_tag}" if self.weight_tag else None

    @property
    def channels(self) -> Tuple[int, ...]:
        """Output channels of res2..res5, from timm's ``feature_info``."""
        return _stage_shapes(self.timm_name)[0]

    @property
    def strides(self) -> Tuple[int, ...]:
        """Output strides of res2..res5 (4, 8, 16, 32), from timm's ``feature_info``."""
        return _stage_shapes(self.timm_name)[1]

    def channel_dict(self) -> Dict[str, int]:
        """Return ``{"res2": C2, ..., "res5": C5}``."""
        return dict(zip(STAGE_NAMES, self.channels))

    def stride_dict(self) -> Dict[str, int]:
        """Return ``{"res2": 4, ..., "res5": 32}``."""
        return dict(zip(STAGE_NAMES, self.strides))


def _entry(name: str, family: Family, tag: str,
           detectron2_twin: Optional[Tuple[int, int, int, int]] = None) -> CatalogEntry:
    twin = Detectron2ResNet(*detectron2_twin) if detectron2_twin else None
    return CatalogEntry(name=name, family=family, timm_name=name, weight_tag=tag,
                        detectron2_twin=twin)


# One line per architecture. Tags are timm 1.0's defaults for each name, pinned, except
# resnext101_32x4d: its default (fb_ssl_yfcc100m_ft_in1k) is licensed CC-BY-NC, so the
# ImageNet-1k gluon weights are used. The last column is Detectron2's built-in twin
# (MODEL.RESNETS.DEPTH, NUM_GROUPS, WIDTH_PER_GROUP, RES2_OUT_CHANNELS), where one exists.
_ENTRIES: List[CatalogEntry] = [
    _entry("resnet18", Family.RESNET, "a1_in1k", (18, 1, 64, 64)),
    _entry("resnet34", Family.RESNET, "a1_in1k", (34, 1, 64, 64)),
    _entry("resnet50", Family.RESNET, "a1_in1k", (50, 1, 64, 256)),
    _entry("resnet101", Family.RESNET, "a1h_in1k", (101, 1, 64, 256)),
    _entry("resnet152", Family.RESNET, "a1h_in1k", (152, 1, 64, 256)),
    _entry("resnet50d", Family.RESNET_D, "ra2_in1k"),
    _entry("resnet101d", Family.RESNET_D, "ra2_in1k"),
    _entry("resnet152d", Family.RESNET_D, "ra2_in1k"),
    _entry("resnext50_32x4d", Family.RESNEXT, "a1h_in1k", (50, 32, 4, 256)),
    _entry("resnext101_32x4d", Family.RESNEXT, "gluon_in1k", (101, 32, 4, 256)),
    _entry("resnext101_32x8d", Family.RESNEXT, "tv_in1k", (101, 32, 8, 256)),
    _entry("resnext101_64x4d", Family.RESNEXT, "c1_in1k", (101, 64, 4, 256)),
    _entry("wide_resnet50_2", Family.WIDE_RESNET, "racm_in1k"),
    _entry("wide_resnet101_2", Family.WIDE_RESNET, "tv_in1k"),
    _entry("seresnet50", Family.SE_RESNET, "a1_in1k"),
    _entry("seresnext50_32x4d", Family.SE_RESNEXT, "racm_in1k"),
    _entry("seresnext101_32x4d", Family.SE_RESNEXT, "gluon_in1k"),
    _entry("resnetv2_50", Family.RESNET_V2, "a1h_in1k"),
    _entry("resnetv2_101", Family.RESNET_V2, "a1h_in1k"),
    _entry("resnetrs50", Family.RESNET_RS, "tf_in1k"),
    _entry("resnetrs101", Family.RESNET_RS, "tf_in1k"),
    _entry("resnetrs152", Family.RESNET_RS, "tf_in1k"),
]

# name -> entry, in table order.
CATALOG: Dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}


def catalog_names() -> List[str]:
    """Return the names of the tested catalog, in table order."""
    return list(CATALOG)


def one_per_family(families: Optional[Sequence[Family]] = None) -> List[str]:
    """The first (smallest) catalog entry of each family, in table order: what tests and
    benchmarks parametrise over when every family, not every entry, must be covered.

    Args:
        families: restrict to these families (default: all catalog families).
    """
    chosen: Dict[Family, str] = {}
    for entry in _ENTRIES:
        if families is None or entry.family in families:
            chosen.setdefault(entry.family, entry.name)
    return list(chosen.values())


def is_timm_name(name: str) -> bool:
    """True when ``name`` uses the ``timm:`` prefix (outside the tested catalog)."""
    return name.startswith(TIMM_PREFIX)


def _timm_entry(name: str) -> CatalogEntry:
    """Describe an arbitrary timm model (no weights downloaded)."""
    timm_name = name[len(TIMM_PREFIX):]
    architecture, _, tag = timm_name.partition(".")
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise KeyError(f"Unknown timm model '{architecture}' in architecture '{name}'.{hint} "
                       "See timm.list_models() for the names timm knows.")
    _stage_shapes(architecture)  # fails early, with the strides it has, if 4..32 are missing
    if not tag:
        cfg = get_pretrained_cfg(architecture)
        tag = cfg.tag if cfg is not None else None
    return CatalogEntry(name=name, family=Family.TIMM, timm_name=architecture,
                        weight_tag=tag or None, in_catalog=False)


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


def weights_input_normalization(arch: str, weights: str = "") -> Tuple[str, List[float], List[float]]:
    """The (INPUT.FORMAT, PIXEL_MEAN, PIXEL_STD) that the backbone weights of a config expect.

    Args:
        arch: ``MODEL.RESBACKBONE.ARCH``.
        weights: ``MODEL.RESBACKBONE.WEIGHTS``; ``"timm:<model>.<tag>"`` uses that tag's
            statistics, everything else the catalog entry's pinned tag (local timm/torchvision
            ImageNet files use the same statistics).
    """
    if is_timm_name(weights):
        return input_normalization(weights[len(TIMM_PREFIX):])
    return input_normalization(arch)
