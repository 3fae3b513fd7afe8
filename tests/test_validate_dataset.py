"""Dataset validation finds each kind of defect, and --skip-bad drops exactly the bad records."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resbackbones.data.validation import (
    PROBLEM_KINDS,
    DatasetValidationError,
    filter_coco_json,
    validate_coco_json,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _square(x, y, size=10):
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def make_defective_dataset(root: Path) -> Path:
    """A 6-image dataset with one instance of every problem kind (and clean records)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    for index in range(4):
        Image.fromarray(np.full((40, 60, 3), 40 * index, np.uint8)).save(images_dir / f"{index}.png")
    good_png = (images_dir / "0.png").read_bytes()
    (images_dir / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(4)]
    images += [
        {"id": 10, "file_name": "missing.png", "width": 60, "height": 40},
        {"id": 11, "file_name": "truncated.png", "width": 60, "height": 40},
        {"id": 3, "file_name": "3.png", "width": 60, "height": 40},  # duplicate id
    ]
    images[2]["width"] = 61  # size mismatch for image 2
    annotation = {"iscrowd": 0, "area": 100, "category_id": 1}
    annotations = [
        {**annotation, "id": 1, "image_id": 0, "bbox": [5, 5, 10, 10],
         "segmentation": [_square(5, 5)]},
        {**annotation, "id": 2, "image_id": 0, "bbox": [5, 5, 0, 10],
         "segmentation": [_square(5, 5)]},                       # zero width
        {**annotation, "id": 3, "image_id": 1, "bbox": [55, 5, 20, 10],
         "segmentation": [_square(55, 5)]},                      # outside the image
        {**annotation, "id": 4, "image_id": 1, "bbox": [5, 5, 10, 10],
         "segmentation": [[5, 5, 15, 5]]},                       # 2-point polygon
        {**annotation, "id": 5, "image_id": 1, "bbox": [5, 5, 10, 10], "category_id": 7,
         "segmentation": [_square(5, 5)]},                       # unknown category
        {**annotation, "id": 5, "image_id": 1, "bbox": [20, 5, 10, 10],
         "segmentation": [_square(20, 5)]},                      # duplicate annotation id
        {**annotation, "id": 6, "image_id": 99, "bbox": [5, 5, 10, 10],
         "segmentation": [_square(5, 5)]},                       # unknown image
        {**annotation, "id": 7, "image_id": 1, "bbox": [30, 20, 10, 10],
         "segmentation": [_square(30, 20)]},                     # clean
    ]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "square"}]}))
    return json_file


def test_every_defect_kind_is_found(tmp_path):
    json_file = make_defective_dataset(tmp_path)
    report = validate_coco_json(str(json_file), str(tmp_path / "images"))
    assert report.counts() == {kind: 1 for kind in PROBLEM_KINDS}
    text = report.format()
    assert "missing.png does not exist" in text and "truncated.png" in text
    assert "61x40" in text and "category_id 7" in text


def test_clean_records_pass(tmp_path):
    json_file = make_defective_dataset(tmp_path)
    report = validate_coco_json(str(json_file), str(tmp_path / "images"))
    bad_annotations = report.bad_annotation_ids()
    assert 1 not in bad_annotations and 7 not in bad_annotations
    assert report.bad_image_ids() == {2, 3, 10, 11}


def test_skip_bad_writes_a_clean_copy_and_keeps_the_original(tmp_path):
    json_file = make_defective_dataset(tmp_path)
    original = json_file.read_bytes()
    report = validate_coco_json(str(json_file), str(tmp_path / "images"))
    clean = tmp_path / "clean.json"
    summary = filter_coco_json(str(json_file), report, str(clean))
    assert json_file.read_bytes() == original
    assert summary == {"images_kept": 2, "images_dropped": 5, "annotations_kept": 2,
                       "annotations_dropped": 6}
    assert validate_coco_json(str(clean), str(tmp_path / "images")).ok
    with pytest.raises(ValueError, match="Refusing to overwrite"):
        filter_coco_json(str(json_file), report, str(json_file))


def test_validation_error_says_how_to_skip(tmp_path):
    json_file = make_defective_dataset(tmp_path)
    error = DatasetValidationError(validate_coco_json(str(json_file), str(tmp_path / "images")))
    assert "--skip-bad" in str(error) and "missing_image" in str(error)


def test_cli_exit_codes(tmp_path):
    json_file = make_defective_dataset(tmp_path)
    command = [sys.executable, "tools/validate_dataset.py", "--json", str(json_file),
               "--image-root", str(tmp_path / "images")]
    failed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert failed.returncode == 1 and "unreadable_image" in failed.stdout
    cleaned = subprocess.run(command + ["--skip-bad", "--output", str(tmp_path / "c.json")],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert cleaned.returncode == 0 and (tmp_path / "c.json").exists()
    assert "images_dropped 5" in cleaned.stdout


def test_training_start_validation_refuses_or_drops_bad_records(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from resbackbones.data.validation import validate_registered_datasets

    json_file = make_defective_dataset(tmp_path)
    name = "defective_for_test"
    register_coco_instances(name, {}, str(json_file), str(tmp_path / "images"))
    try:
        with pytest.raises(DatasetValidationError, match="missing_image"):
            validate_registered_datasets([name], mode="header")
        reports = validate_registered_datasets([name], mode="full", skip_bad=True,
                                               cleaned_dir=str(tmp_path / "cleaned"))
        assert reports[name].counts()["unreadable_image"] == 1
        records = DatasetCatalog.get(name)
        assert sorted(r["image_id"] for r in records) == [0, 1]
        assert sum(len(r["annotations"]) for r in records) == 2
        assert validate_registered_datasets([name], mode="full")[name].ok
    finally:
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
