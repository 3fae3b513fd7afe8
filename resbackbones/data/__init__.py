"""Datasets: the synthetic shapes set and COCO-format registration with early file checks.

Importing this package registers nothing: ``register_known_datasets`` (called by the trainer
for the names its config uses) registers ``synthetic_shapes_train`` / ``synthetic_shapes_val``
lazily under ``$DETECTRON2_DATASETS/synthetic_shapes``.
"""
from .datasets import (
    SYNTHETIC_DATASET_NAME,
    check_datasets_exist,
    default_synthetic_root,
    parse_dataset_spec,
    register_coco_dataset,
    register_dataset_specs,
    register_known_datasets,
    register_synthetic,
)
from .synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_coco, synthetic_paths


__all__ = [k for k in globals().keys() if not k.startswith("_")]
