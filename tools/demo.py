#!/usr/bin/env python
"""Run a detector on images, folders, globs or videos and save drawings and COCO JSON.

    python tools/demo.py --config-file output/quickstart/config.yaml \\
        --input datasets/synthetic_shapes/val 'photos/*.jpg' clip.mp4 --output output/demo \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/demo.py --onnx exported/quickstart --input photos/ --output output/onnx

``--help`` lists the options. A Detectron2 model runs through :mod:`resbackbones.demo.batch`; an
ONNX export (``--onnx``) through :mod:`resbackbones.deploy.onnx_demo`, which needs only numpy,
Pillow and onnxruntime, so this tool imports Detectron2 only for the first kind.
"""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--onnx" in argv:
        from resbackbones.deploy.onnx_demo import main as run
    else:
        from resbackbones.demo.batch import main as run
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
