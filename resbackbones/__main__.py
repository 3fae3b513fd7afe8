"""``python -m resbackbones list [--input-size H W]`` and ``python -m resbackbones show NAME``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Run the catalog CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m resbackbones",
                                     description="The resbackbones architecture catalog.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every architecture with parameters and GFLOPs")
    listing.add_argument("--input-size", nargs=2, type=int, default=[800, 1333],
                         metavar=("HEIGHT", "WIDTH"), help="image size for GFLOPs (800 1333)")
    listing.add_argument("--names", nargs="+", help="only these architectures")
    show = commands.add_parser("show", help="details of one architecture")
    show.add_argument("name", help="catalog name or timm:<model>")
    args = parser.parse_args(argv)

    from detectron2.utils.logger import setup_logger

    import resbackbones  # noqa: F401  (registers the builders)
    from resbackbones.listing import catalog_rows, describe_entry, format_catalog_table

    setup_logger(name="resbackbones", abbrev_name="rb")
    try:
        if args.command == "show":
            print(describe_entry(args.name))
        else:
            print(format_catalog_table(catalog_rows(args.names, args.input_size)))
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
