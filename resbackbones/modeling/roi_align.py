"""ROIAlign that uses every CPU thread at inference.

torchvision's CPU ``roi_align`` kernel runs on one thread: on a 2-core machine it leaves half the
CPU idle for ~0.25 s of a Mask R-CNN R50-FPN inference at 800x1333 (1000 box ROIs + 100 mask
ROIs). Each ROI is pooled independently, so splitting the ROIs into one chunk per thread and
running the chunks concurrently (the kernel releases the GIL) gives bit-identical outputs.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from detectron2.layers import ROIAlign
from torch import nn

__all__ = ["ParallelROIAlign", "parallelize_roi_align"]

# Below this many ROIs per chunk, thread hand-off costs more than it saves.
_MIN_ROIS_PER_CHUNK = 16

_executor_lock = threading.Lock()
_executor: Optional[ThreadPoolExecutor] = None


def _shared_executor(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool, grown when torch is given more threads."""
    global _executor
    with _executor_lock:
        if _executor is None or _executor._max_workers < workers:
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roi_align")
        return _executor


class ParallelROIAlign(ROIAlign):
    """Detectron2's :class:`ROIAlign`, split over ``torch.get_num_threads()`` threads on CPU.

    Only without autograd (inference): the split is exact, but keeping training on the stock
    path leaves its backward untouched. CUDA inputs and small ROI counts take the stock path.
    """

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        chunks = min(torch.get_num_threads(), rois.shape[0] // _MIN_ROIS_PER_CHUNK)
        if chunks < 2 or input.device.type != "cpu" or torch.is_grad_enabled():
            return super().forward(input, rois)
        # Grad and inference modes are thread-local: carry the caller's into the workers.
        inference_mode = torch.is_inference_mode_enabled()

        def pool(part: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(inference_mode), torch.no_grad():
                return ROIAlign.forward(self, input, part)

        parts = torch.tensor_split(rois, chunks)
        executor = _shared_executor(chunks - 1)
        futures = [executor.submit(pool, part) for part in parts[1:]]
        first = pool(parts[0])  # the calling thread takes a share too
        return torch.cat([first] + [future.result() for future in futures])


def parallelize_roi_align(model: nn.Module) -> int:
    """Turn, in place, every :class:`ROIAlign` of ``model`` into a :class:`ParallelROIAlign`.

    ROIAlign holds no parameters or buffers, so state dicts and checkpoints are unchanged.

    Returns:
        The number of modules converted.
    """
    converted = 0
    for module in model.modules():
        if type(module) is ROIAlign:
            module.__class__ = ParallelROIAlign
            converted += 1
    return converted
