"""Convert a timm or torchvision checkpoint into a Detectron2 checkpoint for one architecture.

The weights are loaded into the real backbone first (with the same checks and report as
``MODEL.RESBACKBONE.WEIGHTS``), then its state dict is written under Detectron2 names, so a file
this writes always fits the architecture it names.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
from typing import Dict, List, Optional

import torch

from resbackbones.catalog import get_entry
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer
from resbackbones.modeling.timm_backbone import TimmBackbone
from resbackbones.weights.detectron2_names import (
    detectron2_to_resbackbones,
    resbackbones_to_detectron2,
)
from resbackbones.weights.loader import WeightLoadReport, load_backbone_weights

__all__ = ["DETECTRON2_FPN_PREFIX", "convert_checkpoint_names", "convert_to_detectron2",
           "OUTPUT_FORMATS"]

logger = logging.getLogger(__name__)

# Where the timm body sits in a Detectron2 model built with the FPN builders.
DETECTRON2_FPN_PREFIX = "backbone.bottom_up.body."
OUTPUT_FORMATS = ("pth", "safetensors", "pkl")


def _output_format(output: str, requested: Optional[str]) -> str:
    extension = os.path.splitext(output)[1].lower().lstrip(".")
    fmt = requested or {"pth": "pth", "safetensors": "safetensors", "pkl": "pkl"}.get(extension)
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"Cannot tell the output format of '{output}': use a .pth, .safetensors "
                         "or .pkl name, or pass the format explicitly.")
    if fmt == "pkl" and requested != "pkl":
        raise ValueError(f"'{output}' would be a plain pickle: pass format 'pkl' (--format pkl) to "
                         "ask for one explicitly, or write .pth/.safetensors instead.")
    return fmt


def _check_prefix(prefix: str) -> None:
    """A key prefix is a module path: "" or names joined by dots, ending with a dot."""
    if prefix and not prefix.endswith("."):
        raise ValueError(f"--prefix {prefix!r} is invalid: a key prefix must end with '.' "
                         f"(e.g. '{prefix}.', '{DETECTRON2_FPN_PREFIX}' for the FPN builders, "
                         "'backbone.body.' for build_resbackbone_backbone), or be '' for bare "
                         "timm names.")


def convert_to_detectron2(
    source: str,
    arch: str,
    output: str,
    prefix: str = DETECTRON2_FPN_PREFIX,
    output_format: Optional[str] = None,
    allow_partial: bool = False,
) -> WeightLoadReport:
    """Write ``source`` weights as a Detectron2 checkpoint for architecture ``arch``.

    Args:
        source: a MODEL.RESBACKBONE.WEIGHTS value: local timm/torchvision file, "imagenet" or
            "timm:<model>.<tag>".
        arch: catalog name (or ``timm:<model>``).
        output: file to write. ``.pth`` (default; ``{"model": ...}``, what MODEL.WEIGHTS reads),
            ``.safetensors`` (flat, for MODEL.RESBACKBONE.WEIGHTS) or ``.pkl`` (Detectron2's numpy
            pickle; only with ``output_format="pkl"``).
        prefix: key prefix; the default fits the FPN builders. Use ``"backbone.body."`` for
            ``build_resbackbone_backbone``.
        output_format: ``"pth"``, ``"safetensors"`` or ``"pkl"``; default from the extension.
        allow_partial: write even if some backbone keys stay random (not recommended).

    Returns:
        The load report.
    """
    fmt = _output_format(output, output_format)
    _check_prefix(prefix)
    backbone = TimmBackbone(get_entry(arch), norm="BN")
    report = load_backbone_weights(backbone, source, allow_partial=allow_partial)
    state: Dict[str, torch.Tensor] = {
        prefix + key: value.detach().contiguous()
        for key, value in backbone.body.state_dict().items()
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, output, metadata={"format": "pt", "resbackbones_arch": arch})
    elif fmt == "pth":
        torch.save({"model": state, "__author__": "resbackbones", "matching_heuristics": False},
                   output)
    else:
        with open(output, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                         "__author__": "resbackbones", "matching_heuristics": False}, f)
    logger.info(f"Wrote {len(state)} tensors for '{arch}' to {output} ({fmt}, keys '{prefix}*').")
    return report


def _write(state: Dict[str, torch.Tensor], output: str, fmt: str, note: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, output,
                  metadata={"format": "pt", "converted_by": note})
    elif fmt == "pth":
        torch.save({"model": state, "__author__": note, "matching_heuristics": False}, output)
    else:
        with open(output, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": note,
                         "matching_heuristics": False}, f)


def convert_checkpoint_names(
    source: str, output: str, to: str, output_format: Optional[str] = None,
    body_prefix: str = DETECTRON2_FPN_PREFIX,
) -> int:
    """Rename a whole detector checkpoint between Detectron2's built-in ResNet names and ours.

    FPN and head tensors are copied unchanged (both use Detectron2's modules).

    Args:
        source: a Detectron2 ``model_final.pth``/model-zoo ``.pkl`` (``to="resbackbones"``) or a
            resbackbones checkpoint (``to="detectron2"``); read without running code.
        output: ``.safetensors`` (preferred), ``.pth`` or ``.pkl`` (with ``output_format="pkl"``).
        to: ``"resbackbones"`` or ``"detectron2"``.
        body_prefix: where the timm body sits (``backbone.bottom_up.body.`` for FPN models).

    Returns:
        The number of tensors renamed.

    Raises:
        ValueError: nothing to rename, or (to Detectron2) backbone layers Detectron2's ResNet does
            not have (ResNet-D stems, SE modules...), named in the message.
    """
    fmt = _output_format(output, output_format)
    _check_prefix(body_prefix)
    data = ResBackboneCheckpointer(torch.nn.Module())._load_file(source)
    state = {k: torch.as_tensor(v) for k, v in data["model"].items()}
    if to == "resbackbones":
        state, renamed, unknown = detectron2_to_resbackbones(state, body_prefix)
        count = len(renamed)
        if unknown:
            raise ValueError(f"{source}: ResNet tensors with no timm equivalent, first "
                             f"'{unknown[0]}' ({len(unknown)} in all).")
    elif to == "detectron2":
        before = sum(k.startswith(body_prefix) for k in state)
        state, unknown = resbackbones_to_detectron2(state, body_prefix)
        if unknown:
            raise ValueError(f"{source}: '{unknown[0]}' ({len(unknown)} in all) has no "
                             "equivalent in Detectron2's built-in ResNet; only plain ResNet/"
                             "ResNeXt/Wide ResNet backbones convert.")
        count = before
    else:
        raise ValueError(f"Unknown target naming {to!r}; use 'resbackbones' or 'detectron2'.")
    if not count:
        raise ValueError(f"{source} has no backbone tensors to rename for '{to}' (prefix "
                         f"'{body_prefix}').")
    _write(state, output, fmt, f"resbackbones ({to} names)")
    logger.info(f"Renamed {count} backbone tensors to {to} names; wrote {len(state)} tensors to "
                f"{output} ({fmt}).")
    return count


def main(argv: Optional[List[str]] = None) -> int:
    """The ``tools/convert_weights.py`` command line; returns its exit code."""
    from detectron2.utils.logger import setup_logger

    parser = argparse.ArgumentParser(
        description="Convert backbone or detector weights between timm/torchvision, "
                    "Detectron2 and resbackbones names.")
    parser.add_argument("--arch", help="catalog name, e.g. resnet50 (ImageNet backbone input)")
    parser.add_argument("--from", dest="source_names", choices=("imagenet", "detectron2",
                                                                "resbackbones"),
                        default="imagenet", help="naming of --input: an ImageNet backbone "
                        "(timm/torchvision/Caffe2, default) or a whole detector checkpoint")
    parser.add_argument("--to", dest="target_names", choices=("resbackbones", "detectron2"),
                        default="resbackbones", help="naming of --output for detector "
                        "checkpoints")
    parser.add_argument("--input", required=True,
                        help="timm/torchvision .safetensors/.pth/.bin, 'imagenet' or "
                             "'timm:<model>.<tag>'")
    parser.add_argument("--output", required=True, help="output .pth (default), .safetensors, .pkl")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                        help="output format (default: from --output's extension; pkl only "
                             "when given here)")
    parser.add_argument("--prefix", default=DETECTRON2_FPN_PREFIX,
                        help="key prefix (default fits the FPN builders; 'backbone.body.' for "
                             "build_resbackbone_backbone)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="ImageNet backbone files only: write even if some backbone keys "
                             "stay random (listed in a warning)")
    args = parser.parse_args(argv)
    setup_logger(name="resbackbones", abbrev_name="rb")
    if args.source_names != "imagenet":
        if args.source_names == args.target_names:
            parser.error("--from and --to name the same naming; nothing to convert.")
        if args.allow_partial:
            parser.error("--allow-partial applies to ImageNet backbone files (--from imagenet); "
                         "a detector checkpoint is renamed whole, never partly.")
        convert_checkpoint_names(args.input, args.output, args.target_names,
                                 output_format=args.format, body_prefix=args.prefix)
        return 0
    if not args.arch:
        parser.error("--arch is required for ImageNet backbone files.")
    convert_to_detectron2(args.input, args.arch, args.output, prefix=args.prefix,
                          output_format=args.format, allow_partial=args.allow_partial)
    return 0
