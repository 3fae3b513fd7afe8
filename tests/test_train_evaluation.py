"""The faster-coco-eval evaluator gives the official pycocotools AP (boxes and masks)."""
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from resbackbones.data import SyntheticSpec, generate_synthetic_coco, register_coco_dataset
from resbackbones.data import synthetic_paths
from resbackbones.engine.evaluation import FasterCOCOEvaluator, build_coco_evaluator


def _noisy_predictions(coco, image_id, rng):
    """Ground truth with jittered boxes, some wrong classes, random scores and false positives."""
    info = coco.loadImgs(image_id)[0]
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    boxes, classes, masks = [], [], []
    for a in annotations + annotations[:1]:  # a duplicate: a false positive
        box = BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        boxes.append(np.array(box) + rng.normal(0, 3, size=4))
        classes.append(a["category_id"] - 1 if rng.random() > 0.2 else int(rng.integers(0, 3)))
        masks.append(coco.annToMask(a))
    instances = Instances((info["height"], info["width"]))
    instances.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
    instances.scores = torch.tensor(rng.random(len(boxes)), dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes)
    instances.pred_masks = torch.tensor(np.array(masks)).bool()
    return {"image_id": image_id}, {"instances": instances}


def test_faster_coco_eval_matches_pycocotools(tmp_path):
    root = str(tmp_path / "data")
    generate_synthetic_coco(root, SyntheticSpec(num_train=1, num_val=12, height=96, width=128))
    json_file, image_root = synthetic_paths(root, "val")
    register_coco_dataset("eval_compare_val", json_file, image_root)
    try:
        DatasetCatalog.get("eval_compare_val")  # sets the json id -> contiguous id mapping
        coco = COCO(json_file)
        rng = np.random.default_rng(0)
        pairs = [_noisy_predictions(coco, i, rng) for i in coco.getImgIds()]
        results = []
        for evaluator in (COCOEvaluator("eval_compare_val", use_fast_impl=False,
                                        distributed=False),
                          FasterCOCOEvaluator("eval_compare_val", distributed=False)):
            evaluator.reset()
            for inputs, outputs in pairs:
                evaluator.process([inputs], [outputs])
            results.append(evaluator.evaluate())
        official, faster = results
        for task in ("bbox", "segm"):
            assert 5 < official[task]["AP"] < 95  # a non-trivial case
            for key, value in official[task].items():
                assert faster[task][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
        assert isinstance(build_coco_evaluator("eval_compare_val", str(tmp_path)),
                          FasterCOCOEvaluator)
    finally:
        DatasetCatalog.remove("eval_compare_val")
        MetadataCatalog.remove("eval_compare_val")
