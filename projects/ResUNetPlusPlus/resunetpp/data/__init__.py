"""Data: layouts and registration, validation, the synthetic polyp set and the mapper."""
from .layouts import (
    LAYOUTS,
    make_split,
    parse_dataset_spec,
    read_mask,
    read_split_file,
    register_segmentation_dataset,
    scan_pairs,
    write_split_file,
)
from .mapper import SegmentationMapper
from .synthetic import SyntheticPolypSpec, generate_synthetic_polyps, render_polyp_image
from .validation import (
    PROBLEM_KINDS,
    DatasetValidationError,
    ValidationReport,
    validate_records,
    validate_registered,
)

__all__ = [
    "LAYOUTS",
    "PROBLEM_KINDS",
    "DatasetValidationError",
    "SegmentationMapper",
    "SyntheticPolypSpec",
    "ValidationReport",
    "generate_synthetic_polyps",
    "make_split",
    "parse_dataset_spec",
    "read_mask",
    "read_split_file",
    "register_segmentation_dataset",
    "render_polyp_image",
    "scan_pairs",
    "validate_records",
    "validate_registered",
    "write_split_file",
]
