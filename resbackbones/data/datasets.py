"""Dataset registration: any COCO-format json, the synthetic shapes, and checks before step 0.

Why: Detectron2 registers ``coco_2017_*`` lazily, so a missing file surfaces deep inside the data
loader after the model is built. Users of custom sets hit category-id mistakes at the first
iteration (detectron2#5335, #2365). Everything here fails early, naming the file and the fix.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, List, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .synthetic import SHAPE_CLASSES, synthetic_paths

__all__ = [
    "SYNTHETIC_DATASET_NAME",
    "check_datasets_exist",
    "default_synthetic_root",
    "parse_dataset_spec",
    "register_coco_dataset",
    "register_dataset_specs",
    "register_known_datasets",
    "register_synthetic",
]

logger = logging.getLogger(__name__)

# Configs name the splits "<SYNTHETIC_DATASET_NAME>_train" / "_val".
SYNTHETIC_DATASET_NAME = "synthetic_shapes"

_COCO_LAYOUT = """Expected layout (Detectron2's, root = $DETECTRON2_DATASETS or ./datasets):
  <root>/coco/annotations/instances_{train,val}2017.json
  <root>/coco/{train,val}2017/*.jpg
Download COCO 2017 from https://cocodataset.org, set DETECTRON2_DATASETS=<root>, or pass your own
set with --dataset NAME=JSON:IMAGE_DIR and name it in DATASETS.TRAIN / DATASETS.TEST."""


def default_synthetic_root() -> str:
    """Where the synthetic set lives by default: ``$DETECTRON2_DATASETS/synthetic_shapes``."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), SYNTHETIC_DATASET_NAME)


def parse_dataset_spec(spec: str) -> Tuple[str, str, str]:
    """Split ``"NAME=JSON:IMAGE_DIR"`` into ``(name, json_file, image_root)``.

    The separator between JSON and IMAGE_DIR is the first ``:`` after a ``.json`` suffix, so
    Windows drive letters and colons in directory names are not an issue.
    """
    error = (f"Invalid --dataset {spec!r}: expected NAME=JSON:IMAGE_DIR, e.g. "
             f"my_train=data/annotations/train.json:data/train")
    if "=" not in spec:
        raise ValueError(error)
    name, rest = spec.split("=", 1)
    marker = rest.lower().find(".json:")
    if not name or marker < 0:
        raise ValueError(error)
    json_file, image_root = rest[:marker + len(".json")], rest[marker + len(".json:"):]
    if not image_root:
        raise ValueError(error)
    return name, json_file, image_root


def register_coco_dataset(name: str, json_file: str, image_root: str,
                          thing_classes: Iterable[str] = ()) -> None:
    """Register a COCO-format instance dataset under ``name``, replacing an older registration.

    Args:
        name: dataset name to use in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: COCO instances json.
        image_root: directory that the json's ``file_name`` entries are relative to.
        thing_classes: class names, known before the json is read (optional: Detectron2 fills
            them in from the json when it loads it).
    """
    if name in DatasetCatalog.list():
        old = MetadataCatalog.get(name)
        if (getattr(old, "json_file", None) == json_file
                and getattr(old, "image_root", None) == image_root):
            return
        logger.info(f"Re-registering dataset {name!r}: {json_file} : {image_root}")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    metadata = {"thing_classes": list(thing_classes)} if thing_classes else {}
    register_coco_instances(name, metadata, json_file, image_root)


def register_dataset_specs(specs: Iterable[str]) -> List[str]:
    """Register every ``NAME=JSON:IMAGE_DIR`` spec (the repeatable ``--dataset`` flag)."""
    names = []
    for spec in specs:
        name, json_file, image_root = parse_dataset_spec(spec)
        register_coco_dataset(name, json_file, image_root)
        names.append(name)
    return names


def register_synthetic(root: str | None = None, name: str = SYNTHETIC_DATASET_NAME) -> List[str]:
    """Register ``<name>_train`` and ``<name>_val`` from the synthetic layout under ``root``.

    Registration is lazy (files are read when the dataset is used), so this is cheap and safe to
    call before the data exist; :func:`check_datasets_exist` reports missing files.

    Returns:
        The registered names.
    """
    root = default_synthetic_root() if root is None else root
    names = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(root, split)
        register_coco_dataset(f"{name}_{split}", json_file, image_root, SHAPE_CLASSES)
        names.append(f"{name}_{split}")
    return names


def register_known_datasets(dataset_names: Iterable[str]) -> List[str]:
    """Register the project's own data sets among ``dataset_names`` that are not registered yet.

    Detectron2 registers its builtin sets (``coco_2017_*``) at import; the synthetic shapes
    splits (``synthetic_shapes_train``/``_val``) are registered here, by the code that uses them
    (the trainer, the quickstart), never at ``import resbackbones``. Names registered already
    (e.g. by ``--dataset``) are left alone.

    Returns:
        The names registered by this call.
    """
    registered = set(DatasetCatalog.list())
    wanted = {f"{SYNTHETIC_DATASET_NAME}_{split}" for split in ("train", "val")}
    if any(name in wanted and name not in registered for name in dataset_names):
        return [name for name in register_synthetic() if name not in registered]
    return []


def _missing_message(name: str, path: str, kind: str) -> str:
    if name.startswith("coco_"):
        hint = _COCO_LAYOUT
    elif name.startswith(SYNTHETIC_DATASET_NAME):
        hint = ("Generate it with: python tools/make_synthetic_coco.py --out "
                f"{default_synthetic_root()} (or set DETECTRON2_DATASETS to its parent).")
    else:
        hint = "Check the path given with --dataset NAME=JSON:IMAGE_DIR."
    return f"Dataset {name!r}: {kind} {path!r} does not exist (cwd: {os.getcwd()}).\n{hint}"


def check_datasets_exist(cfg: CfgNode) -> None:
    """Fail before training if a dataset of ``cfg`` is unknown or its files are missing.

    Raises:
        KeyError: a name in DATASETS.TRAIN/TEST is not registered.
        FileNotFoundError: its annotation json or image directory is missing (the message names
            the path and the expected layout).
    """
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            known = sorted(n for n in DatasetCatalog.list()
                           if n.startswith(("coco_2017", SYNTHETIC_DATASET_NAME)))
            raise KeyError(
                f"Dataset {name!r} (in DATASETS.TRAIN/TEST) is not registered. Register a "
                f"COCO-format set with --dataset {name}=JSON:IMAGE_DIR, or use one of: "
                f"{', '.join(known)}"
            )
        metadata = MetadataCatalog.get(name)
        json_file = getattr(metadata, "json_file", None)
        image_root = getattr(metadata, "image_root", None)
        if json_file and not os.path.isfile(json_file):
            raise FileNotFoundError(_missing_message(name, json_file, "annotation file"))
        if image_root and not os.path.isdir(image_root):
            raise FileNotFoundError(_missing_message(name, image_root, "image directory"))
