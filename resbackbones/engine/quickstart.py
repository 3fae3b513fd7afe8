"""The quickstart: generate the synthetic set, train a small Mask R-CNN, say where things are.

Why in the library: ``tools/quickstart.py`` stays thin and tests can call the same function.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Tuple

from resbackbones.data import (SYNTHETIC_DATASET_NAME, SyntheticSpec, generate_synthetic_coco,
                               synthetic_paths)

from .launch import build_argument_parser, build_cfg, main
from .trainer import EVAL_RESULTS_FILE

__all__ = ["QUICKSTART_SPEC", "QuickstartOptions", "run_quickstart"]

_DONE_FILE = "quickstart_done.json"

# More images and more shapes per image than the test set (64 / up to 4): more examples of each
# class per step and a less noisy val split; as hard per shape (same drawing, see the README).
QUICKSTART_SPEC = SyntheticSpec(num_train=256, num_val=64, max_instances=6)


@dataclass(frozen=True)
class QuickstartOptions:
    """What :func:`run_quickstart` does.

    Attributes:
        data: synthetic dataset directory (generated when missing).
        output: OUTPUT_DIR of the run.
        config_file: the YAML to train.
        force: retrain even if ``output`` holds a finished run of the same config.
        opts: extra ``KEY VALUE`` overrides.
        spec: the synthetic dataset to generate.
    """

    data: str = "datasets/synthetic_shapes"
    output: str = "output/quickstart"
    # A packaged config name (resbackbones.model_zoo_files): found in a checkout and a wheel.
    config_file: str = "quick_schedules/mask_rcnn_R_18_FPN_synthetic_quickstart.yaml"
    force: bool = False
    opts: Tuple[str, ...] = ()
    spec: SyntheticSpec = QUICKSTART_SPEC


def _dataset_flags(data: str) -> list:
    flags = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(data, split)
        flags += ["--dataset", f"{SYNTHETIC_DATASET_NAME}_{split}={json_file}:{image_root}"]
    return flags


def _summary(results: Dict, output: str, seconds: float, trained: bool) -> str:
    lines = [
        "",
        "resbackbones quickstart " + (f"trained in {seconds / 60:.1f} min" if trained
                                      else "(finished run found; use --force to retrain)"),
        f"  box AP  (synthetic val): {results.get('bbox', {}).get('AP', float('nan')):.1f}",
        f"  mask AP (synthetic val): {results.get('segm', {}).get('AP', float('nan')):.1f}",
        f"  weights:        {os.path.join(output, 'model_final.pth')}",
        f"  config:         {os.path.join(output, 'config.yaml')}",
        f"  metrics:        {os.path.join(output, 'metrics.json')} "
        f"(TensorBoard: tensorboard --logdir {output})",
        f"  curves:         {os.path.join(output, 'metrics.png')}",
        f"  predictions:    {os.path.join(output, 'visualizations')}/",
        f"  demo:           python -m resbackbones web-demo --config-file "
        f"{os.path.join(output, 'config.yaml')} --opts MODEL.WEIGHTS "
        f"{os.path.join(output, 'model_final.pth')}",
    ]
    return "\n".join(lines)


def run_quickstart(options: QuickstartOptions = QuickstartOptions()) -> Dict:
    """Generate data if missing, train unless an identical finished run exists, print a summary.

    Returns:
        The COCO results ``{"bbox": {...}, "segm": {...}}`` on the synthetic val split.
    """
    generate_synthetic_coco(options.data, options.spec)
    opts = ["OUTPUT_DIR", options.output, *options.opts]
    config_hash = hashlib.sha256(build_cfg(options.config_file, opts).dump().encode()).hexdigest()
    done_path = os.path.join(options.output, _DONE_FILE)
    results_path = os.path.join(options.output, EVAL_RESULTS_FILE)
    if not options.force and os.path.isfile(done_path):
        with open(done_path) as f:
            done = json.load(f)
        if (done.get("config_sha256") == config_hash
                and os.path.isfile(os.path.join(options.output, "model_final.pth"))):
            with open(results_path) as f:
                results = json.load(f)
            print(_summary(results, options.output, 0.0, trained=False))
            return results
    if os.path.exists(done_path):
        os.remove(done_path)  # an interrupted retrain must not look finished

    args = build_argument_parser().parse_args(
        ["--config-file", options.config_file, *_dataset_flags(options.data), *opts])
    start = time.perf_counter()
    results = main(args)
    seconds = time.perf_counter() - start
    with open(done_path, "w") as f:
        json.dump({"config_sha256": config_hash, "train_seconds": round(seconds, 1)}, f)
    print(_summary(results, options.output, seconds, trained=True))
    return results
