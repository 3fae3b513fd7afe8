#!/usr/bin/env python
"""Write the synthetic shapes dataset in COCO layout (see resbackbones/data/synthetic.py)."""
import argparse
import logging
import sys

from resbackbones.data.synthetic import SyntheticSpec, generate_synthetic_coco


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
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


if __name__ == "__main__":
    sys.exit(main())
