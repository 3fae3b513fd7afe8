"""Every config under configs/ merges into a fresh cfg and builds its model; generated configs
are up to date; LazyConfig configs instantiate."""
import glob
import os
import sys

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from resbackbones import generate as generate_configs
from resbackbones.catalog import catalog_names, input_normalization
from resbackbones.engine.launch import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

YAML_CONFIGS = sorted(os.path.relpath(p, REPO)
                      for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                         recursive=True))
LAZY_CONFIGS = sorted(os.path.relpath(p, REPO)
                      for p in glob.glob(os.path.join(REPO, "configs", "new_baselines", "*.py")))
# No ImageNet download in tests: random weights need trainable norms and no frozen stages.
FROM_SCRATCH = ["MODEL.RESBACKBONE.WEIGHTS", "", "MODEL.RESBACKBONE.NORM", "BN",
                "MODEL.BACKBONE.FREEZE_AT", "0"]


def test_configs_found():
    leaves = [p for p in YAML_CONFIGS if "COCO-" in p and "Base-" not in p]
    # Faster + Mask R-CNN, 1x + 3x for every catalog entry, plus one RetinaNet.
    assert len(leaves) == 4 * len(catalog_names()) + 1
    assert len(LAZY_CONFIGS) == 3


@pytest.mark.parametrize("config", YAML_CONFIGS)
def test_yaml_merges_and_builds(config):
    cfg = build_cfg(os.path.join(REPO, config), FROM_SCRATCH + ["MODEL.DEVICE", "meta"])
    ours = cfg.MODEL.BACKBONE.NAME.startswith("build_resbackbone_")
    # Only configs/Detectron2-ModelZoo (references for comparisons) use Detectron2's ResNet.
    assert ours or "Detectron2-ModelZoo" in config
    if ours and "Base-" not in os.path.basename(config):
        assert cfg.MODEL.RESBACKBONE.ARCH in catalog_names()
    if "Base-" in os.path.basename(config) and "COCO-" not in config:
        return  # the shared bases name no architecture; their children are built below
    # Shapes only (meta device): every catalog architecture in seconds, no memory.
    with torch.device("meta"):
        model = build_model(cfg)
    if ours:
        assert model.backbone.bottom_up.entry.name == cfg.MODEL.RESBACKBONE.ARCH
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        assert model.roi_heads.mask_on == cfg.MODEL.MASK_ON


def test_coco_configs_use_standard_hyper_parameters_and_catalog_normalisation():
    for config in YAML_CONFIGS:
        if "COCO-" not in config or "Base-" in config:
            continue
        cfg = build_cfg(os.path.join(REPO, config))
        assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
        assert cfg.DATASETS.TEST == ("coco_2017_val",)
        assert cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.BASE_LR == (0.01 if "retinanet" in config else 0.02)
        assert cfg.MODEL.RESBACKBONE.WEIGHTS == "imagenet"
        assert cfg.MODEL.RESBACKBONE.NORM == "FrozenBN"
        expected_format, mean, std = input_normalization(cfg.MODEL.RESBACKBONE.ARCH)
        assert cfg.INPUT.FORMAT == expected_format
        assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(mean)
        assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(std)
        schedule = "3x" if config.endswith("_3x.yaml") else "1x"
        assert cfg.SOLVER.MAX_ITER == generate_configs.SCHEDULES[schedule][1]


def test_generated_configs_are_up_to_date():
    rendered = generate_configs.render_configs()
    for relative, content in rendered.items():
        with open(os.path.join(REPO, "configs", relative)) as f:
            assert f.read() == content, f"{relative} is stale: run tools/generate_configs.py"
    on_disk = {os.path.relpath(p, os.path.join(REPO, "configs"))
               for d in ("COCO-Detection", "COCO-InstanceSegmentation")
               for p in glob.glob(os.path.join(REPO, "configs", d, "*.yaml"))}
    assert on_disk == set(rendered), "configs not produced by tools/generate_configs.py"


def test_sibling_leaves_differ_only_in_architecture_lines():
    rendered = generate_configs.render_configs()
    first = rendered["COCO-InstanceSegmentation/mask_rcnn_resnet18_FPN_1x.yaml"].splitlines()
    second = rendered["COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml"].splitlines()
    differing = [(a, b) for a, b in zip(first, second) if a != b]
    assert len(first) == len(second) and len(differing) == 2  # comment + ARCH
    assert differing[1] == ('    ARCH: "resnet18"', '    ARCH: "resnet50"')


@pytest.mark.parametrize("config", LAZY_CONFIGS)
def test_lazy_config_instantiates(config):
    cfg = LazyConfig.load(os.path.join(REPO, config))
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    # SyncBN needs a process group; BN builds the same modules at tiny cost.
    cfg.model.backbone.bottom_up.norm = "BN"
    cfg.model.backbone.norm = "BN"
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert model.backbone.bottom_up.entry.name == cfg.model.backbone.bottom_up.entry.name
    assert list(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]


def test_lazy_config_r50_forward_tiny_image():
    cfg = LazyConfig.load(
        os.path.join(REPO, "configs/new_baselines/mask_rcnn_R50_FPN_100ep_LSJ.py"))
    cfg.model.backbone.bottom_up.norm = "BN"
    cfg.model.backbone.norm = "BN"
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
    assert outputs[0]["instances"].image_size == (64, 96)
    # The same speed-up layers as the YAML configs' ResBackboneRCNN.from_config builds.
    from resbackbones.modeling import ParallelROIAlign
    from resbackbones.modeling.winograd import WinogradDetectron2Conv2d

    assert type(model.roi_heads.box_pooler.level_poolers[0]) is ParallelROIAlign
    assert type(model.roi_heads.mask_head.mask_fcn1) is WinogradDetectron2Conv2d
    assert type(model.proposal_generator.rpn_head.conv[0]) is WinogradDetectron2Conv2d


@pytest.mark.parametrize("config", [p for p in YAML_CONFIGS if "quick_schedules" in p])
def test_quick_schedule_trains_one_step_on_cpu(config):
    from detectron2.utils.events import EventStorage

    cfg = build_cfg(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu"])
    # From scratch with a trainable norm (the quickstart uses GN: see its config for why).
    assert cfg.MODEL.RESBACKBONE.NORM in ("BN", "GN") and cfg.MODEL.RESBACKBONE.WEIGHTS == ""
    model = build_model(cfg).train()
    image = torch.rand(3, 64, 96) * 255
    from detectron2.structures import Boxes, Instances

    instances = Instances((64, 96), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0]])),
                          gt_classes=torch.tensor([1]))
    if cfg.MODEL.MASK_ON:
        from detectron2.structures import PolygonMasks

        instances.gt_masks = PolygonMasks([[[10, 10, 40, 10, 40, 50, 10, 50]]])
    with EventStorage(0):
        losses = model([{"image": image, "instances": instances}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # The loss reaches the backbone: every trainable body parameter gets a finite gradient, and
    # each stage's gradients are not all zero (a detached or frozen-by-mistake stage would be).
    body = model.backbone.bottom_up.body
    trainable = {name: p for name, p in body.named_parameters() if p.requires_grad}
    assert trainable, "nothing in the backbone trains"
    missing = [name for name, p in trainable.items() if p.grad is None]
    assert not missing, f"no gradient reached: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    stages = {name.split(".")[0] for name in trainable}
    silent = [stage for stage in sorted(stages)
              if not any(p.grad.abs().sum() > 0 for name, p in trainable.items()
                         if name.split(".")[0] == stage)]
    assert not silent, f"all-zero gradients in {silent}"
