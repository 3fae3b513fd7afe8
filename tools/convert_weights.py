#!/usr/bin/env python
"""Convert a timm or torchvision checkpoint into a Detectron2 checkpoint for one architecture.

    python tools/convert_weights.py --arch resnet50 --input resnet50-0676ba61.pth \\
        --output weights/resnet50_d2.pth

Caffe2 ImageNet files (MSRA ``R-50.pkl``) convert the same way (``--input R-50.pkl``). Whole
detector checkpoints convert between Detectron2's built-in ResNet names and resbackbones names:

    python tools/convert_weights.py --from detectron2 --to resbackbones \
        --input model_final_f10217.pkl --output mask_rcnn_R_50_FPN_3x.safetensors
    python tools/convert_weights.py --from resbackbones --to detectron2 \
        --input output/model_final.pth --output model_final_d2.pth

The output loads with ``MODEL.WEIGHTS`` (keys ``backbone.bottom_up.body.*``). Inputs are read
without running code (safetensors, or torch.load(weights_only=True)); ``.safetensors`` outputs
feed ``MODEL.RESBACKBONE.WEIGHTS``; a plain-pickle ``.pkl`` is written only with ``--format pkl``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from detectron2.utils.logger import setup_logger

import resbackbones  # noqa: F401
from resbackbones.checkpoint.convert import (
    DETECTRON2_FPN_PREFIX,
    OUTPUT_FORMATS,
    convert_checkpoint_names,
    convert_to_detectron2,
)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
                        help="write even if some backbone keys stay random")
    args = parser.parse_args(argv)
    setup_logger(name="resbackbones", abbrev_name="rb")
    if args.source_names != "imagenet":
        if args.source_names == args.target_names:
            parser.error("--from and --to name the same naming; nothing to convert.")
        convert_checkpoint_names(args.input, args.output, args.target_names,
                                 output_format=args.format, body_prefix=args.prefix)
        return 0
    if not args.arch:
        parser.error("--arch is required for ImageNet backbone files.")
    convert_to_detectron2(args.input, args.arch, args.output, prefix=args.prefix,
                          output_format=args.format, allow_partial=args.allow_partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())
