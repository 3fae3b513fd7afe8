"""A dataset mapper wrapper that skips images which turn out corrupted during training.

One truncated JPEG must not kill a multi-day, multi-GPU run (detectron2#143). Detectron2's
``MapDataset`` treats a mapper's ``None`` as "pick another sample", which is the official hook;
this wrapper turns the errors of reading a bad image into that ``None``, with a logged warning
and a per-process counter. Errors of other kinds still propagate: they are bugs, not bad data.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from detectron2.data.detection_utils import SizeMismatchError

__all__ = ["SkipCorruptedImages", "IMAGE_ERRORS"]

logger = logging.getLogger(__name__)

# What reading a bad image raises: OSError (missing, truncated, PIL.UnidentifiedImageError),
# SyntaxError (some broken PNG chunks in PIL), SizeMismatchError (JSON size != file size).
IMAGE_ERRORS = (OSError, SyntaxError, SizeMismatchError)


class SkipCorruptedImages:
    """Call ``mapper``; on an image error log it, count it and return ``None`` (skip)."""

    def __init__(self, mapper: Callable[[dict], Optional[dict]]):
        self.mapper = mapper
        self.skipped = 0

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        try:
            return self.mapper(dataset_dict)
        except IMAGE_ERRORS as error:
            self.skipped += 1
            logger.warning(
                "Skipping image %s: %s: %s (%d skipped so far in this data-loading process)",
                dataset_dict.get("file_name", "?"), type(error).__name__, error, self.skipped)
            return None
