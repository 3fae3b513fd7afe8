#!/usr/bin/env python
"""`make quickstart`: synthetic data, Mask R-CNN R18-FPN from scratch, AP, drawings and plots.

Idempotent: data are generated only if missing, and training is skipped when OUTPUT already
holds a finished run of the same config (use --force to retrain). The command line is
:func:`resbackbones.engine.cli.quickstart_main` (also ``python -m resbackbones quickstart``).
"""
import sys

from resbackbones.engine.cli import quickstart_main

if __name__ == "__main__":
    sys.exit(quickstart_main())
