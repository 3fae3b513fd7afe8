"""Detectron2 users' weights: model-zoo/model_final checkpoints and Caffe2 ImageNet files give the
same outputs through resbackbones twin configs as through Detectron2's built-in ResNets."""
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.file_io import PathManager

import resbackbones
from resbackbones.catalog import get_entry
from resbackbones.compat import detectron2_checkpoint_url, detectron2_config_file
from resbackbones.checkpoint import (
    IncompatibleWeightsError,
    ResBackboneCheckpointer,
    UnsafePickleError,
    WeightsUnavailableError,
    load_backbone_weights,
)
from resbackbones.weights.detectron2_names import (
    detectron2_to_resbackbones,
    resbackbones_to_detectron2,
)
from resbackbones.modeling.detectron2_compat import set_stride_in_1x1
from resbackbones.modeling.timm_backbone import TimmBackbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWINS = os.path.join(REPO, "configs", "Detectron2-ModelZoo")
TWIN_NAMES = sorted(name[:-5] for name in os.listdir(TWINS) if not name.startswith("Base-"))
# Small and fast: 128 px images, few proposals, every detection kept.
TEST_OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
             "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
             "TEST.DETECTIONS_PER_IMAGE", "20"]
IMAGES = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(s)) * 255
          for s in (1, 2)]


def model_zoo_group(name):
    return "COCO-InstanceSegmentation" if name.startswith("mask") else "COCO-Detection"


def detectron2_cfg(name, opts=()):
    cfg = get_cfg()
    cfg.merge_from_file(detectron2_config_file(f"{model_zoo_group(name)}/{name}.yaml"))
    cfg.merge_from_list(TEST_OPTS + ["MODEL.WEIGHTS", ""] + list(opts))
    return cfg


def twin_cfg(name, opts=()):
    cfg = get_cfg()
    resbackbones.add_resbackbone_config(cfg)
    cfg.merge_from_file(os.path.join(TWINS, f"{name}.yaml"))
    cfg.merge_from_list(TEST_OPTS + list(opts))
    return cfg


@torch.no_grad()
def randomize(model, seed=0):
    """Random FrozenBN statistics and affine (calibrated so activations stay O(1)) and heads."""
    generator = torch.Generator().manual_seed(seed)
    hooks = []

    def calibrate(module, inputs):
        x = inputs[0]
        n = x.shape[1]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3)) + 1e-3
        module.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(n, generator=generator))
        module.running_var.copy_(var * (0.5 + torch.rand(n, generator=generator)))
        module.weight.copy_(0.5 + torch.rand(n, generator=generator))
        module.bias.copy_(0.1 * torch.randn(n, generator=generator))

    def damp(module, inputs, output):  # small residual branches: a less chaotic random network
        module.weight.mul_(0.2)

    for name, module in model.backbone.bottom_up.named_modules():
        if "BatchNorm" in type(module).__name__:
            hooks.append(module.register_forward_pre_hook(calibrate))
            last = "conv3.norm" if name.rsplit(".", 3)[0] + ".conv3" in dict(
                model.backbone.bottom_up.named_modules()) else "conv2.norm"
            if name.startswith("res") and name.endswith(last):
                hooks.append(module.register_forward_hook(damp))
    model.eval()
    model.backbone.bottom_up(torch.randn(2, 3, 128, 160, generator=generator) * 50)
    for hook in hooks:
        hook.remove()
    for name, parameter in model.named_parameters():
        if name.startswith(("proposal_generator", "roi_heads", "head")):
            if parameter.dim() > 1:
                fan_in = parameter[0].numel()
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator)
                                / fan_in ** 0.5)
            else:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def save_model_zoo_pkl(model, path):
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    return str(path)


def save_pth(model, path):
    torch.save({"model": model.state_dict(), "iteration": 10}, path)
    return str(path)


