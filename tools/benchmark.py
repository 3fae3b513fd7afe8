#!/usr/bin/env python
"""Benchmark a resbackbones detector against Detectron2's built-in ResNet and torchvision.

    python tools/benchmark.py                                   # Mask R-CNN R50-FPN, 800x1333
    python tools/benchmark.py --arch resnext101_32x8d --no-training
    python tools/benchmark.py --height 256 --width 320 --output /tmp/BENCH.md --no-scaling
    python tools/benchmark.py --bf16 --onnx     # + bf16 rows and an ONNX Runtime row, same run
    python tools/benchmark.py --profile-training --bf16 --height 512 --width 768

Writes (or updates this device's section of) BENCHMARKS.md and a scaling plot next to it. The
command line is :mod:`resbackbones.benchmark.cli` (also ``python -m resbackbones benchmark``).
"""
import sys

from resbackbones.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
