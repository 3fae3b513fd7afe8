"""Class names saved next to a trained model, so that whoever loads the model later (the demo,
an export) knows what its class ids mean without registering the training dataset.

A training run writes ``<OUTPUT_DIR>/class_names.json``::

    {"thing_classes": ["circle", "triangle", "rectangle"],
     "thing_dataset_id_to_contiguous_id": {"1": 0, "2": 1, "3": 2},
     "dataset": "synthetic_shapes_train"}

``thing_dataset_id_to_contiguous_id`` (the category ids of the dataset's COCO json) is present
when the dataset has one; the demo uses it to write COCO results with the original ids.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from resbackbones.checkpoint.atomic import atomic_write

__all__ = ["CLASS_NAMES_FILE", "SavedClassNames", "read_class_names", "write_class_names"]

logger = logging.getLogger(__name__)

CLASS_NAMES_FILE = "class_names.json"


@dataclass
class SavedClassNames:
    """The content of a ``class_names.json``.

    Attributes:
        thing_classes: name of each contiguous class id.
        thing_dataset_id_to_contiguous_id: dataset category id → contiguous id (may be empty).
        dataset: the dataset the names were taken from.
        path: the file they were read from.
    """

    thing_classes: List[str]
    thing_dataset_id_to_contiguous_id: Dict[int, int] = field(default_factory=dict)
    dataset: str = ""
    path: str = ""


def write_class_names(cfg: CfgNode) -> Optional[str]:
    """Write ``class_names.json`` into ``cfg.OUTPUT_DIR`` from the first training dataset
    (or, in an evaluation-only run, the first test dataset) that has ``thing_classes``.

    Called at the end of training; only the main process writes.

    Returns:
        The path written, or ``None`` (not the main process, or no dataset has class names).
    """
    if not comm.is_main_process():
        return None
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        metadata = _metadata_with_classes(name)
        if metadata is None:
            continue
        content = {"thing_classes": [str(c) for c in metadata["thing_classes"]], "dataset": name}
        mapping = metadata.get("thing_dataset_id_to_contiguous_id")
        if mapping:
            content["thing_dataset_id_to_contiguous_id"] = {str(k): int(v)
                                                            for k, v in mapping.items()}
        path = os.path.join(cfg.OUTPUT_DIR, CLASS_NAMES_FILE)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(content, indent=2).encode()))
        logger.info(f"Class names of {name!r} ({len(content['thing_classes'])}) saved to {path}")
        return path
    logger.warning("No dataset of DATASETS.TRAIN/TEST has thing_classes: no class_names.json "
                   "written; the demo will show 'class N' (or pass --class-names).")
    return None


def _metadata_with_classes(dataset_name: str) -> Optional[dict]:
    if dataset_name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes", None):
        try:  # a COCO json dataset fills its metadata when it is first loaded
            DatasetCatalog.get(dataset_name)
        except Exception as error:  # missing files: try the next dataset
            logger.info(f"Could not load {dataset_name!r} for its class names: {error}")
            return None
    if not metadata.get("thing_classes", None):
        return None
    return metadata.as_dict()


def read_class_names(directory: str) -> Optional[SavedClassNames]:
    """Read ``<directory>/class_names.json``.

    Returns:
        The saved names, or ``None`` when the file does not exist.

    Raises:
        ValueError: the file exists but is not a valid class-names file (says which and why).
    """
    path = os.path.join(directory, CLASS_NAMES_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            content = json.load(f)
        names = content["thing_classes"]
        mapping = content.get("thing_dataset_id_to_contiguous_id", {}) or {}
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError("thing_classes must be a list of strings")
        mapping = {int(k): int(v) for k, v in mapping.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a valid class-names file ({type(error).__name__}: "
                         f"{error}); expected {{\"thing_classes\": [\"name\", ...]}}. Delete it "
                         "or pass --class-names.") from error
    return SavedClassNames(names, mapping, str(content.get("dataset", "")), path)