@torch.no_grad()
def raw_predictions(model):
    inputs = [{"image": image, "height": 128, "width": 160} for image in IMAGES]
    return model.eval().inference(inputs, do_postprocess=False)


# "The same detections": same count and classes, and scores, boxes and mask logits equal up to
# float32 rounding, relative to each field's largest value (boxes in pixels, scores, logits).
SAME_DETECTIONS = 2e-5


def largest_relative_difference(expected, got):
    """The largest difference of scores/boxes/masks between two detectors' outputs, as a
    fraction of each field's largest absolute value (at least 1): what the tests compare with
    SAME_DETECTIONS. Values are only comparable one to one, so the detections must match in
    number and classes (asserted here)."""
    assert len(expected) == len(got) == len(IMAGES)
    largest = 0.0
    for a, b in zip(expected, got):
        assert len(a) > 0, "the test needs detections"
        assert len(a) == len(b)
        assert torch.equal(a.pred_classes, b.pred_classes)
        fields = ["scores", "pred_boxes"] + (["pred_masks"] if a.has("pred_masks") else [])
        for field in fields:
            x, y = a.get(field), b.get(field)
            x, y = (x.tensor, y.tensor) if field == "pred_boxes" else (x, y)
            scale = max(float(x.abs().max()), 1.0)
            largest = max(largest, float((x - y).abs().max()) / scale)
    return largest


@pytest.fixture(scope="module")
def mask_rcnn_r50(tmp_path_factory):
    """Detectron2's built-in Mask R-CNN R50-FPN (STRIDE_IN_1X1, BGR), random, saved both ways."""
    torch.manual_seed(0)
    model = randomize(build_model(detectron2_cfg("mask_rcnn_R_50_FPN_3x")))
    folder = tmp_path_factory.mktemp("d2")
    return (model, save_model_zoo_pkl(model, folder / "model_final_r50.pkl"),
            save_pth(model, folder / "model_final_r50.pth"), raw_predictions(model))


@pytest.mark.slow
@pytest.mark.parametrize("extension", ["pkl", "pth"])
def test_mask_rcnn_r50_model_zoo_checkpoint_gives_the_same_detections(mask_rcnn_r50, extension):
    d2_model, pkl, pth, expected = mask_rcnn_r50
    path = pkl if extension == "pkl" else pth
    cfg = twin_cfg("mask_rcnn_R_50_FPN_3x", ["MODEL.WEIGHTS", path])
    assert cfg.MODEL.RESBACKBONE.STRIDE_IN_1X1 and cfg.INPUT.FORMAT == "BGR"
    model = build_model(cfg)
    extra = ResBackboneCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    assert extra.get("iteration", 10) == 10
    difference = largest_relative_difference(expected, raw_predictions(model))
    print(f"\nMask R-CNN R50-FPN ({extension}): largest relative difference {difference:.3g}")
    assert difference < SAME_DETECTIONS


@pytest.mark.slow
def test_x101_and_r18_detectors_give_the_same_detections(tmp_path):
    torch.manual_seed(1)
    d2_x101 = randomize(build_model(detectron2_cfg("faster_rcnn_X_101_32x8d_FPN_3x")), seed=1)
    expected = raw_predictions(d2_x101)
    path = save_model_zoo_pkl(d2_x101, tmp_path / "x101.pkl")
    del d2_x101
    model = build_model(twin_cfg("faster_rcnn_X_101_32x8d_FPN_3x", ["MODEL.WEIGHTS", path]))
    ResBackboneCheckpointer(model).load(path)
    difference = largest_relative_difference(expected, raw_predictions(model))
    print(f"\nFaster R-CNN X101-32x8d: largest relative difference {difference:.3g}")
    assert difference < SAME_DETECTIONS

    r18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
           "MODEL.RESNETS.STRIDE_IN_1X1", "False"]
    d2_r18 = randomize(build_model(detectron2_cfg("faster_rcnn_R_50_FPN_1x", r18)), seed=2)
    path = save_pth(d2_r18, tmp_path / "r18.pth")
    twin = ["MODEL.RESBACKBONE.ARCH", "resnet18", "MODEL.RESBACKBONE.STRIDE_IN_1X1", "False"]
    model = build_model(twin_cfg("faster_rcnn_R_50_FPN_1x", twin))
    ResBackboneCheckpointer(model).load(path)
    difference = largest_relative_difference(raw_predictions(d2_r18), raw_predictions(model))
    print(f"Faster R-CNN R18: largest relative difference {difference:.3g}")
    assert difference < SAME_DETECTIONS


