"""configs/new_baselines/*.py keep Detectron2's config tree, and Detectron2's own
``tools/lazyconfig_train_net.py`` trains and evaluates them, on v0.6 and on upstream main.

Detectron2's documentation and its users address the new baselines by paths
(``model.roi_heads.num_classes=3``, ``model.roi_heads.box_head.fc_dims=[64]``, ...). Ours must
take the same overrides with the same meaning: the reference is Detectron2's own
``new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py`` with the same overrides. The checks run in
this process (v0.6) and in a subprocess with the main snapshot first on PYTHONPATH
(tests/lazyconfig_checks.py holds what both run).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
import torch

import lazyconfig_checks as checks
from detectron2_main import REPO, main_environment, require_detectron2_main, run_on_main
from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths

FLAVOURS = ("v0.6", "main")
R50 = "configs/new_baselines/mask_rcnn_R50_FPN_100ep_LSJ.py"

# Paths whose values differ from Detectron2's config on purpose: our meta-architecture and
# bottom-up network, and timm's input convention (RGB, ImageNet statistics).
DIFFERENT_ON_PURPOSE = {"model._target_", "model.backbone.bottom_up._target_",
                        "model.input_format", "dataloader.train.mapper.image_format"}
INPUT_STATISTICS_PREFIXES = ("model.pixel_mean.", "model.pixel_std.")
SPEEDUP_KEYS = {"model.winograd_heads", "model.parallel_roi_align"}
BOTTOM_UP = "model.backbone.bottom_up."


@pytest.fixture(scope="module")
def main_report() -> Dict[str, Any]:
    """model_facts, config trees and Detectron2's head shapes, computed on main."""
    root = require_detectron2_main()
    code = ("import sys; sys.path.insert(0, 'tests'); import lazyconfig_checks; "
            "print('REPORT ' + lazyconfig_checks.main_flavour_report())")
    result = run_on_main(root, code, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert report, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(report[-1][len("REPORT "):])


def _facts(flavour: str, config: str, report) -> Dict[str, Any]:
    if flavour == "v0.6":
        return checks.model_facts(config)
    return report(flavour)["facts"][config]


def _reference_head_shapes(flavour: str, report) -> Dict[str, List[int]]:
    if flavour == "v0.6":
        return checks.detectron2_head_shapes()
    return report(flavour)["detectron2_head_shapes"]


def _trees(flavour: str, config: str, report) -> Dict[str, Dict[str, str]]:
    if flavour == "v0.6":
        return checks.config_trees(config)
    return report(flavour)["trees"][config]


@pytest.fixture
def report(request):
    """A callable giving main's report only where a test asks for main (v0.6 runs here)."""
    def get(flavour: str) -> Dict[str, Any]:
        assert flavour == "main"
        return request.getfixturevalue("main_report")
    return get


def test_configs_found():
    assert len(checks.CONFIGS) == 3 and R50 in checks.CONFIGS


@pytest.mark.parametrize("config", checks.CONFIGS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_detectron2_overrides_take_effect(flavour, config, report):
    facts = _facts(flavour, config, report)
    assert facts["flavour"] == flavour
    head_convs = ["WinogradDetectron2Conv2d"] if facts["nnpack"] else ["Conv2d"]
    assert {key: value for key, value in facts.items()
            if key not in ("flavour", "nnpack", "head_shapes")} == {
        # Detectron2's own heads, with the speed-ups put in by the meta-architecture's keys.
        "meta_architecture": "ResBackboneRCNN",
        "roi_heads": "StandardROIHeads",
        "proposal_generator": "RPN",
        "roi_aligns": ["ParallelROIAlign"],
        "head_convs": head_convs,
        # model.roi_heads.num_classes=3 reaches the box and mask predictors (3 + background).
        "num_classes": 3,
        "cls_score": [64, 4],
        "bbox_pred": [64, 3 * 4],
        "mask_predictor_channels": 3,
        # model.roi_heads.box_head.* / box_predictor.input_shape / mask_head.conv_dims.
        "box_head_convs": [32],
        "box_head_fcs": [64],
        "post_nms_topk": [64, 32],
        # model.backbone.bottom_up.{norm,entry.name} and model.backbone.norm.
        "arch": "resnet18",
        "bottom_up_norms": ["BatchNorm2d"],
        "fpn_norms": ["BatchNorm2d"],
        "input_format": "RGB",
    }
    # Parameter for parameter the heads that Detectron2's own config builds with these overrides.
    assert facts["head_shapes"] == _reference_head_shapes(flavour, report)


@pytest.mark.parametrize("config", checks.CONFIGS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_config_tree_is_detectron2s(flavour, config, report):
    trees = _trees(flavour, config, report)
    ours, detectron2 = trees["ours"], trees["detectron2"]
    # Every path of Detectron2's config is ours too, but for its ResNet's (stem, stages, ...).
    assert all(path.startswith(BOTTOM_UP) for path in set(detectron2) - set(ours))
    assert {path for path in set(ours) - set(detectron2)
            if not path.startswith(BOTTOM_UP)} == SPEEDUP_KEYS
    differing = {path for path in set(ours) & set(detectron2) if ours[path] != detectron2[path]}
    assert {path for path in differing
            if not path.startswith(INPUT_STATISTICS_PREFIXES)} == DIFFERENT_ON_PURPOSE
    # The test mapper follows the train mapper's format, through Detectron2's own interpolation.
    assert ours["dataloader.test.mapper.image_format"] == "${...train.mapper.image_format}"


def test_speedups_are_chosen_by_keys_with_the_same_state_dict():
    import torch.nn as nn
    from detectron2.layers import ROIAlign

    from resbackbones.modeling import ParallelROIAlign

    fast = checks._instantiate_on_meta(checks._load(R50, checks.OVERRIDES).model)
    stock = checks._instantiate_on_meta(checks._load(
        R50, checks.OVERRIDES + ["model.winograd_heads=False",
                                 "model.parallel_roi_align=False"]).model)
    assert checks._shapes(fast) == checks._shapes(stock)
    assert type(stock.roi_heads.box_pooler.level_poolers[0]) is ROIAlign
    assert type(fast.roi_heads.box_pooler.level_poolers[0]) is ParallelROIAlign
    assert type(fast.roi_heads.mask_pooler.level_poolers[0]) is ParallelROIAlign
    stock_rpn_conv = stock.proposal_generator.rpn_head.conv[0]
    assert type(stock_rpn_conv).__name__ == "Conv2d" and isinstance(stock_rpn_conv, nn.Conv2d)
    assert fast.winograd_heads == bool(torch._nnpack_available())
    assert stock.winograd_heads is False and stock.parallel_roi_align is False


# --- Detectron2's tools/lazyconfig_train_net.py, unmodified ----------------------------------

# A 4-image miniature COCO 2017: the shapes' classes become COCO's first three (person, bicycle,
# car), because Detectron2's builtin coco_2017_* metadata fixes the 80 categories.
SPEC = SyntheticSpec(num_train=4, num_val=2, seed=3, height=96, width=128, max_instances=3)
NUM_CLASSES = 3
SMOKE_OVERRIDES = [
    # One CPU process, 2 iterations, evaluation and checkpoint at the end.
    "train.device=cpu", "train.max_iter=2", "train.eval_period=2",
    "train.checkpointer.period=100", "train.amp.enabled=False", "train.seed=0",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    # Large-scale jitter at 128x128 instead of 1024x1024 (resize, then crop and pad).
    "dataloader.train.mapper.augmentations.0.target_height=128",
    "dataloader.train.mapper.augmentations.0.target_width=128",
    "dataloader.train.mapper.augmentations.1.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=96",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    # pycocotools' COCOeval: the fast one needs Detectron2's C++ extension.
    "dataloader.evaluator.use_fast_impl=False",
    # Small heads, few ROIs; every detection kept so that masks are evaluated too.
    f"model.roi_heads.num_classes={NUM_CLASSES}", "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.box_head.conv_dims=[32]", "model.roi_heads.box_head.fc_dims=[64]",
    "model.roi_heads.box_predictor.input_shape.channels=64",
    "model.roi_heads.mask_head.conv_dims=[32,32]",
    "model.proposal_generator.pre_nms_topk=[200,100]",
    "model.proposal_generator.post_nms_topk=[64,32]",
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
    "model.roi_heads.box_predictor.test_topk_per_image=10",
    # BN, not SyncBN (one process); ResNet-18 for speed.
    "model.backbone.bottom_up.norm=BN", "model.backbone.norm=BN",
    "model.backbone.bottom_up.entry.name=resnet18",
]
SMOKE_TIMEOUT = 300


def write_coco_2017(datasets: Path, spec: SyntheticSpec) -> None:
    """The synthetic shapes in the layout of Detectron2's builtin ``coco_2017_{train,val}``
    (``$DETECTRON2_DATASETS/coco/annotations/instances_{split}2017.json``,
    ``coco/{split}2017/``), with COCO's 80 categories listed (the builtin metadata asserts them)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    shapes = datasets / "shapes"
    generate_synthetic_coco(str(shapes), spec)
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "coco"}
                  for c in COCO_CATEGORIES if c["isthing"]]
    coco = datasets / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(str(shapes), split)
        content = json.loads(Path(json_file).read_text())
        assert {a["category_id"] for a in content["annotations"]} <= {1, 2, 3}
        content["categories"] = categories
        (coco / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
        os.symlink(image_root, coco / f"{split}2017")


@pytest.fixture(scope="module")
def coco_2017(tmp_path_factory) -> Path:
    datasets = tmp_path_factory.mktemp("datasets")
    write_coco_2017(datasets, SPEC)
    return datasets


def _lazyconfig_train_net(root: Path, flavour: str, datasets: Path, output: Path,
                          overrides: Sequence[str]) -> str:
    """Run the snapshot's ``tools/lazyconfig_train_net.py`` as it is, on ``flavour`` (main: the
    snapshot first on PYTHONPATH; v0.6: this environment's); returns its output, failing with
    the tail when the exit code is not 0. Output goes to a file, never a pipe."""
    env = main_environment(root) if flavour == "main" else dict(os.environ)
    env.update(DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    argv = [sys.executable, str(root / "tools" / "lazyconfig_train_net.py"),
            "--config-file", R50, *overrides, f"train.output_dir={output}"]
    log = output.parent / f"{output.name}.log"
    with open(log, "w") as out:
        code = subprocess.run(argv, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
                              timeout=SMOKE_TIMEOUT).returncode
    text = log.read_text()
    assert code == 0, f"{' '.join(argv)} exited {code}:\n{text[-4000:]}"
    return text


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_detectron2_lazyconfig_train_net_trains_and_evaluates(flavour, coco_2017, tmp_path):
    import detectron2

    root = require_detectron2_main()
    output = tmp_path / "output"
    log = _lazyconfig_train_net(root, flavour, coco_2017, output, SMOKE_OVERRIDES)
    package = root / "detectron2" if flavour == "main" else Path(detectron2.__file__).parent
    assert f" @{package}\n" in log  # the environment report names the flavour that ran

    text = (output / "log.txt").read_text()
    assert "Starting training from iteration 0" in text
    for task in ("bbox", "segm"):
        assert f"copypaste: Task: {task}" in text
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    results = metrics[-1]
    assert results["iteration"] == 2
    for key in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"):
        # Evaluated detections (a random model's AP is 0, but a number: NaN means none).
        assert not math.isnan(results[key]) and 0.0 <= results[key] <= 100.0, key
    assert all(math.isfinite(m["total_loss"]) for m in metrics if "total_loss" in m)

    assert (output / "last_checkpoint").read_text().strip() == "model_final.pth"
    checkpoint = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1
    weights = checkpoint["model"]
    # The overrides shaped what was trained: 3 classes + background, a 64-wide box head, R18.
    assert list(weights["roi_heads.box_predictor.cls_score.weight"].shape) == [NUM_CLASSES + 1, 64]
    assert list(weights["roi_heads.mask_head.predictor.weight"].shape) == [NUM_CLASSES, 32, 1, 1]
    assert list(weights["backbone.bottom_up.body.layer4.1.conv2.weight"].shape) == [512, 512, 3, 3]
    assert not any(".layer4.2." in name for name in weights)  # ResNet-18: two blocks per stage
