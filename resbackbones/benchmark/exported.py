"""An exported model (e.g. ONNX Runtime on the CPU) timed against the eager model it was exported
from: same weights, same image, same process, measured interleaved.

The benchmark does not know how to export (``resbackbones.deploy`` does, and the two packages
are independent siblings): the caller passes an exporter, ``tools/benchmark.py --onnx`` the
ONNX one. Both sides run the whole inference of one image including the postprocess (masks
pasted into the image), so the ratio is what a user of either sees.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

from resbackbones.benchmark.contenders import detectron2_contender, synthetic_image
from resbackbones.benchmark.harness import Timing, describe_device, measure_interleaved
from resbackbones.benchmark.run import (
    BenchmarkSettings,
    _save_random_timm_weights,
    resbackbones_config,
)

__all__ = ["EAGER", "ExportedComparison", "Exporter", "exported_markdown",
           "run_exported_comparison"]

EAGER = "resbackbones eager (PyTorch)"

# (eager model, its config, the RGB image, a scratch folder) -> (name, description, a callable
# that runs the exported model on an RGB image and returns its boxes as an (N, 4) array).
Exporter = Callable[[nn.Module, Any, np.ndarray, str],
                    "tuple[str, str, Callable[[np.ndarray], np.ndarray]]"]


@dataclass
class ExportedComparison:
    settings: BenchmarkSettings
    device_name: str
    exported_name: str
    inference: Dict[str, Timing]
    detections: Dict[str, int]
    agreement: float
    descriptions: Dict[str, str]


def _box_agreement(reference: np.ndarray, boxes: np.ndarray, threshold: float = 0.99) -> float:
    """Fraction of the reference boxes that ``boxes`` reproduces (IoU > ``threshold``)."""
    from torchvision.ops import box_iou

    if len(reference) == 0:
        return 1.0 if len(boxes) == 0 else 0.0
    if len(boxes) == 0:
        return 0.0
    iou = box_iou(torch.as_tensor(reference).float(), torch.as_tensor(boxes).float())
    return float((iou.max(dim=1).values > threshold).float().mean())


def run_exported_comparison(settings: BenchmarkSettings, export: Exporter) -> ExportedComparison:
    """Time the eager model of ``settings`` and its export on the same synthetic image.

    Weights are random (timm's initialisation loaded as a weights file, frozen BN calibrated,
    the classifier biased so that a full set of detections is returned), as in the main
    comparison.
    """
    device = torch.device(settings.device)
    image = synthetic_image(settings.height, settings.width)
    with tempfile.TemporaryDirectory(prefix="resbackbones-bench-") as scratch:
        arch = resbackbones_config(settings, "").MODEL.RESBACKBONE.ARCH
        cfg = resbackbones_config(settings, _save_random_timm_weights(arch, scratch))
        eager = detectron2_contender(EAGER, cfg, image, 1, "")
        name, description, run_exported = export(eager.model, cfg, image, scratch)
        eager_boxes = eager.infer()[0]["instances"].pred_boxes.tensor.cpu().numpy()
        exported_boxes = run_exported(image)
        timings = measure_interleaved({EAGER: eager.infer, name: lambda: run_exported(image)},
                                      device, settings.warmup, settings.repeats)
    return ExportedComparison(
        settings=settings, device_name=describe_device(device), exported_name=name,
        inference=timings,
        detections={EAGER: len(eager_boxes), name: len(exported_boxes)},
        agreement=_box_agreement(eager_boxes, exported_boxes),
        descriptions={EAGER: f"{cfg.MODEL.META_ARCHITECTURE} with {arch}, default speed-ups "
                             "(BN folding, channels-last, Winograd, parallel ROIAlign)",
                      name: description})


def exported_markdown(result: ExportedComparison) -> str:
    """The table of one exported-vs-eager run, with the ratio measured in that run."""
    settings = result.settings
    eager = result.inference[EAGER].median
    rows = [[name, f"{timing.median:.3f} ± {timing.spread:.3f}", f"{eager / timing.median:.2f}x",
             f"{timing.peak_memory_bytes / 2**30:.2f}", result.detections[name]]
            for name, timing in result.inference.items()]
    lines = [
        f"Config `{settings.config_file}`" + (f", architecture `{settings.arch}`"
                                              if settings.arch else "")
        + f"; input {settings.height}x{settings.width}, one image, {settings.repeats} timed runs "
        f"after {settings.warmup} warm-up, interleaved, on {result.device_name}.",
        "",
        tabulate(rows, headers=["model", "s/img (median ± IQR)", "speed vs eager",
                                "peak mem GiB", "detections"], tablefmt="github"),
        "",
    ]
    lines += [f"- **{name}**: {text}" for name, text in result.descriptions.items()]
    lines.append(f"- Same weights: {result.agreement:.0%} of the eager model's detections are "
                 f"reproduced by {result.exported_name} (box IoU > 0.99).")
    return "\n".join(lines)
