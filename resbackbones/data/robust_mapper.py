"""A dataset mapper wrapper that skips images which turn out unreadable during training.

One truncated JPEG must not kill a multi-day, multi-GPU run (detectron2#143). Detectron2's
``MapDataset`` treats a mapper's ``None`` as "pick another sample", which is the official hook;
this wrapper turns the errors of reading a bad image into that ``None``, with a logged warning
that names the file and a per-process counter. Errors of other kinds still propagate: they are
bugs, not bad data.

An image that is gone (deleted or moved while training) is skipped the same way, with a warning
that says it no longer exists. But when the folder it was in is gone too (a network drive
unmounted, a data set folder moved), or when ``max_consecutive_failures`` images in a row fail,
the data set itself is unavailable: skipping would spin through every record, so training stops
with an error that names the file (and folder) instead. The checkpoints written so far are kept;
put the data back and continue with ``--resume``.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from detectron2.data.detection_utils import SizeMismatchError

__all__ = ["DatasetFolderMissingError", "IMAGE_ERRORS", "SkipCorruptedImages",
           "UnreadableDatasetError"]

logger = logging.getLogger(__name__)

# What reading a bad image raises: OSError (missing, truncated, PIL.UnidentifiedImageError),
# SyntaxError (some broken PNG chunks in PIL), SizeMismatchError (JSON size != file size).
IMAGE_ERRORS = (OSError, SyntaxError, SizeMismatchError)
_RESUME_HINT = ("The checkpoints written so far are kept: put the data back and continue with "
                "--resume.")


class DatasetFolderMissingError(FileNotFoundError):
    """An image and the folder it was in are both gone during training (unmounted, moved)."""


class UnreadableDatasetError(RuntimeError):
    """Too many images in a row failed to read: the data set, not one file, is unavailable."""


class SkipCorruptedImages:
    """Call ``mapper``; on an image error log it (naming the file), count it and return
    ``None`` (skip); stop when the data set as a whole is gone (see the module docstring)."""

    def __init__(self, mapper: Callable[[dict], Optional[dict]],
                 max_consecutive_failures: int = 10):
        """
        Args:
            mapper: Detectron2's mapper (``DatasetMapper``) or any callable of a record.
            max_consecutive_failures: this many unreadable images in a row (in one data-loading
                process) raise :class:`UnreadableDatasetError`; a few bad files among good ones
                never do.
        """
        if max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures {max_consecutive_failures} is invalid; "
                             "valid: an integer >= 1.")
        self.mapper = mapper
        self.max_consecutive_failures = max_consecutive_failures
        self.skipped = 0
        self.consecutive_failures = 0

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        try:
            mapped = self.mapper(dataset_dict)
        except IMAGE_ERRORS as error:
            return self._skip(dataset_dict.get("file_name", "?"), error)
        self.consecutive_failures = 0
        return mapped

    def _skip(self, file_name: str, error: BaseException) -> None:
        self.skipped += 1
        self.consecutive_failures += 1
        gone = isinstance(error, FileNotFoundError) and file_name != "?" and \
            not os.path.exists(file_name)
        if gone:
            folder = os.path.dirname(os.path.abspath(file_name))
            if not os.path.isdir(folder):
                raise DatasetFolderMissingError(
                    f"Image {file_name} is gone, and so is its folder {folder}: the data set "
                    "was removed, moved or unmounted while training. " + _RESUME_HINT
                ) from error
            logger.warning(
                "Skipping image %s: the file no longer exists (deleted or moved while training?) "
                "(%d skipped so far in this data-loading process)", file_name, self.skipped)
        else:
            logger.warning(
                "Skipping image %s: %s: %s (%d skipped so far in this data-loading process)",
                file_name, type(error).__name__, error, self.skipped)
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise UnreadableDatasetError(
                f"{self.consecutive_failures} images in a row could not be read, the last "
                f"{file_name} ({'the file no longer exists' if gone else type(error).__name__})"
                ": the data set looks unavailable, not a few bad files. " + _RESUME_HINT
            ) from error
        return None
