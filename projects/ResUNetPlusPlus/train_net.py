#!/usr/bin/env python
"""Train or evaluate ResUNet++ with Detectron2's flags (see README.md).

    python train_net.py --quickstart                    # synthetic polyps, CPU, a few minutes
    python train_net.py --config-file configs/resunetpp_paper_kvasir.yaml \\
        --dataset kvasir=kvasir:datasets/Kvasir-SEG
    python train_net.py --config-file CONFIG --dataset ... --eval-only MODEL.WEIGHTS model.pth
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from resunetpp.engine import run  # noqa: E402

if __name__ == "__main__":
    run()
