"""Checkpoints and results files that a kill or a full disk at any moment cannot corrupt.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXX.pth`` and then
rewrites ``last_checkpoint`` in place: a SIGKILL in between leaves a truncated file that
``--resume`` then fails to load. Here each file is written to a temporary name in the same
folder, flushed and fsynced, and renamed over the target (atomic on POSIX), so the previous
checkpoint stays usable until the new one is complete. A write that fails (a kill leaves the
temporary file, named ``.NAME.tmp-PID``, which nothing reads; an error removes it) never
touches the target. A full disk (ENOSPC, EDQUOT) raises :class:`DiskFullError`, whose message
names the file, the free space and, for a checkpoint, the previous checkpoint that was kept.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import IO, Any, BinaryIO, Callable, Iterator

import torch

__all__ = ["AtomicSaveMixin", "DiskFullError", "atomic_open", "atomic_write"]

# What a write raises when the file system has no room left (or the user's quota is spent).
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """The disk filled up while a file was written; the previous version of the file is intact
    (the message says which file, how much room is left and what was kept)."""

    def __init__(self, *args: Any) -> None:
        # One message from this module; (errno, message) when unpickled in another process.
        super().__init__(*((errno.ENOSPC,) + args if len(args) == 1 else args))

    def __str__(self) -> str:
        return str(self.strerror)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _free_space(directory: str) -> str:
    try:
        return _megabytes(shutil.disk_usage(directory).free)
    except OSError:
        return "unknown space"


def _caused_by_full_disk(error: BaseException) -> bool:
    """Whether ``error`` or an exception it was raised from or during is ENOSPC/EDQUOT.

    ``torch.save`` into a file turns the writer's ENOSPC into a RuntimeError of its own ("unexpected
    pos") while it closes the archive; the OSError is that error's context.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that readers only ever see the old file or the new one.

    The block writes into a temporary file next to ``path``; when the block ends without an
    error the file is fsynced and renamed over ``path``, else it is removed and ``path`` is left
    as it was. Why: results and checkpoints are read by later runs, which must never find half a
    file (a kill or a full disk mid-write).

    Args:
        path: local destination.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text).

    Raises:
        DiskFullError: the disk filled up; ``path`` is unchanged.
        ValueError: another mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode {mode!r} is invalid; valid: 'w', 'wb'.")
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        try:
            with open(tmp_path, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp_path, path)
        except Exception as error:
            if isinstance(error, DiskFullError) or not _caused_by_full_disk(error):
                raise
            written = os.path.getsize(tmp_path) if os.path.exists(tmp_path) else 0
            raise DiskFullError(
                f"No space left on the disk while writing {path} ({_megabytes(written)} of it "
                f"written, {_free_space(directory)} free in {directory}): the partial copy was "
                f"deleted and {os.path.basename(path)} was not replaced.") from error
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(file)`` so that readers see the old or the new file only.

    Args:
        path: local destination.
        write: fills the binary file object it is given.

    Raises:
        DiskFullError: see :func:`atomic_open`.
    """
    with atomic_open(path, "wb") as file:
        write(file)


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
        previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            atomic_write(save_file, lambda file: torch.save(data, file))
        except DiskFullError as error:
            kept = (f"The previous checkpoint {previous} is intact and last_checkpoint still "
                    "names it" if previous else "No earlier checkpoint was written in this "
                    "folder")
            raise DiskFullError(
                f"Checkpoint {save_file} not saved: {error} {kept}. Free some space (or set "
                f"OUTPUT_DIR to a larger disk), then continue with --resume.") from error
        try:
            self.tag_last_checkpoint(basename)
        except DiskFullError as error:
            raise DiskFullError(
                f"Checkpoint {save_file} was saved, but last_checkpoint could not be updated: "
                f"{error} last_checkpoint still names {previous or 'nothing'}, so --resume "
                f"starts from there. Free some space, then continue with --resume.") from error

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda file: file.write(last_filename_basename.encode()))
