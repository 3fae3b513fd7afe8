"""Turn a prediction into what a user reads or downloads: filtered detections, table rows and
results JSON, in the input image's pixels.

The JSON is :mod:`resbackbones.results_format`'s (COCO results plus ``class_name``), the one the
ONNX runner writes too. A prediction on a copy that decoding downscaled (the web page) is mapped
to the input's pixels here: boxes scaled by input/copy size, each mask pasted at the input's size
from the mask head's probabilities (``pred_roi_masks``, as ``DefaultPredictor`` pastes it), one
at a time when it is encoded.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances
from PIL import Image

from resbackbones.results_format import (
    ImageId,
    class_name,
    detection_records,
    write_records,
)

__all__ = [
    "ONE_LABEL_IOU",
    "TABLE_HEADERS",
    "coco_results",
    "detection_rows",
    "filter_instances",
    "input_boxes",
    "input_masks",
    "write_coco_json",
]

# Columns of the detections table; boxes are corners in the input image's pixels.
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


def input_boxes(instances: Instances,
                input_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(N, 4) ``x0, y0, x1, y1`` boxes in the input's pixels (float64).

    Args:
        instances: predictions in the pixels of an image of ``instances.image_size``.
        input_size: (height, width) of the input, when that image is a downscaled copy of it
            (``Prediction.input_size``); ``None``: the same image.
    """
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64).reshape(-1, 4)
    height, width = instances.image_size
    if input_size is not None and tuple(input_size) != (height, width):
        boxes[:, 0::2] *= input_size[1] / width
        boxes[:, 1::2] *= input_size[0] / height
    return boxes


def input_masks(instances: Instances,
                input_size: Optional[Tuple[int, int]] = None) -> Iterator[np.ndarray]:
    """Each instance's boolean mask in the input's pixels, one at a time.

    For a prediction on a downscaled copy, each mask is pasted at ``input_size`` from the mask
    head's probabilities (``pred_roi_masks``) in the box's input pixels, as Detectron2's
    postprocess pastes it for ``DefaultPredictor``; without them (instances made elsewhere) the
    copy's mask is resized bilinearly and thresholded at 0.5. The full-size masks never exist
    all at once (a 50-megapixel upload with 100 detections would be 5 GB of them).
    """
    height, width = instances.image_size
    if input_size is None or tuple(input_size) == (height, width):
        yield from instances.pred_masks.numpy().astype(bool)
        return
    output_size = (int(input_size[0]), int(input_size[1]))
    if instances.has("pred_roi_masks"):
        boxes = torch.from_numpy(input_boxes(instances, input_size).astype(np.float32))
        for index in range(len(instances)):
            pasted = paste_masks_in_image(instances.pred_roi_masks[index:index + 1, 0],
                                          Boxes(boxes[index:index + 1]), output_size)
            yield pasted[0].numpy()
        return
    for mask in instances.pred_masks.numpy():
        pixels = Image.fromarray(mask.astype(np.uint8) * 255)
        yield np.asarray(pixels.resize(output_size[::-1], Image.BILINEAR)) >= 128


def detection_rows(instances: Instances, class_names: Sequence[str],
                   input_size: Optional[Tuple[int, int]] = None) -> List[List[Any]]:
    """One row per detection: class name, score (3 decimals), x0, y0, x1, y1 (1 decimal), in
    the input's pixels (``input_size``: see :func:`input_boxes`)."""
    rows = []
    boxes = input_boxes(instances, input_size).tolist()
    for cls, score, box in zip(instances.pred_classes.tolist(), instances.scores.tolist(), boxes):
        rows.append([class_name(class_names, cls), round(score, 3)] + [round(v, 1) for v in box])
    return rows


def coco_results(
    instances: Instances,
    image_id: ImageId = 0,
    dataset_id_to_contiguous_id: Optional[Mapping[int, int]] = None,
    class_names: Optional[Sequence[str]] = None,
    input_size: Optional[Tuple[int, int]] = None,
) -> List[Dict[str, Any]]:
    """Detections as :mod:`resbackbones.results_format` records (COCO results plus
    ``class_name``, what ``COCO.loadRes`` reads), in the input's pixels.

    Args:
        instances: predictions on the CPU.
        image_id: the ``image_id`` written in every entry (``results_format.image_id_from_name``
            of the file).
        dataset_id_to_contiguous_id: the dataset's category id mapping (Detectron2 metadata
            ``thing_dataset_id_to_contiguous_id``); when given, category ids are written as the
            dataset's ids, as ``COCOEvaluator`` does; otherwise the contiguous ids are written.
        class_names: the name of each contiguous class id (default: ``class_<i>``).
        input_size: (height, width) of the input when the instances are on a downscaled copy
            of it (``Prediction.input_size``); boxes and masks are mapped to it.

    Returns:
        A list of dicts with ``image_id``, ``category_id``, ``class_name``, ``bbox``
        (x, y, w, h), ``score`` and, when the model predicts masks, ``segmentation``
        (compressed RLE with a string ``counts``).
    """
    masks = input_masks(instances, input_size) if instances.has("pred_masks") else None
    return detection_records(input_boxes(instances, input_size), instances.scores.numpy(),
                             instances.pred_classes.numpy(), class_names or (), image_id, masks,
                             dataset_id_to_contiguous_id)


def write_coco_json(results: List[Dict[str, Any]], path: str) -> str:
    """Write results records to ``path`` (folders created) and return the path."""
    return write_records(results, path)
