"""Real photos for the demo's example gallery, taken from scikit-image's bundled data.

Why scikit-image: the repository ships no photos, and these are public-domain pictures of COCO
classes (person, cup, cat, motorcycle, ...) that come inside scikit-image's wheel, so no download
happens at run time. They are in the ``demo`` extra (``pip install 'resbackbones[demo]'``);
without it the gallery shows the generated shapes only (:mod:`resbackbones.demo.examples`).
"""
from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Callable, Dict, List, Optional

import numpy as np
from PIL import Image

from resbackbones._requirements import MissingExtraError, require_extra

from .examples import default_examples_dir

__all__ = ["PHOTO_NAMES", "make_photo_examples"]

logger = logging.getLogger(__name__)


def _stereo_left(data: ModuleType) -> np.ndarray:
    return data.stereo_motorcycle()[0]  # the left view (motorcycle_left.png in the wheel)


def _loader(name: str) -> Callable[[ModuleType], np.ndarray]:
    def load(data: ModuleType) -> np.ndarray:
        return getattr(data, name)()

    return load


# File name in the gallery → function of ``skimage.data`` returning the RGB photo (what COCO
# classes it shows).
_PHOTOS: Dict[str, Callable[[ModuleType], np.ndarray]] = {
    "astronaut.jpg": _loader("astronaut"),  # person, flag
    "coffee.jpg": _loader("coffee"),  # cup, spoon, dining table
    "chelsea.jpg": _loader("chelsea"),  # cat
    "motorcycle_left.jpg": _stereo_left,  # motorcycle, and more in the background
    "rocket.jpg": _loader("rocket"),  # a launch pad: few COCO classes, a hard case
}
PHOTO_NAMES = tuple(_PHOTOS)


def make_photo_examples(output_dir: Optional[str] = None) -> List[str]:
    """Write the photos (once) as JPEG files and return their paths.

    Args:
        output_dir: cache folder (default :func:`~resbackbones.demo.examples.default_examples_dir`).

    Returns:
        Paths in ``output_dir``, in :data:`PHOTO_NAMES` order; empty when scikit-image is not
        installed (the ``demo`` extra) or its data cannot be read.
    """
    try:
        data = require_extra("demo", "skimage.data", "The demo's photo gallery")
    except MissingExtraError as error:
        logger.info(f"No photo examples: {error}")
        return []
    output_dir = output_dir or default_examples_dir()
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for filename, load in _PHOTOS.items():
        path = os.path.join(output_dir, filename)
        if not os.path.isfile(path):
            try:
                rgb = load(data)
            except Exception as error:  # a scikit-image without bundled data: skip that photo
                logger.warning(f"No photo example {filename}: scikit-image could not read it "
                               f"({type(error).__name__}: {error}).")
                continue
            tmp = path + f".{os.getpid()}.tmp"
            Image.fromarray(rgb).convert("RGB").save(tmp, format="JPEG", quality=92)
            os.replace(tmp, path)  # atomic: two servers starting at once never see half a file
        paths.append(path)
    return paths
