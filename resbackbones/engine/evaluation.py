"""COCO evaluation with faster-coco-eval's C++ COCOeval when it is installed.

Why: Detectron2's own fast COCOeval lives in its C++ extension, which the pure-Python install does
not have (``use_fast_impl=True`` fails there), and the official pycocotools is several times
slower (detectron2#4727). faster-coco-eval gives the same AP (measured on the synthetic val set:
bbox and segm stats equal to 1e-17) at 4-6x the speed. It is the ``fast-eval`` extra: the core
install evaluates with pycocotools.

Both evaluators write ``inference/coco_instances_results.json`` and ``instances_predictions.pth``
atomically (:func:`resbackbones.checkpoint.atomic.atomic_open`): a run killed while it writes them
(SIGTERM from a scheduler, SIGKILL) leaves the previous complete file or none, never half of one
that a later ``pycocotools`` ``loadRes`` would fail on.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation

from resbackbones._requirements import module_installed, pip_install_line, require_extra
from resbackbones.checkpoint.atomic import atomic_open

__all__ = ["AtomicCOCOEvaluator", "FasterCOCOEvaluator", "build_coco_evaluator"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _as_fast_impl(cocoeval_class: type) -> Iterator[None]:
    """Within the block, Detectron2's "fast implementation" is ``cocoeval_class``."""
    original = coco_evaluation.COCOeval_opt
    coco_evaluation.COCOeval_opt = cocoeval_class
    try:
        yield
    finally:
        coco_evaluation.COCOeval_opt = original


class _AtomicLocalWrites:
    """Detectron2's ``PathManager`` for ``coco_evaluation``, except that a local file opened
    for writing ("w", "wb") is written atomically; every other call is PathManager's."""

    def __init__(self, path_manager: Any) -> None:
        self._path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        if mode in ("w", "wb") and "://" not in str(path):
            return atomic_open(str(path), mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._path_manager, name)


@contextlib.contextmanager
def _atomic_result_files() -> Iterator[None]:
    """Within the block, the files ``coco_evaluation`` writes are written atomically."""
    original = coco_evaluation.PathManager
    coco_evaluation.PathManager = _AtomicLocalWrites(original)
    try:
        yield
    finally:
        coco_evaluation.PathManager = original


class AtomicCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` whose results files are never half-written (see the
    module docstring); the AP it computes is Detectron2's."""

    def evaluate(self, img_ids=None):
        with _atomic_result_files():
            return super().evaluate(img_ids)


class FasterCOCOEvaluator(AtomicCOCOEvaluator):
    """Detectron2's ``COCOEvaluator`` whose fast path is faster-coco-eval (see module doc)."""

    def __init__(self, dataset_name: str, **kwargs):
        self._cocoeval_class = require_extra(
            "fast-eval", "faster_coco_eval", "FasterCOCOEvaluator").COCOeval_faster
        super().__init__(dataset_name, use_fast_impl=True, **kwargs)

    def _eval_predictions(self, predictions, img_ids=None):
        with _as_fast_impl(self._cocoeval_class):
            super()._eval_predictions(predictions, img_ids=img_ids)


def build_coco_evaluator(dataset_name: str, output_dir: str) -> COCOEvaluator:
    """faster-coco-eval when importable, else the official pycocotools (never Detectron2's
    missing C++ fast path)."""
    if not module_installed("faster_coco_eval"):
        logger.info("faster-coco-eval is not installed: using the official pycocotools COCOeval "
                    f"(for the faster one: {pip_install_line('fast-eval')}).")
        return AtomicCOCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=False)
    return FasterCOCOEvaluator(dataset_name, output_dir=output_dir)
