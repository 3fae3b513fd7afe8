"""Datasets: the synthetic shapes set and COCO-format registration with early file checks.

Importing this package registers ``synthetic_shapes_train`` / ``synthetic_shapes_val`` lazily
under ``$DETECTRON2_DATASETS/synthetic_shapes`` (like Detectron2's builtin ``coco_2017_*``).
"""
from .datasets import (
    SYNTHETIC_DATASET_NAME,
    check_datasets_exist,
    default_synthetic_root,
    parse_dataset_spec,
    register_coco_dataset,
    register_dataset_specs,
    register_synthetic,
)
from .synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_coco, synthetic_paths

register_synthetic()

__all__ = [k for k in globals().keys() if not k.startswith("_")]
