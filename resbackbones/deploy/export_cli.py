"""The command line of ``tools/export_model.py`` (see :mod:`resbackbones.deploy.export`)."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from resbackbones.deploy.export import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    EXPORT_METHODS,
    ExportError,
    export_model,
)

_USAGE = """Export a detector to TorchScript or ONNX, with its config, class names and a README.

    python tools/export_model.py --config-file output/quickstart/config.yaml --format onnx \\
        --output exported/quickstart MODEL.WEIGHTS output/quickstart/model_final.pth

Tracing by default (Faster/Mask R-CNN and RetinaNet, any resbackbones backbone); BatchNorm
folding is baked in, CPU run-time tricks (Winograd, parallel ROIAlign, channels-last) are off.
Run an ONNX export without Detectron2: ``python tools/demo.py --onnx exported/quickstart ...``.
"""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=_USAGE.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(_USAGE.split("\n\n")[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="Detectron2 config of the model (MODEL.WEIGHTS: its weights).")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--method", default="tracing", choices=EXPORT_METHODS,
                        help="tracing (default; TorchScript or ONNX) or scripting (TorchScript, "
                             "only for scriptable models: not timm backbones).")
    parser.add_argument("--sample-image", default=None, metavar="IMAGE",
                        help="image traced through the model and used for the parity check "
                             "(default: a synthetic image of the test size).")
    parser.add_argument("--output", required=True, metavar="DIR", help="export folder.")
    parser.add_argument("--class-names", default=None,
                        help="comma-separated class names, when the config's datasets are not "
                             "registered (default: their metadata, else class_0, class_1, ...).")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, >= 16 (default {DEFAULT_OPSET}).")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    class_names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    try:
        result = export_model(args.config_file, args.output, args.format, args.method,
                              args.opts, args.sample_image, class_names, args.opset)
    except (ExportError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {result.output_dir}: {os.path.basename(result.model_path)}, config.yaml, "
          f"model_meta.json, README.md ({result.sample_detections} detections on the sample "
          f"image; parity with the eager model: {result.parity})")
    return 0
