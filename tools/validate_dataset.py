#!/usr/bin/env python
"""Check a COCO-format instance dataset (JSON + image folder) before training on it.

    python tools/validate_dataset.py --json datasets/x/annotations/instances_train.json \
        --image-root datasets/x/train
    python tools/validate_dataset.py ... --skip-bad --output datasets/x/instances_train.clean.json

Exit status 0 when the dataset is clean (or cleaned with --skip-bad), 1 when it has problems.
The command line is :func:`resbackbones.data.cli.validate_dataset_main` (also ``python -m
resbackbones validate-dataset``).
"""
import sys

from resbackbones.data.cli import validate_dataset_main

if __name__ == "__main__":
    sys.exit(validate_dataset_main())
