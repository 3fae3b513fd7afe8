"""Turn a prediction into what a user reads or downloads: filtered detections, table rows and
COCO-style results JSON.

The JSON follows the COCO results format that ``pycocotools``' ``COCO.loadRes`` and Detectron2's
``COCOEvaluator`` read: one dict per detection with ``image_id``, ``category_id``, ``bbox``
(x, y, width, height), ``score`` and, for instance masks, ``segmentation`` as compressed RLE.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torchvision
from detectron2.structures import Instances

__all__ = [
    "ONE_LABEL_IOU",
    "TABLE_HEADERS",
    "coco_results",
    "detection_rows",
    "filter_instances",
    "write_coco_json",
]

# Columns of the detections table; boxes are corners in pixels of the image shown.
TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]

# "One label per object" (the web demo's default, the CLI demo's --one-label-per-object): a
# detection is hidden when its box overlaps a higher-scored detection of another class by this
# IoU. Two objects of different classes rarely overlap this much; one object predicted as two
# classes nearly always does.
ONE_LABEL_IOU = 0.7


def filter_instances(
    instances: Instances,
    score_threshold: float = 0.0,
    class_ids: Optional[Sequence[int]] = None,
    cross_class_iou: Optional[float] = None,
) -> Instances:
    """Keep detections with ``score >= score_threshold`` whose class is in ``class_ids``.

    Detectron2 suppresses overlapping boxes within each class only, so one object can come out
    twice, as two classes. ``cross_class_iou`` also drops a detection whose box overlaps a
    higher-scored kept one of any class by at least that IoU (class-agnostic NMS on what is
    shown; the model's output is unchanged).

    Args:
        instances: predictions on the CPU.
        score_threshold: minimum score, in [0, 1].
        class_ids: contiguous class ids to keep; ``None`` or empty keeps every class (an empty
            class filter in the UI means "no filter", not "show nothing").
        cross_class_iou: box IoU in (0, 1] above which a lower-scored detection of another class
            is dropped; ``None`` keeps them (Detectron2's behaviour).

    Returns:
        The kept instances, in their original (score) order.
    """
    if cross_class_iou is not None and not 0.0 < float(cross_class_iou) <= 1.0:
        raise ValueError(f"cross_class_iou must be in (0, 1] or None, got {cross_class_iou}")
    keep = instances.scores >= float(score_threshold)
    if class_ids:
        wanted = torch.as_tensor(sorted({int(c) for c in class_ids}), dtype=torch.int64)
        keep &= torch.isin(instances.pred_classes.to(torch.int64), wanted)
    kept = instances[keep]
    if cross_class_iou is None or len(kept) < 2:
        return kept
    survivors = torchvision.ops.nms(kept.pred_boxes.tensor.float(), kept.scores.float(),
                                    float(cross_class_iou))
    return kept[survivors.sort().values]


def detection_rows(instances: Instances, class_names: Sequence[str]) -> List[List[Any]]:
    """One row per detection: class name, score (3 decimals), x0, y0, x1, y1 (1 decimal)."""
    rows = []
    boxes = instances.pred_boxes.tensor.tolist()
    for cls, score, box in zip(instances.pred_classes.tolist(), instances.scores.tolist(), boxes):
        name = class_names[cls] if 0 <= cls < len(class_names) else f"class {cls}"
        rows.append([name, round(score, 3)] + [round(v, 1) for v in box])
    return rows


def coco_results(
    instances: Instances,
    image_id: int = 0,
    dataset_id_to_contiguous_id: Optional[Mapping[int, int]] = None,
) -> List[Dict[str, Any]]:
    """Detections as COCO results (what ``COCO.loadRes`` reads).

    Args:
        instances: predictions on the CPU.
        image_id: the ``image_id`` written in every entry.
        dataset_id_to_contiguous_id: the dataset's category id mapping (Detectron2 metadata
            ``thing_dataset_id_to_contiguous_id``); when given, category ids are written as the
            dataset's ids, as ``COCOEvaluator`` does; otherwise the contiguous ids are written.

    Returns:
        A list of dicts with ``image_id``, ``category_id``, ``bbox`` (x, y, w, h), ``score`` and,
        when the model predicts masks, ``segmentation`` (compressed RLE with a string ``counts``).
    """
    to_dataset_id = {v: k for k, v in (dataset_id_to_contiguous_id or {}).items()}
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    rles = None
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(np.uint8)
        rles = [mask_util.encode(np.asfortranarray(m)) for m in masks]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")
    results = []
    for i, (cls, score) in enumerate(zip(instances.pred_classes.tolist(),
                                         instances.scores.tolist())):
        x0, y0, x1, y1 = boxes[i].tolist()
        entry = {
            "image_id": int(image_id),
            "category_id": int(to_dataset_id.get(cls, cls)),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5),
        }
        if rles is not None:
            entry["segmentation"] = rles[i]
        results.append(entry)
    return results


def write_coco_json(results: List[Dict[str, Any]], path: str) -> str:
    """Write COCO results to ``path`` (folders created) and return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)
    return path
