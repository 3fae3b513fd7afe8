"""Validate a COCO-format instance dataset before training, and drop bad records on request.

A bad image found at hour six of a run costs the run; the same defect found before step 0 costs
seconds. Every defect is reported with counts and the first examples; by default training refuses
to start, and with ``skip_bad`` the faulty images/annotations are dropped with a summary.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set

from tabulate import tabulate

from resbackbones.errors import check_choice

__all__ = [
    "PROBLEM_KINDS",
    "DatasetProblem",
    "DatasetValidationError",
    "ValidationReport",
    "validate_coco_json",
    "filter_coco_json",
    "use_cleaned_dataset",
]

logger = logging.getLogger(__name__)

# Kind -> what it means. Image-level kinds drop the image (and its annotations) with skip_bad;
# the others drop the annotation only.
PROBLEM_KINDS: Dict[str, str] = {
    "missing_image": "image file does not exist",
    "unreadable_image": "image file cannot be decoded (corrupted, truncated or not an image)",
    "size_mismatch": "image size on disk differs from the JSON's width/height",
    "duplicate_image_id": "two images share an id",
    "duplicate_annotation_id": "two annotations share an id",
    "unknown_image_id": "annotation refers to an image id that is not in 'images'",
    "unknown_category_id": "annotation's category_id is not in 'categories'",
    "bad_box": "bbox is not 4 finite numbers, or has zero/negative width or height",
    "box_outside_image": "bbox extends outside the image",
    "bad_polygon": "a segmentation polygon has fewer than 3 points (6 numbers)",
}
IMAGE_KINDS = {"missing_image", "unreadable_image", "size_mismatch", "duplicate_image_id"}


class DatasetValidationError(ValueError):
    """A dataset has defects and the user did not ask to skip them."""

    def __init__(self, report: "ValidationReport"):
        super().__init__(report.format() + "\nFix the dataset, or drop the bad records: "
                         "tools/validate_dataset.py --skip-bad --output CLEAN.json, or "
                         "DATA_VALIDATION.SKIP_BAD_RECORDS True when training.")
        self.report = report


@dataclass
class DatasetProblem:
    kind: str
    detail: str
    image_id: Optional[int] = None
    annotation_id: Optional[int] = None


@dataclass
class ValidationReport:
    """Problems found in one dataset; ``ok`` when there are none."""

    json_file: str
    image_root: str
    num_images: int = 0
    num_annotations: int = 0
    problems: List[DatasetProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> Dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    def bad_image_ids(self) -> Set[int]:
        return {p.image_id for p in self.problems if p.kind in IMAGE_KINDS and p.image_id is not None}

    def bad_annotation_ids(self) -> Set[int]:
        return {p.annotation_id for p in self.problems
                if p.kind not in IMAGE_KINDS and p.annotation_id is not None}

    def format(self, examples: int = 3) -> str:
        """A table: each problem kind, its count, its meaning and the first examples."""
        header = (f"Dataset {self.json_file} (images in {self.image_root}): {self.num_images} "
                  f"images, {self.num_annotations} annotations")
        if self.ok:
            return header + ": no problems found."
        by_kind: Dict[str, List[DatasetProblem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        rows = [[kind, len(found), PROBLEM_KINDS[kind],
                 "\n".join(p.detail for p in found[:examples])]
                for kind, found in by_kind.items()]
        table = tabulate(rows, headers=["problem", "count", "meaning", "first examples"],
                         tablefmt="grid")
        return f"{header}: {len(self.problems)} problems.\n{table}"


def _check_image(path: str, width: Optional[int], height: Optional[int],
                 decode: bool) -> Optional[DatasetProblem]:
    from PIL import Image

    if not os.path.isfile(path):
        return DatasetProblem("missing_image", f"{path} does not exist")
    try:
        with Image.open(path) as image:
            size = image.size
            if decode:
                image.load()  # full decode: catches truncated files that headers hide
    except Exception as error:  # PIL raises many types for bad files
        return DatasetProblem("unreadable_image", f"{path}: {type(error).__name__}: {error}")
    if width is not None and height is not None and size != (width, height):
        return DatasetProblem("size_mismatch", f"{path} is {size[0]}x{size[1]} on disk, the "
                              f"JSON says {width}x{height}")
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _check_annotation(annotation: dict, image: Optional[dict], categories: Set[int],
                      tolerance: float) -> Iterable[DatasetProblem]:
    annotation_id = annotation.get("id")
    image_id = annotation.get("image_id")
    where = f"annotation {annotation_id} (image {image_id})"
    if image is None:
        yield DatasetProblem("unknown_image_id", f"{where}: no image with id {image_id}",
                             image_id, annotation_id)
    if annotation.get("category_id") not in categories:
        yield DatasetProblem("unknown_category_id", f"{where}: category_id "
                             f"{annotation.get('category_id')!r} not in {sorted(categories)}",
                             image_id, annotation_id)
    box = annotation.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)) or (
            box[2] <= 0 or box[3] <= 0):
        yield DatasetProblem("bad_box", f"{where}: bbox {box!r}", image_id, annotation_id)
    elif image is not None and image.get("width") and image.get("height"):
        x, y, w, h = box
        if (x < -tolerance or y < -tolerance or x + w > image["width"] + tolerance
                or y + h > image["height"] + tolerance):
            yield DatasetProblem("box_outside_image", f"{where}: bbox {box} outside "
                                 f"{image['width']}x{image['height']}", image_id, annotation_id)
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        short = [len(polygon) for polygon in segmentation
                 if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2]
        if short or not segmentation:
            yield DatasetProblem("bad_polygon", f"{where}: polygon lengths "
                                 f"{[len(p) for p in segmentation]} (need >= 6 numbers, even)",
                                 image_id, annotation_id)


def validate_coco_json(json_file: str, image_root: str, check_images: bool = True,
                       decode_images: bool = True, tolerance: float = 1.0,
                       progress: bool = False) -> ValidationReport:
    """Check a COCO instances JSON and its images for the defects in :data:`PROBLEM_KINDS`.

    Args:
        json_file: the annotations file.
        image_root: the folder ``file_name`` is relative to.
        check_images: open every image (existence, decodability, size).
        decode_images: fully decode each image (slower; catches truncated files).
        tolerance: pixels a box may stick out of the image (rounding in converters).
        progress: show a progress bar over the images.

    Returns:
        a :class:`ValidationReport`.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Annotation file not found: {json_file}")
    with open(json_file) as file:
        data = json.load(file)
    report = ValidationReport(json_file, image_root)
    images: Dict[int, dict] = {}
    for image in data.get("images", []):
        if image.get("id") in images:
            report.problems.append(DatasetProblem(
                "duplicate_image_id", f"image id {image.get('id')} ({image.get('file_name')})",
                image.get("id")))
        images[image.get("id")] = image
    report.num_images = len(data.get("images", []))
    categories = {category.get("id") for category in data.get("categories", [])}
    if check_images:
        iterator = data.get("images", [])
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=f"checking images of {os.path.basename(json_file)}")
        for image in iterator:
            problem = _check_image(os.path.join(image_root, image.get("file_name", "")),
                                   image.get("width"), image.get("height"), decode_images)
            if problem is not None:
                problem.image_id = image.get("id")
                report.problems.append(problem)
    seen_annotations: Set[int] = set()
    annotations = data.get("annotations", [])
    report.num_annotations = len(annotations)
    for annotation in annotations:
        annotation_id = annotation.get("id")
        if annotation_id in seen_annotations:
            report.problems.append(DatasetProblem(
                "duplicate_annotation_id", f"annotation id {annotation_id}",
                annotation.get("image_id"), annotation_id))
        seen_annotations.add(annotation_id)
        report.problems.extend(_check_annotation(annotation, images.get(annotation.get(
            "image_id")), categories, tolerance))
    return report