@pytest.mark.slow
def test_retinanet_r50_gives_the_same_detections(tmp_path):
    opts = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
            "100"]
    torch.manual_seed(4)
    d2_model = randomize(build_model(detectron2_cfg("retinanet_R_50_FPN_1x", opts)), seed=4)
    path = save_model_zoo_pkl(d2_model, tmp_path / "retinanet.pkl")
    model = build_model(twin_cfg("retinanet_R_50_FPN_1x", opts))
    ResBackboneCheckpointer(model).load(path)
    inputs = [{"image": image, "height": 128, "width": 160} for image in IMAGES]
    with torch.no_grad():
        expected = [o["instances"] for o in d2_model.eval()(inputs)]
        got = [o["instances"] for o in model.eval()(inputs)]
    difference = largest_relative_difference(expected, got)
    print(f"\nRetinaNet R50-FPN: largest relative difference {difference:.3g}")
    assert difference < SAME_DETECTIONS


def test_names_round_trip_and_load_strictly_into_detectron2(mask_rcnn_r50):
    d2_model, pkl, _, _ = mask_rcnn_r50
    model = build_model(twin_cfg("mask_rcnn_R_50_FPN_3x", ["MODEL.WEIGHTS", pkl]))
    ResBackboneCheckpointer(model).load(pkl)
    ours = model.state_dict()
    d2_names, unconvertible = resbackbones_to_detectron2(ours)
    assert not unconvertible
    # Detectron2's built-in model takes the converted state with nothing missing or left over.
    reference = build_model(detectron2_cfg("mask_rcnn_R_50_FPN_3x"))
    reference.load_state_dict(d2_names, strict=True)
    back, renamed, unknown = detectron2_to_resbackbones(d2_names, "backbone.bottom_up.body.")
    assert not unknown and len(renamed) == len([k for k in ours if ".body." in k])
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    for key, value in d2_model.state_dict().items():  # and equal to the original file
        assert torch.equal(d2_names[key], value), key


def _caffe2_name(key):
    """Detectron2 ResNet key -> Caffe2 blob name (the inverse of convert_basic_c2_names)."""
    key = key.replace("stem.conv1.norm.", "res_conv1_bn_").replace("stem.conv1.", "conv1_")
    key = re.sub(r"^res(\d)\.(\d+)\.", r"res\1_\2_", key)
    for d2, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"),
                   ("shortcut", "branch1")):
        key = key.replace(d2 + ".norm.", c2 + "_bn_").replace(d2 + ".", c2 + "_")
    return (key.replace("_bn_weight", "_bn_s").replace("_bn_bias", "_bn_b")
            .replace("_weight", "_w"))


