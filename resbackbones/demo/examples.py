"""Example images for the demo page, generated on first use into a cache folder.

Why generated: the repository ships no binary images, and the quickstart model is trained on
coloured shapes, so drawn shapes are what it can recognise. When the config's test dataset is
registered and on disk, its first images are offered too (copied, so the page never serves a
path of the dataset). One grayscale and one transparent example show that such uploads work.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["default_examples_dir", "make_example_images"]

logger = logging.getLogger(__name__)


def default_examples_dir() -> str:
    """A per-user cache folder under the system temp dir (which Gradio may serve files from)."""
    return os.path.join(tempfile.gettempdir(), f"resbackbones-demo-examples-{os.getuid()}")


def _shapes_image(seed: int, size: int = 320) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    gradient = np.linspace(-30, 30, size)[None, :, None]
    background = np.clip(base + noise + gradient, 0, 255).astype(np.uint8)
    image = Image.fromarray(background).filter(ImageFilter.GaussianBlur(1.0))
    draw = ImageDraw.Draw(image)
    cells = [(x, y) for x in range(3) for y in range(3)]
    for index in rng.permutation(len(cells))[: int(rng.integers(3, 6))]:
        cx = (cells[index][0] + 0.5) * size / 3 + rng.uniform(-10, 10)
        cy = (cells[index][1] + 0.5) * size / 3 + rng.uniform(-10, 10)
        radius = rng.uniform(size / 14, size / 7.5)
        colour = tuple(int(v) for v in (255 - base + rng.integers(-40, 40, size=3)) % 256)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        elif kind == 1:
            angle = rng.uniform(0, 2 * np.pi)
            points = [(cx + radius * np.cos(angle + k * 2 * np.pi / 3),
                       cy + radius * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
            draw.polygon(points, fill=colour)
        else:
            draw.rectangle([cx - radius, cy - 0.7 * radius, cx + radius, cy + 0.7 * radius],
                           fill=colour)
    return image


def _dataset_images(dataset_name: Optional[str], count: int) -> List[str]:
    if not dataset_name:
        return []
    from detectron2.data import DatasetCatalog

    if dataset_name not in DatasetCatalog.list():
        return []
    try:
        records = DatasetCatalog.get(dataset_name)
    except Exception as err:  # not generated or not downloaded: the synthetic examples suffice
        logger.info(f"No example images from {dataset_name!r}: {err}")
        return []
    files = [r["file_name"] for r in records[:count] if os.path.isfile(r.get("file_name", ""))]
    return files


def make_example_images(
    output_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
    num_dataset_images: int = 2,
) -> List[str]:
    """Write the example images (once) and return their paths.

    Args:
        output_dir: cache folder (default :func:`default_examples_dir`).
        dataset_name: a registered dataset whose first images are copied as extra examples.
        num_dataset_images: how many dataset images to copy.

    Returns:
        Paths of PNG files in ``output_dir``: dataset images first, then three generated
        shapes images (one of them grayscale) and one with a transparent background.
    """
    output_dir = output_dir or default_examples_dir()
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for index, source in enumerate(_dataset_images(dataset_name, num_dataset_images)):
        target = os.path.join(output_dir, f"{dataset_name}_{index}{os.path.splitext(source)[1]}")
        shutil.copyfile(source, target)  # every time: the dataset may have been regenerated
        paths.append(target)
    generated = {
        "shapes_1.png": lambda: _shapes_image(1),
        "shapes_2.png": lambda: _shapes_image(2),
        "shapes_grayscale.png": lambda: _shapes_image(3).convert("L"),
        "shapes_transparent.png": lambda: _transparent(_shapes_image(4)),
    }
    for filename, make in generated.items():
        path = os.path.join(output_dir, filename)
        if not os.path.isfile(path):
            tmp = path + f".{os.getpid()}.tmp"
            make().save(tmp, format="PNG")
            os.replace(tmp, path)  # atomic: two servers starting at once never see half a file
        paths.append(path)
    return paths


def _transparent(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[:, : rgba.size[0] // 4] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return rgba
