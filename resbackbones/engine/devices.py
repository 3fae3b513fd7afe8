"""Which device a run really gets when its config asks for CUDA: the fall-back rule.

Detectron2's configs default to ``MODEL.DEVICE: cuda``, so "cuda" in a config does not by itself
mean that a GPU was wanted: the CPU quickstart runs the same configs. What must never happen is
a COCO run that silently trains on the CPU because CUDA could not start (a driver older than the
CUDA build, an empty ``CUDA_VISIBLE_DEVICES``, a CPU-only PyTorch on a GPU machine). The rule:

==========================================  ==========================================
situation (MODEL.DEVICE asks for cuda)      outcome
==========================================  ==========================================
CUDA works                                  cuda (index checked against the GPU count)
CUDA cannot start, an NVIDIA GPU is present  error: CUDA's own message and what to check
no GPU at all, one process                  cpu, with a WARNING in every process
no GPU at all, several processes            error: say ``MODEL.DEVICE cpu`` to train with
                                            N Gloo CPU processes on purpose
==========================================  ==========================================

Any other ``MODEL.DEVICE`` ("cpu", "meta", ...) is used as given.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

__all__ = ["NVIDIA_EVIDENCE_PATHS", "CudaUnavailableError", "nvidia_gpu_evidence",
           "resolve_device"]

logger = logging.getLogger(__name__)

# Files that exist only where an NVIDIA driver runs with at least one GPU: their presence while
# torch.cuda.is_available() is False means CUDA failed to start, not that there is no GPU.
NVIDIA_EVIDENCE_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidia0")


class CudaUnavailableError(RuntimeError):
    """CUDA was needed (a GPU is present, or several processes were asked) but cannot start."""


def nvidia_gpu_evidence() -> Optional[str]:
    """The first of :data:`NVIDIA_EVIDENCE_PATHS` that exists (an NVIDIA GPU is installed)."""
    for path in NVIDIA_EVIDENCE_PATHS:
        if os.path.exists(path):
            return path
    return None


def _cuda_start_error() -> str:
    """CUDA's own explanation of why it does not start, as far as PyTorch can tell."""
    if torch.version.cuda is None:
        return (f"this PyTorch ({torch.__version__}) is a CPU-only build: install a CUDA build "
                "of torch and torchvision (https://pytorch.org/get-started/locally/)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU"
    try:
        torch.cuda.init()
    except Exception as error:  # the driver's message: too old, not loaded, no device, ...
        return (f"{type(error).__name__}: {error} (this PyTorch was built for CUDA "
                f"{torch.version.cuda}; check that `nvidia-smi` works and that its driver "
                "supports that CUDA version)")
    return (f"torch.cuda.is_available() is False although PyTorch was built for CUDA "
            f"{torch.version.cuda}; check `nvidia-smi`, CUDA_VISIBLE_DEVICES and the driver")


def resolve_device(requested: str, world_size: int = 1) -> str:
    """The device a run uses for ``MODEL.DEVICE`` ``requested`` with ``world_size`` processes.

    Args:
        requested: the config's ``MODEL.DEVICE`` ("cuda", "cuda:1", "cpu", ...).
        world_size: processes in the run (``--num-gpus x --num-machines`` or torchrun's
            WORLD_SIZE); several processes without CUDA need an explicit ``MODEL.DEVICE cpu``.

    Returns:
        ``requested``, or "cpu" where the fall-back rule (module docstring) allows it.

    Raises:
        CudaUnavailableError: CUDA was asked for and cannot be used, and falling back is not
            allowed; the message gives the cause and the fix.
    """
    if torch.device(requested).type != "cuda":
        return requested
    if torch.cuda.is_available():
        index = torch.device(requested).index
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise CudaUnavailableError(f"MODEL.DEVICE {requested!r}: this machine has {count} "
                                       f"visible GPU(s) (cuda:0 to cuda:{count - 1}).")
        return requested
    evidence = nvidia_gpu_evidence()
    if evidence is not None:
        raise CudaUnavailableError(
            f"MODEL.DEVICE is {requested!r} and an NVIDIA GPU is installed ({evidence} exists), "
            f"but CUDA cannot start: {_cuda_start_error()}. Refusing to train on the CPU "
            "instead; fix CUDA, or set MODEL.DEVICE cpu to run on the CPU on purpose.")
    if world_size > 1:
        raise CudaUnavailableError(
            f"MODEL.DEVICE is {requested!r} with {world_size} processes, but this machine has no "
            f"CUDA GPU ({_cuda_start_error()}). To train with {world_size} Gloo processes on the "
            "CPU, say so: add MODEL.DEVICE cpu to the command line.")
    logger.warning(f"MODEL.DEVICE is {requested!r} but this machine has no CUDA GPU: running on "
                   "the CPU (set MODEL.DEVICE cpu to silence this warning).")
    return "cpu"
