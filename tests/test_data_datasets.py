"""Dataset registration from --dataset specs and the early missing-file checks."""
import argparse
import os

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from resbackbones.data import (SyntheticSpec, check_datasets_exist, generate_synthetic_coco,
                               parse_dataset_spec, register_dataset_specs, synthetic_paths)
from resbackbones.engine.launch import build_argument_parser, build_cfg, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")


@pytest.mark.parametrize("spec, expected", [
    ("a=x/ann.json:x/images", ("a", "x/ann.json", "x/images")),
    ("b_train=C:/data/t.JSON:C:/data/img", ("b_train", "C:/data/t.JSON", "C:/data/img")),
])
def test_parse_dataset_spec(spec, expected):
    assert parse_dataset_spec(spec) == expected


@pytest.mark.parametrize("spec", ["noequals", "a=ann.json", "a=ann.txt:images", "=a.json:b",
                                  "a=a.json:"])
def test_parse_dataset_spec_rejects(spec):
    with pytest.raises(ValueError, match="NAME=JSON:IMAGE_DIR"):
        parse_dataset_spec(spec)


def test_register_dataset_specs_loads_records(tmp_path):
    root = str(tmp_path)
    generate_synthetic_coco(root, SyntheticSpec(num_train=2, num_val=1, height=64, width=64))
    json_file, image_root = synthetic_paths(root, "train")
    assert register_dataset_specs([f"mine_train={json_file}:{image_root}"]) == ["mine_train"]
    try:
        assert len(DatasetCatalog.get("mine_train")) == 2
        assert MetadataCatalog.get("mine_train").thing_classes == ["circle", "triangle",
                                                                   "rectangle"]
    finally:
        DatasetCatalog.remove("mine_train")
        MetadataCatalog.remove("mine_train")


def test_missing_coco_names_path_and_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Detectron2 registered coco_2017_* relative to ./datasets
    cfg = build_cfg(QUICK, ["DATASETS.TRAIN", "('coco_2017_train',)"])
    with pytest.raises(FileNotFoundError) as error:
        check_datasets_exist(cfg)
    message = str(error.value)
    assert "instances_train2017.json" in message and "DETECTRON2_DATASETS" in message


def test_unknown_dataset_name_suggests_flag():
    cfg = build_cfg(QUICK, ["DATASETS.TRAIN", "('no_such_set',)", "DATASETS.TEST", "()"])
    with pytest.raises(KeyError, match="--dataset no_such_set=JSON:IMAGE_DIR"):
        check_datasets_exist(cfg)


def test_train_net_fails_before_training_on_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nothing" / "ann.json"
    args = build_argument_parser().parse_args([
        "--config-file", QUICK, "--dataset", f"ghost_train={missing}:{tmp_path / 'img'}",
        "DATASETS.TRAIN", "('ghost_train',)", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match=str(missing)):
        main(args)
    assert not (tmp_path / "out" / "last_checkpoint").exists()
    assert not (tmp_path / "out" / "metrics.json").exists()
