#!/usr/bin/env python
"""Serve a detector as a Gradio page: upload an image, see boxes, labels and masks.

    python tools/gradio_demo.py --config-file output/quickstart/config.yaml \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

``--help`` lists the options (several models, the COCO model-zoo choice, host and port); the
command line lives in :mod:`resbackbones.demo.serve` (also ``python -m resbackbones web-demo``).
"""
from resbackbones.demo.serve import main

if __name__ == "__main__":
    main()
