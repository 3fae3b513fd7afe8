"""End to end: train_net's main trains and evaluates; a reloaded checkpoint gives the same masks;
the configs build; bad data stops training before step 0."""
import csv
import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from resunetpp.data import DatasetValidationError, SyntheticPolypSpec, generate_synthetic_polyps
from resunetpp.engine import QUICKSTART_CONFIG, build_argument_parser, main

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TINY = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "()",
        "RESUNETPP.INPUT.SIZE", "[32, 32]", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS", "[8, 16, 32]",
        "MODEL.RESUNETPP.BRIDGE_CHANNELS", "32", "MODEL.RESUNETPP.HEAD_CHANNELS", "8"]


def _args(data, output, *extra):
    return build_argument_parser().parse_args(
        ["--config-file", QUICKSTART_CONFIG, "--dataset", f"rupp_tiny=kvasir:{data}",
         *extra, "OUTPUT_DIR", str(output), "DATASETS.TRAIN", "('rupp_tiny_train',)",
         "DATASETS.TEST", "('rupp_tiny_val',)", *TINY])


def _rows(path):
    with open(path) as file:
        return {row["image_id"]: row for row in csv.DictReader(file)}


@pytest.mark.slow
def test_train_evaluate_and_reload_gives_identical_masks(tmp_path):
    torch.manual_seed(0)
    data = generate_synthetic_polyps(str(tmp_path / "data"), SyntheticPolypSpec(20, 40, 48))
    results = main(_args(data, tmp_path / "train"))
    figures = results  # Detectron2 returns one test set's results without its name
    for key in ("dice", "iou", "precision", "recall", "miou"):
        assert 0.0 <= figures["segmentation"][key] <= 100.0
    assert "mIoU" in figures["sem_seg"]  # Detectron2's SemSegEvaluator ran alongside
    assert figures["segmentation"]["images"] == 2
    for name in ("model_final.pth", "config.yaml", "eval_results.json", "splits/rupp_tiny.txt",
                 "inference/rupp_tiny_val_per_image.csv"):
        assert os.path.isfile(tmp_path / "train" / name), name
    trained = _rows(tmp_path / "train" / "inference" / "rupp_tiny_val_per_image.csv")

    weights = str(tmp_path / "train" / "model_final.pth")
    main(_args(data, tmp_path / "reload", "--eval-only", "MODEL.WEIGHTS", weights))
    reloaded = _rows(tmp_path / "reload" / "inference" / "rupp_tiny_val_per_image.csv")
    assert reloaded == trained  # same masks: same predicted pixels and scores per image

    from resunetpp.predictor import SegmentationPredictor, predict_overlay

    predictor = SegmentationPredictor(str(tmp_path / "train" / "config.yaml"), weights,
                                      device="cpu")
    for row in trained.values():
        image = np.asarray(Image.open(row["file_name"]).convert("RGB"))
        overlay, info = predict_overlay(predictor, image)
        assert overlay.shape == image.shape
        assert info["area_pixels"] == int(row["predicted_pixels"])
        assert 0.5 <= info["confidence"] <= 1.0

    import gradio as gr
    from demo import build_app  # the project's demo.py

    assert isinstance(build_app(predictor), gr.Blocks)


def test_bad_data_stops_before_training(tmp_path):
    data = generate_synthetic_polyps(str(tmp_path / "data"), SyntheticPolypSpec(10, 32, 32))
    os.remove(os.path.join(data, "masks", "polyp_0003.jpg"))
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(
        os.path.join(data, "masks", "polyp_0004.jpg"))
    with pytest.raises(DatasetValidationError, match="image_without_mask: 1") as error:
        main(_args(data, tmp_path / "out"))
    assert "non_binary_mask: 1" in str(error.value)
    assert "SKIP_BAD_PAIRS" in str(error.value)
    assert not glob.glob(str(tmp_path / "out" / "*.pth"))


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))),
                         ids=os.path.basename)
def test_every_config_builds_a_model(config):
    from detectron2.modeling import build_model

    from resunetpp import build_resunetpp_config

    cfg = build_resunetpp_config(config, ["MODEL.DEVICE", "cpu", "MODEL.RESBACKBONE.WEIGHTS", ""])
    assert tuple(cfg.RESUNETPP.INPUT.SIZE) in ((256, 256), (64, 64))
    model = build_model(cfg)
    assert type(model).__name__ == "SemanticSegmentor"
    assert type(model.sem_seg_head).__name__ == "ResUNetPPHead"
