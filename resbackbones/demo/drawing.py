"""Draw detections (boxes, labels, instance masks) with Detectron2's ``Visualizer``.

Why not ``Visualizer.draw_instance_predictions``: it cannot hide boxes, masks or labels
separately, which the demo page offers, and its colours for a class change from call to call
when the metadata has no ``thing_colors``. ``overlay_instances`` is the public layer underneath.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap

from resbackbones._requirements import require_extra

__all__ = ["DRAW_PARTS", "draw_detections", "label_text"]

# What the user can switch on and off; all are drawn by default.
DRAW_PARTS = ("boxes", "masks", "labels")

_PALETTE = colormap(rgb=True, maximum=1)


def label_text(class_name: str, score: float) -> str:
    """The label drawn next to a box and shown in tables, e.g. ``"circle 87%"``."""
    return f"{class_name} {score * 100:.0f}%"


def draw_detections(
    image: np.ndarray,
    instances: Instances,
    class_names: Sequence[str],
    parts: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Draw ``instances`` on an RGB image.

    Args:
        image: RGB ``uint8`` array (H, W, 3); instances are in its pixel coordinates.
        instances: ``Instances`` on the CPU with ``pred_boxes``, ``scores``, ``pred_classes`` and
            optionally ``pred_masks``.
        class_names: name of each contiguous class id (colours are fixed per class id).
        parts: which of :data:`DRAW_PARTS` to draw (``None``: all).

    Returns:
        A new RGB ``uint8`` array of the same size as ``image``.

    Raises:
        MissingExtraError: OpenCV or matplotlib (the ``demo`` extra) is not installed; Detectron2's
            ``Visualizer`` imports both.
    """
    for module in ("cv2", "matplotlib"):
        require_extra("demo", module, "Drawing detections")
    from detectron2.utils.visualizer import ColorMode, Visualizer

    parts = DRAW_PARTS if parts is None else tuple(parts)
    unknown = set(parts) - set(DRAW_PARTS)
    if unknown:
        raise ValueError(f"Unknown parts to draw {sorted(unknown)}; valid: {list(DRAW_PARTS)}.")
    visualizer = Visualizer(image, metadata=None, scale=1.0, instance_mode=ColorMode.IMAGE)
    if len(instances) == 0:
        return visualizer.output.get_image()
    classes: List[int] = instances.pred_classes.tolist()
    scores: List[float] = instances.scores.tolist()
    names = [class_names[c] if 0 <= c < len(class_names) else f"class {c}" for c in classes]
    boxes = instances.pred_boxes.tensor.numpy() if "boxes" in parts else None
    masks = None
    if "masks" in parts and instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(np.uint8)
    labels = [label_text(n, s) for n, s in zip(names, scores)] if "labels" in parts else None
    if boxes is None and masks is None and labels is None:
        return visualizer.output.get_image()
    colors = [tuple(_PALETTE[c % len(_PALETTE)]) for c in classes]
    if boxes is None and masks is None:
        # Labels alone: overlay_instances needs boxes or masks to place them; put each label at
        # its box's top-left corner instead.
        corners = instances.pred_boxes.tensor[:, :2].tolist()
        for text, color, (x0, y0) in zip(labels, colors, corners):
            visualizer.draw_text(text, (x0, y0), color=color, horizontal_alignment="left")
        return visualizer.output.get_image()
    output = visualizer.overlay_instances(
        boxes=boxes, masks=masks, labels=labels, assigned_colors=colors, alpha=0.5
    )
    return output.get_image()
