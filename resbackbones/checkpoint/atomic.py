"""Checkpoints that a kill at any moment cannot corrupt.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXX.pth`` and then
rewrites ``last_checkpoint`` in place: a SIGKILL in between leaves a truncated file that
``--resume`` then fails to load. Here each file is written to a temporary name in the same
folder, flushed and fsynced, and renamed over the target (atomic on POSIX), so the previous
checkpoint stays usable until the new one is complete.
"""
from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable

import torch

__all__ = ["atomic_write", "AtomicSaveMixin"]


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(file)`` so that readers see the old or the new file only.

    Args:
        path: local destination.
        write: fills the binary file object it is given.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp_path, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def _is_local(path: str) -> bool:
    return "://" not in path


class AtomicSaveMixin:
    """Mix into an fvcore/Detectron2 ``Checkpointer`` (before it in the bases) for atomic saves.

    Remote ``save_dir`` (``s3://``, ``manifold://`` ...) falls back to the base implementation.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda file: torch.save(data, file))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda file: file.write(last_filename_basename.encode()))
