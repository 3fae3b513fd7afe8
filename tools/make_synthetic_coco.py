#!/usr/bin/env python
"""Write the synthetic shapes dataset in COCO layout (see resbackbones/data/synthetic.py).

    python tools/make_synthetic_coco.py --out datasets/synthetic_shapes

The command line is :func:`resbackbones.data.cli.make_synthetic_coco_main` (also ``python -m
resbackbones make-synthetic-coco``).
"""
import sys

from resbackbones.data.cli import make_synthetic_coco_main

if __name__ == "__main__":
    sys.exit(make_synthetic_coco_main())
