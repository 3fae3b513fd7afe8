"""Loss and AP curves from Detectron2's ``metrics.json``, as one PNG.

Why: ``metrics.json`` (one JSON object per logged iteration, appended across resumes) is what
every Detectron2 run writes; a picture of it answers "did it learn?" without TensorBoard.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from resbackbones._requirements import require_extra

__all__ = ["load_metrics", "plot_metrics"]

_AP_KEYS = ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50")


def load_metrics(output_dir: str) -> List[Dict[str, float]]:
    """Read ``output_dir/metrics.json``, keeping the last record of each iteration.

    A resumed run appends records for iterations that the interrupted run had already logged;
    the later ones win. Records are returned sorted by iteration.
    """
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {output_dir!r} a training output "
                                "directory (cfg.OUTPUT_DIR)?")
    by_iteration: Dict[int, Dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if "iteration" in record:
                by_iteration.setdefault(int(record["iteration"]), {}).update(record)
    return [by_iteration[k] for k in sorted(by_iteration)]


def plot_metrics(output_dir: str, out_file: Optional[str] = None) -> str:
    """Draw training losses and evaluation APs against iteration.

    Args:
        output_dir: a training output directory containing ``metrics.json``.
        out_file: where to write the PNG; defaults to ``output_dir/metrics.png``.

    Returns:
        The path of the written PNG.

    Raises:
        MissingExtraError: matplotlib (the ``plots`` extra) is not installed.
    """
    matplotlib = require_extra("plots", "matplotlib", "Plotting the loss and AP curves")
    matplotlib.use("Agg")  # headless: CI and servers have no display
    import matplotlib.pyplot as plt

    records = load_metrics(output_dir)
    out_file = out_file or os.path.join(output_dir, "metrics.png")
    loss_keys = sorted({k for r in records for k in r
                        if k == "total_loss" or k.startswith("loss_")})
    ap_keys = [k for k in _AP_KEYS if any(k in r for r in records)]

    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in loss_keys:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        loss_axis.plot(*zip(*points), label=key, linewidth=2.0 if key == "total_loss" else 1.0)
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("training losses")
    if loss_keys:
        loss_axis.legend(fontsize="small")
    loss_axis.grid(alpha=0.3)

    for key in ap_keys:
        points = [(r["iteration"], r[key]) for r in records if key in r]
        ap_axis.plot(*zip(*points), marker="o", label=key)
    ap_axis.set_xlabel("iteration")
    ap_axis.set_ylabel("AP (%)")
    ap_axis.set_title("COCO AP on the test set" + ("" if ap_keys else " (no evaluation yet)"))
    if ap_keys:
        ap_axis.legend(fontsize="small")
    ap_axis.grid(alpha=0.3)

    figure.tight_layout()
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
    return out_file
