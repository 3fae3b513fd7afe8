"""Inference for one image: the mask, its overlay, its area and the model's confidence.

Used by ``demo.py`` (the Gradio app) and usable from Python::

    predictor = SegmentationPredictor("output/resunetpp_quickstart/config.yaml",
                                      "output/resunetpp_quickstart/model_final.pth")
    overlay, info = predict_overlay(predictor, rgb_image)   # info: area, confidence
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .config import build_resunetpp_config

__all__ = ["Segmentation", "SegmentationPredictor", "overlay_mask", "predict_overlay"]

# Overlay colour of the foreground (RGB) and its opacity.
OVERLAY_COLOR = (0, 255, 120)
OVERLAY_ALPHA = 0.45


@dataclass
class Segmentation:
    """One image's prediction: per-class probabilities (K, H, W) and the class map (H, W)."""

    probabilities: np.ndarray
    classes: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """Foreground (any class but background) as a bool (H, W) array."""
        return self.classes > 0

    def confidence(self) -> float:
        """Mean probability of the predicted class over the predicted foreground pixels.

        With no foreground predicted, the mean background probability over the image: how sure
        the model is that there is nothing.
        """
        chosen = np.take_along_axis(self.probabilities, self.classes[None], axis=0)[0]
        region = self.mask if self.mask.any() else np.ones_like(self.mask)
        return float(chosen[region].mean())


class SegmentationPredictor:
    """A ResUNet++ model loaded from a config and weights, for single RGB images."""

    def __init__(self, config_file: str, weights: str, opts: Sequence[str] = (),
                 device: str = "") -> None:
        """
        Args:
            config_file: the training config (``OUTPUT_DIR/config.yaml`` of a run works).
            weights: a checkpoint (``model_final.pth``).
            opts: extra ``KEY VALUE`` overrides.
            device: "cpu", "cuda", ... ("" = CUDA when available).
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = build_resunetpp_config(config_file, ["MODEL.WEIGHTS", weights,
                                                        "MODEL.DEVICE", device, *opts])
        self.model = build_model(self.cfg).eval()
        DetectionCheckpointer(self.model).load(weights)
        self.size = tuple(int(s) for s in self.cfg.RESUNETPP.INPUT.SIZE)
        self.input_format = self.cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Segmentation:
        """Segment an (H, W, 3) uint8 RGB image (grayscale and RGBA are converted)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        if image.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 image, got dtype {image.dtype}.")
        height, width = image.shape[:2]
        if self.input_format == "BGR":
            image = image[..., ::-1]
        resized = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)),
                                 dtype=torch.float32)
        logits = self.model([{"image": tensor, "height": height, "width": width}])[0]["sem_seg"]
        probabilities = torch.softmax(logits.float(), dim=0).cpu().numpy()
        return Segmentation(probabilities, probabilities.argmax(axis=0))


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: Tuple[int, int, int] = OVERLAY_COLOR,
                 alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend ``color`` into ``image`` where ``mask`` is set and outline the mask's contour."""
    overlay = image.astype(np.float32).copy()
    overlay[mask] = (1 - alpha) * overlay[mask] + alpha * np.asarray(color, np.float32)
    overlay = overlay.clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, color, thickness=max(1, min(image.shape[:2]) // 200))
    return overlay


def predict_overlay(predictor: SegmentationPredictor, image: np.ndarray
                    ) -> Tuple[np.ndarray, Dict[str, float]]:
    """Segment ``image`` and draw the result.

    Returns:
        ``(overlay, info)``: the RGB overlay and ``{"area_pixels", "area_percent",
        "confidence"}`` (confidence as defined by :meth:`Segmentation.confidence`).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    result = predictor(image)
    mask = result.mask
    info = {"area_pixels": int(mask.sum()), "area_percent": 100.0 * float(mask.mean()),
            "confidence": result.confidence()}
    return overlay_mask(image, mask), info
