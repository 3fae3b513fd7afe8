"""Command lines over the data package: check a COCO-format dataset, write the synthetic one.

``python -m resbackbones validate-dataset`` / ``make-synthetic-coco`` and
``tools/validate_dataset.py`` / ``tools/make_synthetic_coco.py`` run these functions; they live
in the library so that a wheel user, who has no ``tools/``, has them too.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .synthetic import SyntheticSpec, generate_synthetic_coco
from .validation import filter_coco_json, validate_coco_json

__all__ = ["make_synthetic_coco_main", "validate_dataset_main"]


def _examples(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--examples {text} is invalid; valid: an integer >= 0.")
    return int(text)


def validate_dataset_main(argv: Optional[Sequence[str]] = None) -> int:
    """Check a COCO instances JSON against its image folder and print the report.

    Returns:
        0 when the dataset is clean (or was cleaned with ``--skip-bad``), 1 when it has problems.
    """
    parser = argparse.ArgumentParser(
        description="Check a COCO-format instance dataset (JSON + image folder) before training "
                    "on it. Exit status 0 when clean (or cleaned with --skip-bad), 1 otherwise.")
    parser.add_argument("--json", required=True, help="COCO instances JSON")
    parser.add_argument("--image-root", required=True, help="folder of the images")
    parser.add_argument("--skip-bad", action="store_true",
                        help="write a copy without the bad records (needs --output)")
    parser.add_argument("--output", help="where --skip-bad writes the cleaned JSON")
    parser.add_argument("--no-decode", action="store_true",
                        help="read image headers only (faster; misses truncated files)")
    parser.add_argument("--examples", type=_examples, default=3,
                        help="examples shown per problem (default 3; 0: counts only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.skip_bad and not args.output:
        parser.error("--skip-bad needs --output CLEAN.json (the original file is never changed)")
    report = validate_coco_json(args.json, args.image_root, decode_images=not args.no_decode,
                                progress=True)
    print(report.format(examples=args.examples))
    if report.ok:
        return 0
    if args.skip_bad:
        summary = filter_coco_json(args.json, report, args.output)
        print(f"--skip-bad: wrote {args.output}: " +
              ", ".join(f"{key} {value}" for key, value in summary.items()))
        return 0
    return 1


def make_synthetic_coco_main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the synthetic shapes dataset in COCO layout (:mod:`resbackbones.data.synthetic`);
    a folder that already holds the same dataset is left as it is. Returns 0."""
    parser = argparse.ArgumentParser(
        description="Write the synthetic shapes dataset in COCO layout.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=SyntheticSpec.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticSpec.num_val)
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        default=(SyntheticSpec.height, SyntheticSpec.width))
    parser.add_argument("--max-instances", type=int, default=SyntheticSpec.max_instances)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = SyntheticSpec(num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                         height=args.image_size[0], width=args.image_size[1],
                         max_instances=args.max_instances)
    written = generate_synthetic_coco(args.out, spec, force=args.force)
    print(f"{'wrote' if written else 'up to date'}: {args.out} "
          f"({spec.num_train} train, {spec.num_val} val images)")
    return 0
