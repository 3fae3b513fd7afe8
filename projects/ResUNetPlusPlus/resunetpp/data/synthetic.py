"""A deterministic, polyp-like synthetic set in the Kvasir-SEG layout, for tests and the quickstart.

Each image is endoscopy-like: a textured reddish tissue background (low-frequency shading, fine
grain, dark vessels, a dark vignette), one or two irregular, dome-shaded polyps of a slightly
different hue, and specular highlights on both polyp and tissue. Masks mark the polyps only
(highlights do not change them). Images and masks are written as JPEG, like Kvasir-SEG, so the
masks are near 0/255 rather than exact and exercise the thresholding path.

Every image comes from its own ``numpy`` generator seeded by ``(seed, index)``: the set is the
same on every run and machine (bit-identical given the same JPEG library).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
from PIL import Image

__all__ = ["SyntheticPolypSpec", "generate_synthetic_polyps", "render_polyp_image"]


@dataclass(frozen=True)
class SyntheticPolypSpec:
    """What to generate: how many images, their size and the seed."""

    num_images: int = 160
    height: int = 160
    width: int = 192
    seed: int = 0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1] varying over about ``cells`` cells across the image."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _blob_mask(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, tuple]:
    """An irregular star-convex blob: radius(theta) = r (1 + sum of random harmonics)."""
    scale = min(height, width)
    radius = rng.uniform(0.14, 0.30) * scale
    cy = rng.uniform(0.25, 0.75) * height
    cx = rng.uniform(0.25, 0.75) * width
    theta = np.linspace(0.0, 2.0 * np.pi, 90, endpoint=False)
    wobble = np.ones_like(theta)
    for harmonic in range(2, 6):
        wobble += rng.uniform(0.0, 0.10) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.75, 1.25)
    xs = cx + radius * wobble * np.cos(theta) * stretch
    ys = cy + radius * wobble * np.sin(theta) / stretch
    polygon = np.stack([xs, ys], axis=1).round().astype(np.int32)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    return mask, (cy, cx, radius)


def _add_vessels(rng: np.random.Generator, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    layer = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(3, 7)):
        point = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        angle = rng.uniform(0, 2 * np.pi)
        points = [point.copy()]
        for _ in range(rng.integers(8, 20)):
            angle += rng.normal(0.0, 0.5)
            point = point + 6.0 * np.array([np.cos(angle), np.sin(angle)])
            points.append(point.copy())
        cv2.polylines(layer, [np.array(points).round().astype(np.int32)], False,
                      float(rng.uniform(0.3, 0.7)), thickness=int(rng.integers(1, 3)))
    layer = cv2.GaussianBlur(layer, (0, 0), 1.0)
    image *= (1.0 - 0.35 * layer[..., None] * np.array([0.4, 1.0, 0.9], np.float32))


def _add_highlights(rng: np.random.Generator, image: np.ndarray, near: tuple, count: int) -> None:
    height, width = image.shape[:2]
    layer = np.zeros((height, width), np.float32)
    cy, cx, radius = near
    for index in range(count):
        if index % 2 == 0:  # on the polyp's upper side, where the light hits the dome
            y = cy - rng.uniform(0.0, 0.6) * radius
            x = cx + rng.uniform(-0.6, 0.6) * radius
        else:
            y, x = rng.uniform(0, height), rng.uniform(0, width)
        axes = (int(rng.integers(1, 5)), int(rng.integers(1, 3)))
        cv2.ellipse(layer, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.8)[..., None]
    image[:] = image * (1.0 - layer) + 255.0 * layer


def render_polyp_image(rng: np.random.Generator, height: int, width: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask.

    Returns:
        ``(image, mask)``: (H, W, 3) uint8 RGB and (H, W) uint8 with values 0/1.
    """
    base = np.array([rng.uniform(175, 215), rng.uniform(75, 105), rng.uniform(65, 95)],
                    np.float32)
    shading = 1.0 + 0.18 * _smooth_noise(rng, height, width, 3)
    grain = 1.0 + 0.06 * _smooth_noise(rng, height, width, max(height, width) // 6)
    image = base * (shading * grain)[..., None]
    _add_vessels(rng, image)

    mask = np.zeros((height, width), np.uint8)
    first = None
    for _ in range(1 if rng.uniform() < 0.75 else 2):
        blob, where = _blob_mask(rng, height, width)
        first = first or where
        mask |= blob
        cy, cx, radius = where
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        distance = np.sqrt(((yy - cy + 0.3 * radius) ** 2 + (xx - cx) ** 2)) / (1.4 * radius)
        dome = np.clip(1.0 - distance ** 2, 0.0, 1.0)
        tint = np.array([rng.uniform(1.00, 1.12), rng.uniform(1.15, 1.35),
                         rng.uniform(1.00, 1.20)], np.float32)
        texture = 1.0 + 0.08 * _smooth_noise(rng, height, width, max(height, width) // 8)
        polyp = image * tint * (0.85 + 0.3 * dome[..., None]) * texture[..., None]
        alpha = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 1.2)[..., None]
        image = image * (1.0 - alpha) + polyp * alpha

    _add_highlights(rng, image, first, int(rng.integers(3, 8)))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radial = np.sqrt(((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2)
    image *= np.clip(1.15 - 1.1 * radial ** 2 * 2.0, 0.35, 1.0)[..., None]
    noise = rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)
    return np.clip(image + noise, 0, 255).astype(np.uint8), mask


def generate_synthetic_polyps(root: str, spec: SyntheticPolypSpec = SyntheticPolypSpec()) -> str:
    """Write ``spec.num_images`` image/mask pairs to ``root/images`` and ``root/masks`` (JPEG).

    Existing files with the same names are overwritten; the result depends on ``spec`` only.

    Returns:
        ``root``.
    """
    if spec.num_images < 1 or spec.height < 32 or spec.width < 32:
        raise ValueError(f"SyntheticPolypSpec {spec} is invalid: at least one image of 32x32.")
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for index in range(spec.num_images):
        rng = np.random.default_rng([spec.seed, index])
        image, mask = render_polyp_image(rng, spec.height, spec.width)
        stem = f"polyp_{index:04d}"
        Image.fromarray(image).save(os.path.join(root, "images", stem + ".jpg"), quality=92)
        Image.fromarray(mask * 255).save(os.path.join(root, "masks", stem + ".jpg"), quality=92)
    return root
