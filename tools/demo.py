#!/usr/bin/env python
"""Run a detector on images, folders, globs or videos and save drawings and COCO JSON.

Detectron2's ``demo/demo.py`` style::

    python tools/demo.py --config-file output/quickstart/config.yaml \\
        --input datasets/synthetic_shapes/val 'photos/*.jpg' clip.mp4 --output output/demo \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/quickstart/model_final.pth

For each image ``<output>/<name>.png`` and ``<output>/<name>.json`` (COCO results); for a video
``<output>/<name>.mp4`` and ``<output>/<name>.json`` (``image_id`` = frame index).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from detectron2.utils.logger import setup_logger

from resbackbones.demo import (
    DemoPredictor,
    model_name_from_config,
    run_on_inputs,
    build_inference_config,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config-file", metavar="FILE",
                        help="Detectron2 config of the model (not with --onnx).")
    parser.add_argument("--onnx", metavar="MODEL_DIR",
                        help="Run an ONNX export (tools/export_model.py) with ONNX Runtime "
                             "instead, without Detectron2 (images only).")
    parser.add_argument("--input", nargs="+", required=True,
                        help="Image or video files, folders, or quoted glob patterns.")
    parser.add_argument("--output", required=True, help="Folder for drawings and JSON files.")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="Minimum score of the detections kept.")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N (default: MODEL.DEVICE, or the CPU without CUDA).")
    parser.add_argument("--class-names", default=None,
                        help="Comma-separated class names, when the config's test dataset is not "
                             "registered and the checkpoint stores none.")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides; put it last.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.onnx:  # numpy, Pillow and onnxruntime only: resbackbones.deploy.onnx_runner
        from resbackbones.deploy.onnx_demo import main as onnx_demo

        return onnx_demo(["--onnx", args.onnx, "--input", *args.input, "--output", args.output,
                          "--confidence-threshold", str(args.confidence_threshold)])
    if not args.config_file:
        raise SystemExit("error: --config-file is required (or --onnx MODEL_DIR)")
    setup_logger(name="resbackbones")
    logger = logging.getLogger("resbackbones")
    logger.setLevel(logging.INFO)
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    try:
        cfg = build_inference_config(args.config_file, args.opts, device=args.device,
                        score_threshold=args.confidence_threshold)
        predictor = DemoPredictor(cfg, name=model_name_from_config(args.config_file),
                                  class_names=class_names)
        summary = run_on_inputs(predictor, args.input, args.output, args.confidence_threshold)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    logger.info(f"Wrote {len(summary.written)} files to {args.output}")
    for failure in summary.failed:
        logger.warning(f"failed: {failure}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
