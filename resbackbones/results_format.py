"""The one detection results format that every inference path writes.

The CLI demo (a Detectron2 model, ``python -m resbackbones demo``), the web page's JSON
download, the ONNX runner's CLI (``demo --onnx``) and any later backend build their records here,
so that the same detection reads the same whichever path made it. A results file is a JSON list
with one record per detection (a video: every frame's detections in one list), in the COCO
results format that pycocotools' ``COCO.loadRes`` and Detectron2's ``COCOEvaluator`` read, plus
the class name::

    {"image_id": 397133,
     "category_id": 2,
     "class_name": "bicycle",
     "bbox": [x, y, width, height],
     "score": 0.91234,
     "segmentation": {"size": [height, width], "counts": "..."}}

* ``image_id``: an int for an all-digit file stem (COCO's ``000000397133.jpg`` is 397133), so a
  data set's images evaluate against its annotations as they are; else the file stem (a string,
  e.g. ``"street"`` for ``street.jpg``), or the name a caller gives; a video's frame index.
* ``category_id``: the data set's category id when the model's metadata maps one (Detectron2's
  ``thing_dataset_id_to_contiguous_id``, which ``COCOEvaluator`` inverts the same way), else the
  contiguous class index the model predicts.
* ``class_name``: the name of that class; ``class_<index>`` when no names are known.
* ``bbox``: x, y, width, height in the pixels of the input image (its stored size after EXIF
  orientation), whatever size the model ran at; 2 decimals.
* ``score``: 5 decimals.
* ``segmentation``: models with masks only: the instance mask in the input's pixels as COCO
  compressed RLE (``counts`` a string, as ``COCOEvaluator`` writes it).

Standard library and numpy only (pycocotools' RLE encoder is imported when a mask is encoded), so
that the Detectron2- and PyTorch-free ONNX runner writes it too (setup.cfg's runner contract).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    "ImageId",
    "RECORD_KEYS",
    "check_dataset_id_mapping",
    "class_name",
    "detection_records",
    "encode_mask",
    "generic_class_names",
    "image_id_from_name",
    "write_records",
]

ImageId = Union[int, str]

# The keys of every record, in order; "segmentation" only for models that predict masks.
RECORD_KEYS = ("image_id", "category_id", "class_name", "bbox", "score", "segmentation")


def generic_class_names(num_classes: int) -> List[str]:
    """``class_0 .. class_<n-1>``: the names of a model whose class names are not known."""
    return [f"class_{index}" for index in range(num_classes)]


def class_name(class_names: Sequence[str], index: int) -> str:
    """The name of contiguous class ``index``, or ``class_<index>`` outside ``class_names``."""
    return class_names[index] if 0 <= index < len(class_names) else f"class_{index}"


def image_id_from_name(name: str) -> ImageId:
    """The ``image_id`` of a file: the int of an all-digit stem, else the stem itself.

    COCO names its images by id (``000000397133.jpg``), so results on a data set's own files
    match its annotations; any other name keeps its stem, so that every record says which image
    it is about (a running index would silently pair results with the wrong annotations).
    """
    stem = os.path.splitext(os.path.basename(name))[0]
    return int(stem) if stem.isdigit() else stem


def check_dataset_id_mapping(mapping: Mapping[Any, Any], num_classes: int,
                             source: str = "the mapping") -> Dict[int, int]:
    """Validate a data set id → contiguous id mapping (JSON's string keys accepted).

    Returns:
        The mapping with int keys and values.

    Raises:
        ValueError: a key or value is not an integer, or the values are not each contiguous id
            ``0 .. num_classes - 1`` exactly once (a class without its data set id would be
            written under its contiguous index, which may be another class's id).
    """
    try:
        parsed = {int(key): int(value) for key, value in mapping.items()}
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{source}: thing_dataset_id_to_contiguous_id must map integer data set "
                         f"ids to integer class indices, got {mapping!r} ({error}).") from None
    if sorted(parsed.values()) != list(range(num_classes)):
        raise ValueError(
            f"{source}: thing_dataset_id_to_contiguous_id maps to class indices "
            f"{sorted(parsed.values())}, but the model has {num_classes} classes: give each of "
            f"0..{num_classes - 1} exactly one data set id (or drop the mapping to write the "
            "contiguous indices).")
    return parsed


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """A boolean (H, W) mask as COCO compressed RLE with a string ``counts`` (JSON-ready)."""
    import pycocotools.mask as mask_util

    if mask.ndim != 2:
        raise ValueError(f"A mask must be 2-D (height, width), got shape {mask.shape}.")
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detection_records(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    image_id: ImageId,
    masks: Optional[Iterable[np.ndarray]] = None,
    dataset_id_to_contiguous_id: Optional[Mapping[int, int]] = None,
) -> List[Dict[str, Any]]:
    """The records of one image's detections (see the module docstring for the format).

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1`` in the input image's pixels.
        scores: (N,) confidences.
        classes: (N,) contiguous class indices.
        class_names: the name of each contiguous class index.
        image_id: written in every record (see :func:`image_id_from_name`).
        masks: the (H, W) boolean mask of each detection in the input's pixels, or ``None`` for
            a box-only model; an array or any iterable yielding one mask at a time (so that a
            large image's masks never all exist at once).
        dataset_id_to_contiguous_id: the data set's ids (Detectron2 metadata); ``None`` writes
            the contiguous indices.

    Returns:
        One dict per detection, in the order given.

    Raises:
        ValueError: the inputs disagree in length, or ``masks`` yields a mask that is not 2-D.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes: "
                         "one of each per detection.")
    to_dataset_id = {int(v): int(k) for k, v in (dataset_id_to_contiguous_id or {}).items()}
    records = []
    for (x0, y0, x1, y1), score, index in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        records.append({
            "image_id": image_id,
            "category_id": to_dataset_id.get(index, index),
            "class_name": class_name(class_names, index),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(score, 5),
        })
    if masks is not None:
        count = 0
        for count, mask in enumerate(masks, start=1):
            if count > len(records):
                raise ValueError(f"More masks than the {len(records)} detections.")
            records[count - 1]["segmentation"] = encode_mask(np.asarray(mask))
        if count != len(records):
            raise ValueError(f"{count} masks for {len(records)} detections.")
    return records


def write_records(records: List[Dict[str, Any]], path: str) -> str:
    """Write records as a JSON list to ``path`` (folders created); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(records, file)
    return path
