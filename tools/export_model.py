#!/usr/bin/env python
"""Export a detector to TorchScript or ONNX, with its config, class names and a README.

    python tools/export_model.py --config-file output/quickstart/config.yaml --format onnx \\
        --output exported/quickstart MODEL.WEIGHTS output/quickstart/model_final.pth

Tracing by default (Faster/Mask R-CNN and RetinaNet, any resbackbones backbone); BatchNorm
folding is baked in, CPU run-time tricks (Winograd, parallel ROIAlign, channels-last) are off.
Run an ONNX export without Detectron2: ``python tools/demo.py --onnx exported/quickstart ...``.
The same command line is ``python -m resbackbones export``.
"""
import sys

from resbackbones.deploy.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
