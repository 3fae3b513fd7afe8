#!/usr/bin/env python
"""Check a COCO-format instance dataset (JSON + image folder) before training on it.

    python tools/validate_dataset.py --json datasets/x/annotations/instances_train.json \
        --image-root datasets/x/train
    python tools/validate_dataset.py ... --skip-bad --output datasets/x/instances_train.clean.json

Exit status 0 when the dataset is clean (or cleaned with --skip-bad), 1 when it has problems.
"""
import argparse
import logging
import sys

from resbackbones.data.validation import filter_coco_json, validate_coco_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="COCO instances JSON")
    parser.add_argument("--image-root", required=True, help="folder of the images")
    parser.add_argument("--skip-bad", action="store_true",
                        help="write a copy without the bad records (needs --output)")
    parser.add_argument("--output", help="where --skip-bad writes the cleaned JSON")
    parser.add_argument("--no-decode", action="store_true",
                        help="read image headers only (faster; misses truncated files)")
    parser.add_argument("--examples", type=int, default=3, help="examples shown per problem")
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


if __name__ == "__main__":
    sys.exit(main())
