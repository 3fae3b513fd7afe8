"""A deterministic, COCO-format instance-segmentation set of coloured shapes.

Why: every test, the quickstart and a user without COCO need a dataset that is small, always
available offline and hard enough to show whether a detector learns (several classes, rotated
shapes, textured backgrounds, noise). Shapes are placed without overlap so that each polygon is
exactly the visible region: masks are correct by construction and need no occlusion logic.

Layout written under ``root`` (Detectron2's ``register_coco_instances`` reads it as is)::

    root/manifest.json                  parameters and generator version (for idempotency)
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/train/000000.png ...
    root/val/000000.png ...
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "SyntheticSpec",
    "generate_synthetic_coco",
    "synthetic_paths",
]

logger = logging.getLogger(__name__)

# Category ids are 1-based (COCO convention; id 0 breaks Detectron2's mapping, detectron2#5335).
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "triangle", "rectangle")
# Bump when the drawing changes, so that an existing dataset is regenerated instead of reused.
GENERATOR_VERSION = 1
_SPLITS = ("train", "val")
_CIRCLE_VERTICES = 48
# Present while a run writes files: an interrupted run is still recognised as ours and redone.
_GENERATING_MARKER = ".generating"


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters that fully determine the generated files.

    Attributes:
        num_train: images in the train split.
        num_val: images in the val split.
        seed: root seed; each image derives its own stream from (seed, split, index).
        height: image height in pixels.
        width: image width in pixels.
        max_instances: at most this many shapes per image (at least one).
    """

    num_train: int = 64
    num_val: int = 32
    seed: int = 0
    height: int = 224
    width: int = 320
    max_instances: int = 4

    def manifest(self) -> Dict[str, object]:
        return {"generator_version": GENERATOR_VERSION, "classes": list(SHAPE_CLASSES),
                **asdict(self)}


def synthetic_paths(root: str, split: str) -> Tuple[str, str]:
    """Return ``(json_file, image_root)`` of one split in the standard layout under ``root``."""
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> Tuple[int, ...]:
    # Shapes must stay visible: redraw until the colour is far enough from the background mean.
    for _ in range(100):
        colour = _random_colour(rng)
        if np.abs(colour - background).sum() > 180:
            break
    return tuple(int(c) for c in colour)


def _background(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """A linear gradient between two random colours; returns (image float32 HxWx3, mean colour)."""
    start, end = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs / max(width - 1, 1) * math.cos(angle) + ys / max(height - 1, 1) * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = start[None, None] * (1 - t[..., None]) + end[None, None] * t[..., None]
    return image, (start + end) / 2


def _shape_polygon(rng: np.random.Generator, category: str, cx: float, cy: float,
                   radius: float) -> List[Tuple[float, float]]:
    """Vertices (x, y) of a shape inscribed in the circle (cx, cy, radius), randomly rotated."""
    rotation = rng.uniform(0, 2 * math.pi)
    if category == "circle":
        angles = [2 * math.pi * k / _CIRCLE_VERTICES for k in range(_CIRCLE_VERTICES)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]
    if category == "triangle":
        angles = [rotation + 2 * math.pi * k / 3 for k in range(3)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]
    if category == "rectangle":
        # Aspect ratio between 1:2 and 1:1; the corners lie on the circle.
        half_diagonal_angle = math.atan(rng.uniform(0.5, 1.0))
        corners = [half_diagonal_angle, math.pi - half_diagonal_angle,
                   math.pi + half_diagonal_angle, 2 * math.pi - half_diagonal_angle]
        return [(cx + radius * math.cos(rotation + a), cy + radius * math.sin(rotation + a))
                for a in corners]
    raise ValueError(f"Unknown shape class {category!r}; valid: {', '.join(SHAPE_CLASSES)}")


def _polygon_area(points: Sequence[Tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _place_circles(rng: np.random.Generator,
                   spec: SyntheticSpec) -> List[Tuple[float, float, float]]:
    """Non-overlapping circles (cx, cy, r) fully inside the image, at least one."""
    short_side = min(spec.height, spec.width)
    wanted = int(rng.integers(1, spec.max_instances + 1))
    circles: List[Tuple[float, float, float]] = []
    for _ in range(wanted * 30):
        if len(circles) == wanted:
            break
        radius = rng.uniform(0.08, 0.25) * short_side
        cx = rng.uniform(radius + 1, spec.width - radius - 1)
        cy = rng.uniform(radius + 1, spec.height - radius - 1)
        # A 2 px gap keeps anti-aliasing-free polygons from touching.
        if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in circles):
            circles.append((cx, cy, radius))
    return circles


def _make_image(spec: SyntheticSpec, split: str, index: int
                ) -> Tuple[np.ndarray, List[Tuple[int, List[Tuple[float, float]]]]]:
    """Draw one image; returns (uint8 HxWx3 RGB, [(category_id, polygon), ...])."""
    split_id = _SPLITS.index(split)
    rng = np.random.default_rng([spec.seed, split_id, index])
    background, mean_colour = _background(rng, spec.height, spec.width)
    canvas = Image.fromarray(background.round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    shapes = []
    for cx, cy, radius in _place_circles(rng, spec):
        category_index = int(rng.integers(0, len(SHAPE_CLASSES)))
        polygon = _shape_polygon(rng, SHAPE_CLASSES[category_index], cx, cy, radius)
        # Round vertices once: the drawn pixels and the annotation use the very same polygon.
        polygon = [(round(x, 2), round(y, 2)) for x, y in polygon]
        draw.polygon(polygon, fill=_contrasting_colour(rng, mean_colour))
        shapes.append((category_index + 1, polygon))
    image = np.asarray(canvas, dtype=np.float32)
    image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8), shapes


def _split_dict(spec: SyntheticSpec, split: str, image_root: str) -> Dict[str, object]:
    images, annotations = [], []
    count = spec.num_train if split == "train" else spec.num_val
    for index in range(count):
        pixels, shapes = _make_image(spec, split, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels, mode="RGB").save(os.path.join(image_root, file_name))
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name,
                       "height": spec.height, "width": spec.width})
        for category_id, polygon in shapes:
            xs = [p[0] for p in polygon]
            ys = [p[1] for p in polygon]
            x0, y0 = min(xs), min(ys)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": [[coordinate for point in polygon for coordinate in point]],
                "area": round(_polygon_area(polygon), 2),
                "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2),
                         round(max(ys) - y0, 2)],
                "iscrowd": 0,
            })
    return {
        "info": {"description": "resbackbones synthetic shapes", **spec.manifest()},
        "licenses": [],
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(SHAPE_CLASSES)],
        "images": images,
        "annotations": annotations,
    }


