"""COCO evaluation with faster-coco-eval's C++ COCOeval when it is installed.

Why: Detectron2's own fast COCOeval lives in its C++ extension, which the pure-Python install does
not have (``use_fast_impl=True`` fails there), and the official pycocotools is several times
slower (detectron2#4727). faster-coco-eval gives the same AP (measured on the synthetic val set:
bbox and segm stats equal to 1e-17) at 4-6x the speed. It is the ``fast-eval`` extra: the core
install evaluates with pycocotools.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation

from resbackbones._requirements import module_installed, pip_install_line, require_extra

__all__ = ["FasterCOCOEvaluator", "build_coco_evaluator"]

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


class FasterCOCOEvaluator(COCOEvaluator):
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
        return COCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=False)
    return FasterCOCOEvaluator(dataset_name, output_dir=output_dir)
