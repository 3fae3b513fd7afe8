"""Command lines over the engine besides training itself (which is :func:`launch.run`): the
quickstart and the metric curves.

``python -m resbackbones quickstart`` / ``plot-metrics`` and ``tools/quickstart.py`` /
``tools/plot_metrics.py`` run these functions; they live in the library so that a wheel user,
who has no ``tools/``, has them too.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .plots import plot_metrics
from .quickstart import QuickstartOptions, run_quickstart

__all__ = ["plot_metrics_main", "quickstart_main"]


def quickstart_main(argv: Optional[Sequence[str]] = None) -> int:
    """Synthetic data, Mask R-CNN R18-FPN from scratch, AP, drawings and plots (idempotent:
    see :func:`~resbackbones.engine.quickstart.run_quickstart`). Returns 0."""
    parser = argparse.ArgumentParser(
        description="The quickstart: synthetic data, Mask R-CNN R18-FPN from scratch, AP, "
                    "drawings and plots. Data are generated only if missing, and training is "
                    "skipped when OUTPUT already holds a finished run of the same config.")
    parser.add_argument("--data", default="datasets/synthetic_shapes",
                        help="synthetic dataset directory (generated if missing)")
    parser.add_argument("--output", default="output/quickstart", help="training output directory")
    parser.add_argument("--config-file", default=QuickstartOptions.config_file,
                        help="a config path or a packaged name (python -m resbackbones configs)")
    parser.add_argument("--force", action="store_true",
                        help="retrain even if a finished run exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="trailing KEY VALUE config overrides")
    args = parser.parse_args(argv)
    run_quickstart(QuickstartOptions(data=args.data, output=args.output,
                                     config_file=args.config_file, force=args.force,
                                     opts=tuple(args.opts)))
    return 0


def plot_metrics_main(argv: Optional[Sequence[str]] = None) -> int:
    """Draw the loss and AP curves of a training OUTPUT_DIR and print the PNG's path. Returns 0."""
    parser = argparse.ArgumentParser(
        description="Draw loss and AP curves of a training output directory into "
                    "OUTPUT_DIR/metrics.png.")
    parser.add_argument("output_dir", help="a training OUTPUT_DIR containing metrics.json")
    parser.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/metrics.png)")
    args = parser.parse_args(argv)
    print(plot_metrics(args.output_dir, args.out))
    return 0