def test_caffe2_imagenet_file_matches_detectron2s_own_c2_loading(tmp_path, caplog):
    cfg = detectron2_cfg("faster_rcnn_R_50_FPN_1x", ["MODEL.BACKBONE.NAME",
                                                     "build_resnet_backbone"])
    generator = torch.Generator().manual_seed(3)
    d2_backbone = build_backbone(cfg)
    blobs = {}
    for key, value in d2_backbone.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            continue  # Caffe2 folds BatchNorm statistics into scale and bias
        scale = 0.5 + torch.rand(value.shape, generator=generator) if "norm" in key else 1.0
        blobs[_caffe2_name(key)] = (value * scale).numpy()
    blobs.update(fc1000_w=np.zeros((1000, 2048), np.float32),
                 fc1000_b=np.zeros(1000, np.float32),
                 conv1_w_momentum=np.zeros((64, 3, 7, 7), np.float32))
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    DetectionCheckpointer(d2_backbone).load(str(path))  # Detectron2's own Caffe2 conversion
    # Through the config: STRIDE_IN_1X1 + WEIGHTS; Detectron2's BGR/std-1 input is not flagged.
    twin = twin_cfg("faster_rcnn_R_50_FPN_1x", ["MODEL.BACKBONE.NAME", "build_resbackbone_backbone",
                                                "MODEL.RESBACKBONE.WEIGHTS", str(path)])
    with caplog.at_level(logging.WARNING):
        ours = build_backbone(twin)
    assert "Input normalisation does not match" not in caplog.text
    assert ours.body.layer2[0].conv1.stride == (2, 2)
    report = load_backbone_weights(ours, str(path))
    assert report.complete and not report.missing and not report.unexpected
    assert len(report.filled) == 2 * 53 and len(report.converted) == len(report.loaded)
    assert sorted(report.classifier) == ["fc.bias", "fc.weight"]
    image = torch.randn(1, 3, 96, 128, generator=generator)
    with torch.no_grad():
        expected, got = d2_backbone.eval()(image), ours.eval()(image)
    for name in ("res2", "res3", "res4", "res5"):
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4 * scale)


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_runs_code_is_refused_without_effect(tmp_path):
    victim = tmp_path / "created.txt"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _CreatesAFile(str(victim))},
                                   "__author__": "x"}))
    with torch.device("meta"):
        model = build_model(twin_cfg("faster_rcnn_R_50_FPN_1x", ["MODEL.DEVICE", "meta"]))
    with pytest.raises(UnsafePickleError, match="'io.open'"):
        ResBackboneCheckpointer(model).load(str(path))
    assert not victim.exists()


@pytest.mark.parametrize("arch, first", [
    ("resnet101", "First tensor missing from the file: 'layer3.6.conv1.weight'"),
    ("resnext50_32x4d", "First mismatching tensor: 'layer1.0.conv1.weight' has shape "
                        "(64, 64, 1, 1) in the file, (128, 64, 1, 1) in the model"),
])
def test_checkpoint_of_another_depth_or_width_is_refused(mask_rcnn_r50, arch, first):
    _, pkl, _, _ = mask_rcnn_r50
    opts = ["MODEL.RESBACKBONE.ARCH", arch, "MODEL.DEVICE", "meta"]
    with torch.device("meta"):
        model = build_model(twin_cfg("mask_rcnn_R_50_FPN_3x", opts))
    with pytest.raises(IncompatibleWeightsError) as error:
        ResBackboneCheckpointer(model).load(pkl)
    assert first in str(error.value) and "resnet50" in str(error.value)


