#!/usr/bin/env python
"""Run a detector on images, folders, globs or videos and save drawings and COCO JSON.

    python tools/demo.py --config-file output/quickstart/config.yaml \\
        --input datasets/synthetic_shapes/val 'photos/*.jpg' clip.mp4 --output output/demo \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/demo.py --onnx exported/quickstart --input photos/ --output output/onnx

``--help`` lists the options. A Detectron2 model runs through :mod:`resbackbones.demo.batch`; an
ONNX export (``--onnx``) through :mod:`resbackbones.deploy.onnx_demo`, which needs only numpy,
Pillow and onnxruntime, so this tool imports Detectron2 only for the first kind. The choice is
:func:`resbackbones.__main__.demo_main` (also ``python -m resbackbones demo``).
"""
import sys

from resbackbones.__main__ import demo_main

if __name__ == "__main__":
    sys.exit(demo_main(sys.argv[1:]))
