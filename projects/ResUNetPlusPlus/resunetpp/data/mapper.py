"""Turn a data-set record into the model's input: fixed-size image and class map, flips."""
from __future__ import annotations

from typing import Dict, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils

from .layouts import read_mask

__all__ = ["SegmentationMapper"]


class SegmentationMapper:
    """Read image and mask, resize both to ``size`` (bilinear / nearest), flip when training.

    The record keeps its original ``height``/``width``, so Detectron2's ``SemanticSegmentor``
    resizes predictions back to the original size for evaluation.
    """

    def __init__(self, size: Sequence[int], image_format: str = "RGB", is_train: bool = True,
                 random_flip: bool = True) -> None:
        """
        Args:
            size: (height, width) of the network input.
            image_format: Detectron2's ``INPUT.FORMAT`` ("RGB" or "BGR").
            is_train: load the mask and apply augmentation.
            random_flip: horizontal and vertical flips with probability 0.5 each (training).
        """
        self.size = (int(size[0]), int(size[1]))
        self.image_format = image_format
        self.is_train = is_train
        self.random_flip = random_flip and is_train

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool) -> "SegmentationMapper":
        """The mapper that ``cfg`` describes (``RESUNETPP.INPUT``, ``INPUT.FORMAT``)."""
        return cls(cfg.RESUNETPP.INPUT.SIZE, cfg.INPUT.FORMAT, is_train,
                   cfg.RESUNETPP.INPUT.RANDOM_FLIP)

    def __call__(self, record: Dict) -> Dict:
        height, width = self.size
        image = detection_utils.read_image(record["file_name"], format=self.image_format)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        result = {key: record[key] for key in ("file_name", "image_id", "height", "width")
                  if key in record}
        mask = None
        if self.is_train:
            mask = read_mask(record["sem_seg_file_name"], record.get("mask_format", "binary"))
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            if self.random_flip:  # torch's RNG: Detectron2 seeds it in every loader worker
                for axis, flip in enumerate((torch.rand(2) < 0.5).tolist()):
                    if flip:
                        image, mask = np.flip(image, axis), np.flip(mask, axis)
            result["sem_seg"] = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.long)
        result["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)),
                                          dtype=torch.float32)
        return result