def test_model_zoo_name_offline_says_where_to_put_the_file(tmp_path, monkeypatch, mask_rcnn_r50):
    def offline(path, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(PathManager, "get_local_path", offline)
    cfg = twin_cfg("mask_rcnn_R_50_FPN_3x")
    name = cfg.MODEL.WEIGHTS
    assert name == "detectron2://" + detectron2_checkpoint_url(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml").split("/detectron2/", 1)[1]
    model = build_model(cfg)
    cached = tmp_path / "detectron2" / name[len("detectron2://"):]
    with pytest.raises(WeightsUnavailableError) as error:
        ResBackboneCheckpointer(model).load(name)
    assert str(cached) in str(error.value) and "https://dl.fbaipublicfiles.com" in str(error.value)
    cached.parent.mkdir(parents=True)
    os.symlink(mask_rcnn_r50[1], cached)  # the file, where PathManager caches it
    ResBackboneCheckpointer(model).load(name)
    assert torch.equal(model.backbone.bottom_up.body.conv1.weight,
                       mask_rcnn_r50[0].backbone.bottom_up.stem.conv1.weight)


def test_stride_in_1x1_moves_the_stride_and_refuses_other_blocks():
    backbone = set_stride_in_1x1(TimmBackbone(get_entry("resnet50"), norm="BN"))
    assert backbone.body.layer2[0].conv1.stride == (2, 2)
    assert backbone.body.layer2[0].conv2.stride == (1, 1)
    assert backbone.body.layer1[0].conv1.stride == (1, 1)
    assert backbone(torch.zeros(1, 3, 64, 64))["res5"].shape[-1] == 2
    with pytest.raises(ValueError, match="basic blocks"):
        set_stride_in_1x1(TimmBackbone(get_entry("resnet18"), norm="BN"))
    with pytest.raises(ValueError, match="SE-ResNet"):
        set_stride_in_1x1(TimmBackbone(get_entry("seresnet50"), norm="BN"))


_ARCH = {(50, 1): "resnet50", (101, 1): "resnet101", (101, 32): "resnext101_32x8d"}
_BACKBONE_KEYS = ("MODEL.BACKBONE.NAME", "MODEL.WEIGHTS")


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(map(tuple, value)) if key == "SIZES" else value
    return flat


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_twin_config_equals_detectron2_model_zoo_config(name):
    ours = _flatten(twin_cfg(name))
    theirs = _flatten(detectron2_cfg(name))
    differing = {k for k in theirs if ours[k] != theirs[k] and not k.startswith("MODEL.RESNETS.")}
    assert differing <= set(_BACKBONE_KEYS), differing
    assert ours["MODEL.WEIGHTS"] == "detectron2://" + detectron2_checkpoint_url(
        f"{model_zoo_group(name)}/{name}.yaml").split("/detectron2/", 1)[1]
    resnets = {k.split(".")[-1]: v for k, v in theirs.items() if k.startswith("MODEL.RESNETS.")}
    assert ours["MODEL.RESBACKBONE.ARCH"] == _ARCH[(resnets["DEPTH"], resnets["NUM_GROUPS"])]
    assert ours["MODEL.RESBACKBONE.STRIDE_IN_1X1"] == resnets["STRIDE_IN_1X1"]
    assert ours["MODEL.RESBACKBONE.NORM"] == resnets["NORM"]
    assert ours["MODEL.RESBACKBONE.OUT_FEATURES"] == resnets["OUT_FEATURES"]
    assert (resnets["WIDTH_PER_GROUP"], resnets["NUM_GROUPS"]) in ((64, 1), (8, 32))
    assert resnets["DEFORM_ON_PER_STAGE"] == [False] * 4 and resnets["RES5_DILATION"] == 1


def test_convert_tool_detectron2_to_resbackbones_and_back(tmp_path, mask_rcnn_r50):
    from resbackbones.checkpoint import convert as tool  # tools/convert_weights.py's main

    d2_model, pkl, _, _ = mask_rcnn_r50
    ours = tmp_path / "ours.safetensors"
    back = tmp_path / "back.pth"
    assert tool.main(["--from", "detectron2", "--to", "resbackbones", "--input", pkl,
                      "--output", str(ours)]) == 0
    assert tool.main(["--from", "resbackbones", "--to", "detectron2", "--input", str(ours),
                      "--output", str(back)]) == 0
    from safetensors.torch import load_file

    assert any(k.startswith("backbone.bottom_up.body.layer4.") for k in load_file(str(ours)))
    model = build_model(twin_cfg("mask_rcnn_R_50_FPN_3x"))
    ResBackboneCheckpointer(model).load(str(ours))  # resbackbones names load as they are
    assert torch.equal(model.backbone.bottom_up.body.layer4[2].bn3.running_var,
                       d2_model.backbone.bottom_up.res5[2].conv3.norm.running_var)
    restored = torch.load(back, weights_only=True)["model"]
    original = d2_model.state_dict()
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[k], original[k]) for k in original)
