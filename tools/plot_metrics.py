#!/usr/bin/env python
"""Draw loss and AP curves of a training output directory into OUTPUT_DIR/metrics.png."""
import argparse

from resbackbones.engine.plots import plot_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", help="a training OUTPUT_DIR containing metrics.json")
    parser.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/metrics.png)")
    args = parser.parse_args()
    print(plot_metrics(args.output_dir, args.out))


if __name__ == "__main__":
    main()
