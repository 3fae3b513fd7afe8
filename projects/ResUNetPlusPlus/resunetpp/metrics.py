"""Dice, IoU, precision and recall from pixel counts, with the conventions for empty masks.

Conventions (an empty mask is a valid, common case in polyp frames):

* Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` are 1 when prediction and
  ground truth are both empty (nothing to find, nothing found), 0 when only one is empty.
* Precision ``TP / (TP + FP)``: with no predicted foreground it is 1 if the ground truth is
  empty too, else 0. Recall ``TP / (TP + FN)``: with no true foreground it is 1 if nothing was
  predicted, else 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

__all__ = ["PixelCounts", "confusion_matrix", "image_scores", "mean_iou", "scores_from_counts"]


@dataclass(frozen=True)
class PixelCounts:
    """True/false positives and false negatives of one class over some pixels."""

    tp: int
    fp: int
    fn: int


def confusion_matrix(prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int,
                     ignore_value: Optional[int] = 255) -> np.ndarray:
    """``matrix[g, p]``: pixels of true class ``g`` predicted as ``p``; ignored pixels dropped.

    Args:
        prediction: (H, W) integer class map.
        ground_truth: (H, W) integer class map, ``ignore_value`` where it does not count.
        num_classes: number of classes, background included.
        ignore_value: label to leave out (None: none).

    Returns:
        (num_classes, num_classes) int64 array.
    """
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} "
                         "differ in shape.")
    prediction = prediction.astype(np.int64).ravel()
    ground_truth = ground_truth.astype(np.int64).ravel()
    keep = np.ones_like(ground_truth, dtype=bool) if ignore_value is None else \
        ground_truth != ignore_value
    prediction, ground_truth = prediction[keep], ground_truth[keep]
    for name, values in (("ground truth", ground_truth), ("prediction", prediction)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has label {int(values.max())} outside [0, {num_classes}) "
                             f"(ignore value {ignore_value}).")
    return np.bincount(num_classes * ground_truth + prediction,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_counts(matrix: np.ndarray, class_id: int) -> PixelCounts:
    """TP, FP, FN of ``class_id`` from a confusion matrix (rows truth, columns prediction)."""
    tp = int(matrix[class_id, class_id])
    return PixelCounts(tp=tp, fp=int(matrix[:, class_id].sum()) - tp,
                       fn=int(matrix[class_id, :].sum()) - tp)


def _ratio(numerator: float, denominator: float, when_empty: float) -> float:
    return float(numerator) / denominator if denominator else when_empty


def scores_from_counts(counts: PixelCounts) -> Dict[str, float]:
    """Dice, IoU, precision and recall of one class (see the module docstring for 0/0)."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
    }


def image_scores(matrix: np.ndarray) -> Dict[str, float]:
    """Scores of one image: the foreground class (binary) or the mean over foreground classes.

    Multi-class: classes 1..K-1 that occur in the truth or the prediction are averaged; an
    image where none occurs scores 1 (all background, all correct).
    """
    num_classes = matrix.shape[0]
    present = [c for c in range(1, num_classes)
               if matrix[c, :].sum() or matrix[:, c].sum()] if num_classes > 2 else [1]
    if not present:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    per_class = [scores_from_counts(class_counts(matrix, c)) for c in present]
    return {key: float(np.mean([s[key] for s in per_class])) for key in per_class[0]}


def mean_iou(matrix: np.ndarray, classes: Optional[Iterable[int]] = None) -> float:
    """IoU averaged over the classes (background included) that occur in truth or prediction."""
    classes = range(matrix.shape[0]) if classes is None else classes
    ious = [scores_from_counts(class_counts(matrix, c))["iou"] for c in classes
            if matrix[c, :].sum() or matrix[:, c].sum()]
    return float(np.mean(ious)) if ious else 1.0
