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
from detectron2.structures import Instances

__all__ = [
    "TABLE_HEADERS",
    "coco_results",
    "detection_rows",
    "filter_instances",
    "write_coco_json",
]

# Columns of the detections table; boxes are corners in pixels of the image shown.
TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]


def filter_instances(
    instances: Instances,
    score_threshold: float = 0.0,
    class_ids: Optional[Sequence[int]] = None,
) -> Instances:
    """Keep detections with ``score >= score_threshold`` whose class is in ``class_ids``.

    Args:
        instances: predictions on the CPU.
        score_threshold: minimum score, in [0, 1].
        class_ids: contiguous class ids to keep; ``None`` or empty keeps every class (an empty
            class filter in the UI means "no filter", not "show nothing").

    Returns:
        The kept instances, in their original (score) order.
    """
    keep = instances.scores >= float(score_threshold)
    if class_ids:
        wanted = torch.as_tensor(sorted({int(c) for c in class_ids}), dtype=torch.int64)
        keep &= torch.isin(instances.pred_classes.to(torch.int64), wanted)
    return instances[keep]


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
