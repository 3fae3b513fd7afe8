"""Evaluators: Dice, IoU, precision and recall per image (CSV) and per data set, and
Detectron2's ``SemSegEvaluator`` figures (mIoU, fwIoU, mACC, pACC) on the same masks.

Both read the ground truth from the original mask file at its original size, through the data
set's mask format (JPEG masks thresholded, class-index PNGs as they are), and compare it with
the prediction that ``SemanticSegmentor`` has resized back to that size.
"""
from __future__ import annotations

import csv
import itertools
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.utils import comm

from resbackbones import compat

from .data.layouts import read_mask
from .metrics import confusion_matrix, image_scores, mean_iou, scores_from_counts, class_counts

__all__ = ["MaskFileSemSegEvaluator", "SegmentationMetricsEvaluator"]

CSV_COLUMNS = ("image_id", "file_name", "dice", "iou", "precision", "recall",
               "true_pixels", "predicted_pixels")


def _ground_truth_reader(dataset_name: str):
    records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}

    def read(file_name: str) -> np.ndarray:
        record = records[file_name]
        return read_mask(record["sem_seg_file_name"], record.get("mask_format", "binary"))
    return read


class MaskFileSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` reading ground truth through this project's mask reader.

    Detectron2 v0.6 reads ``sem_seg_file_name`` raw, which turns Kvasir's 0/255 JPEG masks into
    "ignore"; only the loading differs here, the confusion matrix and ``evaluate()`` are its own.
    """

    def __init__(self, dataset_name: str, distributed: bool = True,
                 output_dir: Optional[str] = None) -> None:
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._read_ground_truth = _ground_truth_reader(dataset_name)
        # Detectron2 main's evaluator also computes Boundary IoU from a matrix its own process()
        # fills; this process() does not, so the same figures are computed on both flavours.
        self._compute_boundary_iou = False

    def evaluate(self):
        results = super().evaluate()
        if results and "sem_seg" in results:
            results["sem_seg"] = compat.drop_boundary_iou(results["sem_seg"])
        return results

    def process(self, inputs, outputs) -> None:
        for input_, output in zip(inputs, outputs):
            prediction = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy().astype(int)
            truth = self._read_ground_truth(input_["file_name"]).astype(int)
            truth[truth == self._ignore_label] = self._num_classes
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * prediction.reshape(-1) + truth.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
            self._predictions.extend(self.encode_json_sem_seg(prediction, input_["file_name"]))


class SegmentationMetricsEvaluator(DatasetEvaluator):
    """Per-image and per-data-set Dice, IoU, precision and recall (the medical-imaging figures).

    Results (key ``"segmentation"``): ``dice``, ``iou``, ``precision``, ``recall`` as the mean
    over images (how Kvasir-SEG/CVC-ClinicDB papers report them), ``dice_pooled`` and
    ``iou_pooled`` over all pixels of the set, and ``miou`` (IoU averaged over classes with
    background, pooled). Percentages, like Detectron2's evaluators. Per-image rows go to
    ``output_dir/<dataset>_per_image.csv``.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None,
                 distributed: bool = True) -> None:
        metadata = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.num_classes = len(metadata.stuff_classes)
        self.ignore_value = int(metadata.get("ignore_label", 255))
        self._read_ground_truth = _ground_truth_reader(dataset_name)
        self.reset()

    def reset(self) -> None:
        self._rows: List[Dict] = []
        self._pooled = np.zeros((self.num_classes, self.num_classes), np.int64)

    def process(self, inputs, outputs) -> None:
        for input_, output in zip(inputs, outputs):
            prediction = output["sem_seg"].argmax(dim=0).cpu().numpy()
            truth = self._read_ground_truth(input_["file_name"])
            matrix = confusion_matrix(prediction, truth, self.num_classes, self.ignore_value)
            self._pooled += matrix
            foreground_truth = int(matrix[1:, :].sum())
            foreground_predicted = int(matrix[:, 1:].sum())
            self._rows.append({"image_id": input_.get("image_id", ""),
                               "file_name": input_["file_name"], **image_scores(matrix),
                               "true_pixels": foreground_truth,
                               "predicted_pixels": foreground_predicted})

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        rows, pooled = self._rows, self._pooled
        if self.distributed:
            comm.synchronize()
            rows = list(itertools.chain(*comm.gather(rows)))
            pooled = sum(comm.gather(pooled))
            if not comm.is_main_process():
                return None
        if not rows:
            return {"segmentation": {}}
        if self.output_dir:
            self.write_csv(os.path.join(self.output_dir, f"{self.dataset_name}_per_image.csv"),
                           rows)
        results = OrderedDict(
            (key, 100.0 * float(np.mean([row[key] for row in rows])))
            for key in ("dice", "iou", "precision", "recall"))
        foreground = [scores_from_counts(class_counts(pooled, c))
                      for c in range(1, self.num_classes)]
        results["dice_pooled"] = 100.0 * float(np.mean([s["dice"] for s in foreground]))
        results["iou_pooled"] = 100.0 * float(np.mean([s["iou"] for s in foreground]))
        results["miou"] = 100.0 * mean_iou(pooled)
        results["images"] = float(len(rows))
        return {"segmentation": results}

    @staticmethod
    def write_csv(path: str, rows: List[Dict]) -> str:
        """Write the per-image rows (one per image, :data:`CSV_COLUMNS`)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: (f"{row[key]:.6f}" if isinstance(row[key], float)
                                       else row[key]) for key in CSV_COLUMNS})
        return path
