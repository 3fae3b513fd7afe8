"""Results in the input image's pixels, in one format, whatever path made them (issue #25).

The same images, one larger than the model's test size and one smaller, go through Detectron2's
``DefaultPredictor`` (the reference, its records made by Detectron2's own
``instances_to_coco_json`` with ``COCOEvaluator``'s id mapping), the eager CLI
(``python -m resbackbones demo``), the ONNX CLI (``demo --onnx`` on an export of the same weights)
and the web page's JSON download. All must write the same records: the same detections (matched
by box IoU), boxes within 0.5 px, the same ``category_id`` (the data set's id) and
``class_name``, masks of IoU >= 0.99, all in the input's pixels.

The model is a random-weight Mask R-CNN ResNet-18 (tests/export_helpers.py: calibrated, decisive
heads) at a 320/400 px test size with a low score threshold, so that it detects objects.
"""
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from PIL import Image

from resbackbones.__main__ import demo_main
from resbackbones.benchmark.contenders import synthetic_image
from resbackbones.config import build_config
from resbackbones.demo import DemoPredictor, DetectionDemo, build_inference_config
from resbackbones.results_format import (
    RECORD_KEYS,
    check_dataset_id_mapping,
    detection_records,
    image_id_from_name,
)

from export_helpers import MASK_RCNN, write_checkpoint

