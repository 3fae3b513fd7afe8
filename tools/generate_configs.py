#!/usr/bin/env python
"""Write the files generated from resbackbones/catalog.py: configs/COCO-Detection,
configs/COCO-InstanceSegmentation and the README's model table (resbackbones.generate).

    python tools/generate_configs.py               # (re)write configs and the README table
    python tools/generate_configs.py --check       # verify the configs are up to date
    python tools/generate_configs.py --no-readme   # configs only (the table takes minutes)
"""
import argparse
import os
import sys

from resbackbones import generate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only verify configs, write nothing")
    parser.add_argument("--no-readme", action="store_true",
                        help="skip the README model table (it measures every entry)")
    args = parser.parse_args(argv)
    config_root = os.path.join(REPO_ROOT, "configs")
    if args.check:
        stale = generate.stale_configs(config_root)
        if stale:
            exists = {relative: os.path.isfile(os.path.join(config_root, relative))
                      for relative in stale}
            listed = "\n".join(f"  {relative} ({'differs' if exists[relative] else 'missing'})"
                                for relative in stale)
            print(f"{len(stale)} generated configs under {config_root} are not what "
                  f"resbackbones/catalog.py generates:\n{listed}\nRun python "
                  "tools/generate_configs.py to rewrite them (they are generated: change the "
                  "catalog or resbackbones/generate.py, not these files).", file=sys.stderr)
            return 1
        print("checked configs: 0 stale")
        return 0
    print(f"wrote configs: {len(generate.write_configs(config_root))} changed")
    if not args.no_readme:
        from resbackbones.listing import measure_architecture

        def measure(name):
            cost = measure_architecture(name)
            return (cost.bottom_up_params, cost.bottom_up_params + cost.fpn_params,
                    cost.bottom_up_gflops, cost.total_gflops)

        readme = os.path.join(REPO_ROOT, "README.md")
        with open(readme) as f:
            text = f.read()
        table = generate.render_readme_model_table(measure)
        with open(readme, "w") as f:
            f.write(generate.replace_readme_model_table(text, table))
        print("wrote the README model table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
