#!/usr/bin/env python
"""Draw loss and AP curves of a training output directory into OUTPUT_DIR/metrics.png.

The command line is :func:`resbackbones.engine.cli.plot_metrics_main` (also ``python -m
resbackbones plot-metrics``).
"""
import sys

from resbackbones.engine.cli import plot_metrics_main

if __name__ == "__main__":
    sys.exit(plot_metrics_main())