# Larger than the 320/400 test size (the model runs at 400x288 and the page decodes a copy of
# that size) and smaller (the model upscales it); a COCO-style digit name and a plain one.
IMAGES = {"000000000042": (360, 500), "small": (180, 240)}
SCORE_THRESHOLD = "0.3"
CLASS_NAMES = ["person", "bicycle", "dog"]
# COCO's ids for them: contiguous index 1 ("bicycle") is data set id 2, index 2 is 18.
DATASET_IDS = {1: 0, 2: 1, 18: 2}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(config file, opts) of the tiny model; its folder has the class_names.json training
    writes (names and the data set's ids)."""
    directory = tmp_path_factory.mktemp("model")
    opts = write_checkpoint(directory, MASK_RCNN, "resnet18", extra=[
        "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "400",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", SCORE_THRESHOLD,
        "DATASETS.TEST", "('resbackbones_unregistered_test_set',)"])
    (directory / "class_names.json").write_text(json.dumps({
        "thing_classes": CLASS_NAMES,
        "thing_dataset_id_to_contiguous_id": {str(k): v for k, v in DATASET_IDS.items()}}))
    return MASK_RCNN, opts


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed, (stem, (height, width)) in enumerate(IMAGES.items()):
        Image.fromarray(synthetic_image(height, width, seed=seed)).save(folder / f"{stem}.png")
    return folder


@pytest.fixture(scope="module")
def reference(model, images):
    """Detectron2's DefaultPredictor on each file: records by ``instances_to_coco_json``, ids
    mapped as ``COCOEvaluator`` maps them, plus the class name."""
    cfg = build_config(*model)
    predictor = DefaultPredictor(cfg)
    to_dataset_id = {v: k for k, v in DATASET_IDS.items()}
    results = {}
    for stem in IMAGES:
        rgb = np.asarray(Image.open(images / f"{stem}.png").convert("RGB"))
        instances = predictor(rgb[:, :, ::-1].copy())["instances"].to("cpu")
        records = instances_to_coco_json(instances, image_id_from_name(stem))
        for record in records:
            record["class_name"] = CLASS_NAMES[record["category_id"]]
            record["category_id"] = to_dataset_id[record["category_id"]]
        assert len(records) > 2, f"the test model must detect objects in {stem}"
        results[stem] = records
    return results


def _xyxy(record):
    x, y, w, h = record["bbox"]
    return np.array([x, y, x + w, y + h])


def _box_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _mask_iou(a, b):
    return float(mask_util.iou([a], [b], [0])[0, 0])


def assert_same_records(reference, records, image_size, mask_iou=0.99, score_tolerance=1e-3):
    """One-to-one matching by box IoU (highest score first); then boxes within 0.5 px, the same
    ids, names and keys, scores within ``score_tolerance``, masks of IoU >= ``mask_iou`` of the
    input's size."""
    assert len(records) == len(reference), (len(records), len(reference))
    unmatched = list(range(len(records)))
    for expected in sorted(reference, key=lambda r: -r["score"]):
        ious = [_box_iou(_xyxy(expected), _xyxy(records[i])) for i in unmatched]
        found = records[unmatched.pop(int(np.argmax(ious)))]
        assert list(found) == [k for k in RECORD_KEYS if k in found]
        assert set(found) == set(expected), (sorted(found), sorted(expected))
        assert np.abs(_xyxy(found) - _xyxy(expected)).max() < 0.5, (found["bbox"],
                                                                    expected["bbox"])
        assert (found["image_id"], found["category_id"], found["class_name"]) == (
            expected["image_id"], expected["category_id"], expected["class_name"])
        assert found["score"] == pytest.approx(expected["score"], abs=score_tolerance)
        if "segmentation" in expected:
            assert found["segmentation"]["size"] == list(image_size)
            assert _mask_iou(found["segmentation"], expected["segmentation"]) >= mask_iou


def _check_folder(output, reference, images):
    for stem, size in IMAGES.items():
        records = json.loads((output / f"{stem}.json").read_text())
        assert_same_records(reference[stem], records, size)
        # The drawing is in the input's pixels too, and shows something.
        drawing = np.asarray(Image.open(output / f"{stem}.png"))
        original = np.asarray(Image.open(images / f"{stem}.png").convert("RGB"))
        assert drawing.shape == original.shape and not np.array_equal(drawing, original)


def test_eager_cli_writes_default_predictors_results(model, images, reference, tmp_path):
    config_file, opts = model
    output = tmp_path / "eager"
    assert demo_main(["--config-file", config_file, "--input", str(images), "--output",
                      str(output), "--confidence-threshold", SCORE_THRESHOLD,
                      "--opts", *opts]) == 0
    _check_folder(output, reference, images)
    # The data set's ids, none of which is its class's index.
    found = {r["category_id"] for stem in IMAGES
             for r in json.loads((output / f"{stem}.json").read_text())}
    assert found and found <= set(DATASET_IDS), found


def test_onnx_cli_writes_the_same_results(model, images, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    from resbackbones.deploy.export import export_model

    config_file, opts = model
    export = tmp_path / "export"
    result = export_model(config_file, str(export), "onnx", opts=opts)
    assert result.meta["class_names"] == CLASS_NAMES
    assert result.meta["thing_dataset_id_to_contiguous_id"] == {
        str(k): v for k, v in DATASET_IDS.items()}
    output = tmp_path / "onnx"
    assert demo_main(["--onnx", str(export), "--input", str(images), "--output", str(output),
                      "--confidence-threshold", SCORE_THRESHOLD]) == 0
    _check_folder(output, reference, images)

    from resbackbones.deploy.onnx_runner import META_FILE, ModelMismatchError, OnnxDetector

    meta = json.loads((export / META_FILE).read_text())
    meta["thing_dataset_id_to_contiguous_id"]["18"] = 0  # two ids for class 0, none for 2
    (export / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="exactly one data set id.*Re-export"):
        OnnxDetector(str(export))


def test_export_finds_the_data_set_ids_where_the_demo_does(model):
    """class_names.json next to the weights (what training writes) when its names are the
    export's; else the registered data set whose names they are; else none."""
    from detectron2.data import MetadataCatalog

    from resbackbones.deploy.export import resolve_dataset_id_mapping

    config_file, opts = model
    cfg = build_config(config_file, opts)
    assert resolve_dataset_id_mapping(cfg, CLASS_NAMES) == DATASET_IDS
    assert resolve_dataset_id_mapping(cfg, ["a", "b", "c"]) is None
    name = "resbackbones_results_test_registered"
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"],
                                  thing_dataset_id_to_contiguous_id={5: 0, 6: 1, 9: 2})
    registered = build_config(config_file, opts + ["DATASETS.TEST", f"('{name}',)"])
    assert resolve_dataset_id_mapping(registered, ["a", "b", "c"]) == {5: 0, 6: 1, 9: 2}


def test_web_page_reports_in_the_uploads_pixels(model, images, reference):
    """The page decodes a large upload at the test size and draws on that copy, but its table
    and JSON are in the upload's pixels: boxes scaled back, masks pasted at the upload's size
    from the mask head's probabilities, as DefaultPredictor pastes them."""
    config_file, opts = model
    predictor = DemoPredictor(build_inference_config(config_file, opts,
                                                     score_threshold=float(SCORE_THRESHOLD)))
    page = DetectionDemo({"tiny": predictor})
    for stem, size in IMAGES.items():
        result = page.detect(str(images / f"{stem}.png"), score_threshold=float(SCORE_THRESHOLD),
                             one_label=False)
        assert not result.error, result.message
        large = stem == "000000000042"
        assert result.prediction.downscaled == large  # the page's copy is smaller: mapped
        assert result.image.shape[:2] == ((288, 400) if large else size)
        records = json.loads(open(result.json_path).read())
        assert_same_records(reference[stem], records, size)
        # The table lists the JSON's detections, in the same order and pixels.
        assert [row[0] for row in result.rows] == [r["class_name"] for r in records]
        np.testing.assert_allclose([row[2:] for row in result.rows],
                                   [_xyxy(r) for r in records], atol=0.06)


def test_masks_without_probabilities_are_resized_to_the_input():
    """Instances made elsewhere, without the mask head's probabilities: the copy's masks are
    resized bilinearly (threshold 0.5); a rectangle at half size comes back exactly doubled."""
    from detectron2.structures import Boxes, Instances

    from resbackbones.demo.results import coco_results

    instances = Instances((40, 50))
    instances.pred_boxes = Boxes(torch.tensor([[5.0, 10.0, 15.0, 20.0]]))
    instances.scores = torch.tensor([0.8])
    instances.pred_classes = torch.tensor([1])
    instances.pred_masks = torch.zeros((1, 40, 50), dtype=torch.bool)
    instances.pred_masks[0, 10:20, 5:15] = True
    record, = coco_results(instances, "copy", {2: 0, 5: 1}, CLASS_NAMES, input_size=(80, 100))
    assert record["bbox"] == [10.0, 20.0, 20.0, 20.0] and record["category_id"] == 5
    expected = np.zeros((80, 100), dtype=np.uint8)
    expected[20:40, 10:30] = 1
    assert np.array_equal(mask_util.decode(record["segmentation"]), expected)


def test_record_format_and_id_conventions():
    assert image_id_from_name("datasets/coco/val2017/000000397133.jpg") == 397133
    assert image_id_from_name("photos/street.view.jpg") == "street.view"
    masks = np.zeros((2, 4, 6), dtype=bool)
    masks[0, 1:3, 2:5] = True
    records = detection_records(
        np.array([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 1.5, 1.25]]), np.array([0.9, 0.4]),
        np.array([1, 5]), ["a", "b"], "street", iter(masks), {7: 0, 9: 1})
    assert records[0] == {"image_id": "street", "category_id": 9, "class_name": "b",
                          "bbox": [2.0, 1.0, 3.0, 2.0], "score": 0.9,
                          "segmentation": records[0]["segmentation"]}
    assert np.array_equal(mask_util.decode(records[0]["segmentation"]), masks[0])
    # An index the mapping and the names do not cover keeps its index and a generic name.
    assert (records[1]["category_id"], records[1]["class_name"]) == (5, "class_5")
    with pytest.raises(ValueError, match="1 masks for 2 detections"):
        detection_records(np.zeros((2, 4)), np.zeros(2), np.zeros(2), [], 0, masks[:1])
    assert check_dataset_id_mapping({"1": 0, "18": 1}, 2) == {1: 0, 18: 1}
    with pytest.raises(ValueError, match=r"maps to class indices \[0, 0\].*exactly one"):
        check_dataset_id_mapping({"1": 0, "2": 0}, 2, "class_names.json")
    with pytest.raises(ValueError, match="integer data set ids"):
        check_dataset_id_mapping({"person": 0}, 1)
