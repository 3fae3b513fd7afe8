#!/usr/bin/env python
"""`make quickstart`: synthetic data, Mask R-CNN R18-FPN from scratch, AP, drawings and plots.

Idempotent: data are generated only if missing, and training is skipped when OUTPUT already
holds a finished run of the same config (use --force to retrain).
"""
import argparse
import sys

from resbackbones.engine.quickstart import QuickstartOptions, run_quickstart


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="datasets/synthetic_shapes",
                        help="synthetic dataset directory (generated if missing)")
    parser.add_argument("--output", default="output/quickstart", help="training output directory")
    parser.add_argument("--config-file", default=QuickstartOptions.config_file)
    parser.add_argument("--force", action="store_true",
                        help="retrain even if a finished run exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="trailing KEY VALUE config overrides")
    args = parser.parse_args(argv)
    run_quickstart(QuickstartOptions(data=args.data, output=args.output,
                                     config_file=args.config_file, force=args.force,
                                     opts=tuple(args.opts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