def _read_manifest(root: str) -> Optional[dict]:
    """``root/manifest.json`` as written by :func:`generate_synthetic_coco`, or None."""
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "generator_version" in manifest else None


def _is_complete(root: str, spec: SyntheticSpec) -> bool:
    if _read_manifest(root) != spec.manifest():
        return False
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        json_file, image_root = synthetic_paths(root, split)
        if not os.path.isfile(json_file):
            return False
        if not all(os.path.isfile(os.path.join(image_root, f"{i:06d}.png")) for i in range(count)):
            return False
    return True


def _written_by_us(root: str) -> bool:
    """Whether ``root`` holds this generator's files (a manifest or an interrupted run's marker)."""
    return (os.path.isfile(os.path.join(root, _GENERATING_MARKER))
            or _read_manifest(root) is not None)


def _refuse_foreign_files(root: str) -> None:
    """Regenerating deletes PNGs and rewrites annotation files: never in somebody's own data set."""
    if _written_by_us(root):
        return
    for split in _SPLITS:
        json_file, image_root = synthetic_paths(root, split)
        pngs = (sorted(f for f in os.listdir(image_root) if f.endswith(".png"))
                if os.path.isdir(image_root) else [])
        if os.path.exists(json_file) or pngs:
            found = json_file if os.path.exists(json_file) else os.path.join(image_root, pngs[0])
            raise FileExistsError(
                f"{root} holds files that the synthetic data set generator did not write "
                f"({found}) and no manifest.json of it; regenerating would overwrite them. "
                f"Choose an empty or new directory for the synthetic data (e.g. "
                f"datasets/synthetic_shapes), or move those files away.")


def generate_synthetic_coco(root: str, spec: SyntheticSpec = SyntheticSpec(),
                            force: bool = False) -> bool:
    """Write the synthetic dataset under ``root`` unless it is already there with ``spec``.

    The same ``spec`` always gives byte-identical JSON files and identical pixels.

    Args:
        root: output directory (created if needed).
        spec: what to generate.
        force: regenerate even when ``root/manifest.json`` matches ``spec``.

    Returns:
        True if files were written, False if an identical dataset already existed.
    """
    if spec.num_train < 1 or spec.num_val < 1 or spec.max_instances < 1:
        raise ValueError(f"num_train, num_val and max_instances must be >= 1, got {spec}")
    if min(spec.height, spec.width) < 32:
        raise ValueError(f"Image size {spec.height}x{spec.width} is too small; use >= 32 px.")
    if not force and _is_complete(root, spec):
        logger.info(f"Synthetic dataset at {root} already matches {spec}; not regenerating.")
        return False
    _refuse_foreign_files(root)
    logger.info(f"Generating synthetic dataset at {root}: {spec}")
    os.makedirs(root, exist_ok=True)
    marker_path = os.path.join(root, _GENERATING_MARKER)
    with open(marker_path, "w") as f:
        f.write("resbackbones synthetic data set being written\n")
    manifest_path = os.path.join(root, "manifest.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # an interrupted run must not look complete
    for split in _SPLITS:
        json_file, image_root = synthetic_paths(root, split)
        os.makedirs(image_root, exist_ok=True)
        os.makedirs(os.path.dirname(json_file), exist_ok=True)
        for stale in os.listdir(image_root):
            if stale.endswith(".png"):
                os.remove(os.path.join(image_root, stale))
        content = _split_dict(spec, split, image_root)
        with open(json_file, "w") as f:
            json.dump(content, f, sort_keys=True, separators=(",", ":"))
    with open(manifest_path, "w") as f:
        json.dump(spec.manifest(), f, indent=2, sort_keys=True)
    os.remove(marker_path)
    return True
