"""The catalog as a table: parameters and GFLOPs of each architecture (``python -m resbackbones``).

GFLOPs are counted by fvcore's ``FlopCountAnalysis`` on the bottom-up network + FPN (P2-P6, as
built by ``build_resbackbone_fpn_backbone``) for one image padded to a multiple of 32, as
Detectron2 pads it. fvcore counts one fused multiply-add as one flop (Detectron2's convention).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import timm
import torch
from detectron2.modeling import build_backbone
from fvcore.nn import FlopCountAnalysis
from tabulate import tabulate

from resbackbones.catalog import Family, catalog_names, get_entry, input_normalization
from resbackbones.config import build_config

__all__ = ["ArchitectureCost", "measure_architecture", "catalog_rows", "format_catalog_table",
           "describe_entry"]

logger = logging.getLogger(__name__)


@dataclass
class ArchitectureCost:
    """Size and cost of one architecture at one input size."""

    name: str
    family: Family
    bottom_up_params: int
    fpn_params: int
    bottom_up_gflops: float
    total_gflops: float
    input_size: Tuple[int, int]


def _padded(size: Sequence[int], divisor: int = 32) -> Tuple[int, int]:
    return tuple(-(-int(s) // divisor) * divisor for s in size)  # type: ignore[return-value]


def measure_architecture(name: str, input_size: Sequence[int] = (800, 1333)) -> ArchitectureCost:
    """Build ``name`` with the FPN builder (random init, BN) and count parameters and FLOPs.

    Args:
        name: catalog name.
        input_size: (height, width) before padding to a multiple of 32.
    """
    # Inference speed-ups off: the table reports the FLOPs of the network as defined (BN
    # included), not of one CPU kernel choice (NNPACK's Winograd convs are invisible to fvcore,
    # BN folding removes the norms' flops).
    cfg = build_config("", ["MODEL.BACKBONE.NAME", "build_resbackbone_fpn_backbone",
                            "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESBACKBONE.ARCH", name,
                            "MODEL.RESBACKBONE.NORM", "BN", "MODEL.RESBACKBONE.WINOGRAD", False,
                            "MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE", False])
    model = build_backbone(cfg).eval()
    height, width = _padded(input_size)
    with torch.no_grad():
        flops = FlopCountAnalysis(model, (torch.zeros(1, 3, height, width),))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total()
        bottom_up = flops.by_module()["bottom_up"]
    bottom_up_params = sum(p.numel() for p in model.bottom_up.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    entry = get_entry(name)
    return ArchitectureCost(name, entry.family, bottom_up_params, all_params - bottom_up_params,
                            bottom_up / 1e9, total / 1e9, (height, width))


def catalog_rows(names: Optional[Iterable[str]] = None,
                 input_size: Sequence[int] = (800, 1333)) -> List[ArchitectureCost]:
    """Measure every catalog entry (or ``names``), logging progress."""
    names = list(names) if names is not None else catalog_names()
    rows = []
    for index, name in enumerate(names, start=1):
        logger.info(f"[{index}/{len(names)}] measuring {name}")
        rows.append(measure_architecture(name, input_size))
    return rows


def format_catalog_table(rows: List[ArchitectureCost]) -> str:
    """Render measured rows with the catalog's weight tag, channels and normalisation."""
    if not rows:
        return "(empty)"
    height, width = rows[0].input_size
    header = (f"resbackbones catalog. GFLOPs: fvcore, one image {height}x{width} (padded to a "
              "multiple of 32), bottom-up alone and bottom-up + FPN P2-P6; "
              "1 multiply-add = 1 flop.")
    body = []
    for r in rows:
        entry = get_entry(r.name)
        body.append((r.name, str(r.family), entry.weight_tag, "/".join(map(str, entry.channels)),
                     f"{r.bottom_up_params / 1e6:.1f}",
                     f"{(r.bottom_up_params + r.fpn_params) / 1e6:.1f}",
                     f"{r.bottom_up_gflops:.1f}", f"{r.total_gflops:.1f}"))
    table = tabulate(
        body,
        headers=["name", "family", "weight tag", "res2-res5 channels", "params (M) bottom-up",
                 "params (M) +FPN", "GFLOPs bottom-up", "GFLOPs +FPN"],
        tablefmt="pipe",
        disable_numparse=True,
    )
    return header + "\n\n" + table


def describe_entry(name: str) -> str:
    """Details of one entry: timm name, weights, channels, strides and input normalisation."""
    entry = get_entry(name)
    rows = [
        ("name", entry.name),
        ("family", str(entry.family)),
        ("in tested catalog", "yes" if entry.in_catalog else "no (timm: name)"),
        ("timm model", entry.timm_name),
        ("ImageNet weights (WEIGHTS 'imagenet')", entry.timm_weights or "none"),
        ("res2..res5 channels", ", ".join(map(str, entry.channels))),
        ("res2..res5 strides", ", ".join(map(str, entry.strides))),
    ]
    if entry.timm_weights:
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(entry.timm_weights)
        input_format, mean, std = input_normalization(entry.timm_weights)
        rows += [
            ("INPUT.FORMAT", input_format),
            ("MODEL.PIXEL_MEAN", str(mean)),
            ("MODEL.PIXEL_STD", str(std)),
            ("weights on the HF hub", pretrained.hf_hub_id or "-"),
            ("weights license", pretrained.license or "-"),
            ("other timm tags", ", ".join(t.split(".", 1)[1] for t in
                                          timm.list_pretrained(entry.timm_name + ".*")
                                          if t != entry.timm_weights)),
        ]
    return tabulate(rows, tablefmt="plain")