def filter_coco_json(json_file: str, report: ValidationReport, output_file: str) -> Dict[str, int]:
    """Write a copy of ``json_file`` without the records ``report`` found bad.

    Bad images are dropped with all their annotations; other problems drop the annotation.
    Duplicate ids keep the first record. The input file is never modified.

    Returns:
        Counts of what was kept and dropped.
    """
    if os.path.abspath(output_file) == os.path.abspath(json_file):
        raise ValueError(f"Refusing to overwrite the original annotations {json_file}; choose "
                         "another --output.")
    with open(json_file) as file:
        data = json.load(file)
    bad_images = report.bad_image_ids()
    bad_annotations = report.bad_annotation_ids()
    kept_images, seen_images = [], set()
    for image in data.get("images", []):
        if image.get("id") in bad_images or image.get("id") in seen_images:
            continue
        seen_images.add(image.get("id"))
        kept_images.append(image)
    kept_annotations, seen_annotations = [], set()
    for annotation in data.get("annotations", []):
        if (annotation.get("id") in bad_annotations or annotation.get("image_id") not in
                seen_images or annotation.get("id") in seen_annotations):
            continue
        seen_annotations.add(annotation.get("id"))
        kept_annotations.append(annotation)
    summary = {
        "images_kept": len(kept_images),
        "images_dropped": len(data.get("images", [])) - len(kept_images),
        "annotations_kept": len(kept_annotations),
        "annotations_dropped": len(data.get("annotations", [])) - len(kept_annotations),
    }
    data["images"], data["annotations"] = kept_images, kept_annotations
    tmp_file = output_file + ".tmp"
    with open(tmp_file, "w") as file:
        json.dump(data, file)
    os.replace(tmp_file, output_file)
    logger.info("wrote %s: %s", output_file, summary)
    return summary


