"""Check a segmentation data set before training, and report every problem with examples.

Kinds of problem (each counted, with the first files as examples):

* ``image_without_mask`` / ``mask_without_image``: a file whose stem has no partner.
* ``unreadable``: an image or mask that does not decode (truncated, not an image).
* ``size_mismatch``: image and mask of different width/height.
* ``non_binary_mask``: a binary-layout mask that is not (nearly) 0/255: more than
  :data:`MAX_GRAY_FRACTION` of its pixels between 32 and 223 (a photo or a soft mask), or all
  values below 128 while some are non-zero (0/1 masks, which would read as empty).
* ``bad_mask_values``: a class-index mask with values outside ``[0, K)`` and not 255.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
from PIL import Image

__all__ = ["PROBLEM_KINDS", "DatasetValidationError", "ValidationReport", "validate_records"]

PROBLEM_KINDS = ("image_without_mask", "mask_without_image", "unreadable", "size_mismatch",
                 "non_binary_mask", "bad_mask_values")
# JPEG edges leave some grey pixels on a 0/255 mask; more than this fraction is not JPEG noise.
MAX_GRAY_FRACTION = 0.05
_GRAY_LOW, _GRAY_HIGH = 32, 223


class DatasetValidationError(ValueError):
    """The data set has problems; the message is the full report."""


@dataclass
class ValidationReport:
    """Problems found in one data set: kind -> list of (file, detail)."""

    name: str
    checked: int = 0
    problems: Dict[str, List[Tuple[str, str]]] = field(
        default_factory=lambda: OrderedDict((kind, []) for kind in PROBLEM_KINDS))

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, kind: str, path: str, detail: str = "") -> None:
        self.problems[kind].append((path, detail))

    def bad_files(self) -> Set[str]:
        """Image/mask paths that take part in a problem (used to skip them)."""
        return {path for found in self.problems.values() for path, _ in found}

    def summary(self, examples: int = 3) -> str:
        """One line per kind with its count and the first ``examples`` files."""
        lines = [f"Data set {self.name!r}: {self.checked} image/mask pairs checked, "
                 f"{sum(map(len, self.problems.values()))} problems."]
        for kind, found in self.problems.items():
            if found:
                shown = "; ".join(f"{path} ({detail})" if detail else path
                                  for path, detail in found[:examples])
                more = f" (+{len(found) - examples} more)" if len(found) > examples else ""
                lines.append(f"  {kind}: {len(found)}, e.g. {shown}{more}")
        return "\n".join(lines)


def _decode(path: str) -> Optional[Image.Image]:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Exception:  # PIL raises many types for broken files
        return None


def _check_mask_values(mask: Image.Image, mask_format: str, num_classes: int) -> str:
    if mask_format == "binary":
        gray = np.asarray(mask.convert("L"))
        between = float(((gray > _GRAY_LOW) & (gray < _GRAY_HIGH)).mean())
        if between > MAX_GRAY_FRACTION:
            return (f"{between:.0%} of pixels are grey (32..223); a binary mask has values near "
                    "0 and 255")
        if 0 < int(gray.max()) < 128:
            return (f"values 0..{int(gray.max())}, all below the threshold 128: 0/1 masks? "
                    "save them as 0/255")
        return ""
    values = np.unique(np.asarray(mask))
    bad = [int(v) for v in values if v >= num_classes and v != 255]
    return f"values {bad[:5]} outside [0, {num_classes}) and not 255" if bad else ""


def validate_records(name: str, records: Iterable[Dict], images_without_mask: Iterable[str] = (),
                     masks_without_image: Iterable[str] = (), num_classes: int = 2
                     ) -> ValidationReport:
    """Decode every image and mask of ``records`` and check them.

    Args:
        name: data-set name, for the report.
        records: Detectron2 dicts with ``file_name``, ``sem_seg_file_name`` and ``mask_format``.
        images_without_mask: unpaired images found when the data set was scanned.
        masks_without_image: unpaired masks found when the data set was scanned.
        num_classes: classes incl. background (checks class-index masks).

    Returns:
        The report (``report.ok`` when nothing was found).
    """
    report = ValidationReport(name)
    for path in images_without_mask:
        report.add("image_without_mask", path)
    for path in masks_without_image:
        report.add("mask_without_image", path)
    for record in records:
        report.checked += 1
        image_path, mask_path = record["file_name"], record["sem_seg_file_name"]
        image, mask = _decode(image_path), _decode(mask_path)
        for path, decoded in ((image_path, image), (mask_path, mask)):
            if decoded is None:
                report.add("unreadable", path)
        if image is None or mask is None:
            continue
        if image.size != mask.size:
            report.add("size_mismatch", image_path, f"image {image.size[0]}x{image.size[1]}, "
                                                    f"mask {mask.size[0]}x{mask.size[1]}")
        problem = _check_mask_values(mask, record.get("mask_format", "binary"), num_classes)
        if problem:
            kind = "non_binary_mask" if record.get("mask_format", "binary") == "binary" \
                else "bad_mask_values"
            report.add(kind, mask_path, problem)
    return report


def validate_registered(name: str, num_classes: int = 2) -> ValidationReport:
    """Validate a data set registered by ``register_segmentation_dataset``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    metadata = MetadataCatalog.get(name)
    return validate_records(name, DatasetCatalog.get(name),
                            metadata.get("images_without_mask", []),
                            metadata.get("masks_without_image", []), num_classes)