# Values of DATA_VALIDATION.MODE.
VALIDATION_MODES = ("off", "header", "full")


def check_validation_mode(mode: str) -> str:
    """The owner of ``DATA_VALIDATION.MODE``: returns it or raises ConfigError."""
    return check_choice("DATA_VALIDATION.MODE", mode, VALIDATION_MODES)


def validate_registered_datasets(names: Iterable[str], mode: str = "header",
                                 skip_bad: bool = False,
                                 cleaned_dir: Optional[str] = None) -> Dict[str, ValidationReport]:
    """Validate the COCO-format datasets among ``names`` before training starts.

    Datasets without a ``json_file`` in their metadata (not COCO-format) are left alone.

    Args:
        names: registered dataset names (``DATASETS.TRAIN + DATASETS.TEST``).
        mode: "off", "header" (image headers: existence and size, fast) or "full" (decode).
        skip_bad: drop bad records instead of raising: a cleaned copy of the JSON is written to
            ``cleaned_dir`` and the dataset is re-registered on it.
        cleaned_dir: where cleaned copies go (required with ``skip_bad``).

    Returns:
        name -> report, for the datasets that were checked.

    Raises:
        DatasetValidationError: a dataset has problems and ``skip_bad`` is False.
    """
    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm

    check_validation_mode(mode)
    reports: Dict[str, ValidationReport] = {}
    if mode == "off":
        return reports
    for name in dict.fromkeys(names):
        metadata = MetadataCatalog.get(name)
        json_file = getattr(metadata, "json_file", None)
        image_root = getattr(metadata, "image_root", None)
        if not json_file or not image_root:
            continue
        report = validate_coco_json(json_file, image_root, decode_images=(mode == "full"),
                                    progress=comm.is_main_process())
        reports[name] = report
        if report.ok:
            logger.info("Dataset %s: %d images, %d annotations, no problems found.", name,
                        report.num_images, report.num_annotations)
            continue
        if not skip_bad:
            raise DatasetValidationError(report)
        logger.warning("%s\nDATA_VALIDATION.SKIP_BAD_RECORDS: dropping the bad records.", report.format())
        use_cleaned_dataset(name, report, cleaned_dir)
    return reports


def use_cleaned_dataset(name: str, report: ValidationReport, cleaned_dir: str) -> str:
    """Write ``name``'s JSON without the records ``report`` found bad and re-register ``name`` on
    that copy (same image root and metadata). Reads the JSON only, no image: ranks that did not
    validate apply the report of the one that did.

    Returns:
        The cleaned JSON file (one per rank: machines need not share a file system).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils import comm

    metadata = MetadataCatalog.get(name)
    os.makedirs(cleaned_dir, exist_ok=True)
    cleaned = os.path.join(cleaned_dir, f"{name}.rank{comm.get_rank()}.json")
    summary = filter_coco_json(report.json_file, report, cleaned)
    logger.warning("Dataset %s now uses %s: %s", name, cleaned, summary)
    kept = {key: value for key, value in metadata.as_dict().items()
            if key not in ("json_file", "image_root", "name", "evaluator_type")}
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    register_coco_instances(name, kept, cleaned, report.image_root)
    return cleaned
