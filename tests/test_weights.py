"""Weight loading: round trips from timm/torchvision files, refusals, safe pickles, conversion."""
import os
import pickle

import pytest
import timm
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from safetensors.torch import save_file
from torch import nn

import resbackbones
from resbackbones.catalog import get_entry
from resbackbones.checkpoint import (
    IncompatibleWeightsError,
    UnsafePickleError,
    WeightsUnavailableError,
    load_backbone_weights,
    load_state_dict_file,
    safe_load_pickle,
)
from resbackbones.config import check_input_normalization
from resbackbones.modeling.timm_backbone import TimmBackbone
from helpers import randomize_norm_statistics

IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
STAGES = ["res2", "res3", "res4", "res5"]


def save_state(state, path):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return str(path)


def torchvision_features(model, image):
    x = model.maxpool(model.relu(model.bn1(model.conv1(image))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


def make_cfg(arch, weights, norm="BN", name="build_resbackbone_backbone"):
    cfg = get_cfg()
    resbackbones.add_resbackbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESBACKBONE.ARCH = arch
    cfg.MODEL.RESBACKBONE.NORM = norm
    cfg.MODEL.RESBACKBONE.WEIGHTS = weights
    return cfg


def assert_features_equal(got, expected, tolerance=1e-5):
    """Equal up to float32 rounding, measured against each feature map's scale."""
    for name, tensor in zip(STAGES, expected):
        scale = float(tensor.abs().max())
        torch.testing.assert_close(got[name], tensor, rtol=tolerance, atol=tolerance * scale)


@pytest.fixture(scope="module")
def timm_resnet50():
    torch.manual_seed(0)
    return randomize_norm_statistics(timm.create_model("resnet50", pretrained=False)).eval()


@pytest.fixture(scope="module")
def timm_resnet50_file(tmp_path_factory, timm_resnet50):
    return save_state(timm_resnet50.state_dict(), tmp_path_factory.mktemp("w") / "r50.pth")


@pytest.mark.parametrize("extension", [".pth", ".bin", ".safetensors"])
def test_timm_checkpoint_round_trip(tmp_path, timm_resnet50, extension):
    path = save_state(timm_resnet50.state_dict(), tmp_path / f"resnet50{extension}")
    backbone = build_backbone(make_cfg("resnet50", path)).eval()
    report = load_backbone_weights(backbone, path)
    assert report.complete and not report.missing
    assert sorted(report.classifier) == ["fc.bias", "fc.weight"]
    reference = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    reference.load_state_dict(timm_resnet50.state_dict(), strict=False)
    with torch.no_grad():
        assert_features_equal(backbone(IMAGE), reference.eval()(IMAGE))


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    source = randomize_norm_statistics(getattr(torchvision.models, arch)(weights=None)).eval()
    path = save_state(source.state_dict(), tmp_path / f"{arch}.pth")
    backbone = TimmBackbone(get_entry(arch), norm="BN").eval()
    report = load_backbone_weights(backbone, path)
    assert not report.missing and not report.mismatched and not report.unexpected
    assert sorted(report.classifier) == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        assert_features_equal(backbone(IMAGE), torchvision_features(source, IMAGE))


def test_wrong_architecture_is_refused_naming_the_mismatch(timm_resnet50_file):
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError) as error:
        load_backbone_weights(backbone, timm_resnet50_file)
    message = str(error.value)
    assert "'resnet18'" in message and "shape mismatches" in message
    assert "layer1.0.conv1.weight" in message  # (64, 64, 1, 1) in the file, (64, 64, 3, 3) here
    assert "matches catalog architecture(s): resnet50" in message
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


def test_deeper_checkpoint_is_refused_even_without_missing_keys(tmp_path):
    source = torchvision.models.resnet34(weights=None)
    path = save_state(source.state_dict(), tmp_path / "resnet34.pth")
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    with pytest.raises(IncompatibleWeightsError, match="resnet34") as error:
        load_backbone_weights(backbone, path)
    assert "layer1.2.conv1.weight" in str(error.value)  # resnet34 has 3 blocks in layer1


def test_allow_partial_weights_loads_what_matches(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    dropped = [k for k in state if k.startswith("layer4.1.")]
    for key in dropped:
        del state[key]
    path = save_state(state, tmp_path / "partial.pth")
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    with pytest.raises(IncompatibleWeightsError, match="ALLOW_PARTIAL_WEIGHTS"):
        load_backbone_weights(backbone, path)
    report = load_backbone_weights(backbone, path, allow_partial=True)
    assert sorted(report.missing) == sorted(k for k in dropped if "num_batches" not in k)
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])
    assert "missing (stay random)" in report.table()


def test_group_norm_loads_batchnorm_affine_and_reports_unused_statistics(tmp_path):
    path = save_state(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    backbone = TimmBackbone(get_entry("resnet18"), norm="GN")
    report = load_backbone_weights(backbone, path)
    assert report.complete and "bn1.running_mean" in report.unused_statistics


def test_frozen_bn_with_local_weights_matches_timm(tmp_path, timm_resnet50):
    path = save_state(timm_resnet50.state_dict(), tmp_path / "r50.safetensors")
    cfg = make_cfg("resnet50", path, norm="FrozenBN", name="build_resbackbone_fpn_backbone")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    fpn = build_backbone(cfg).train()
    reference = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    reference.load_state_dict(timm_resnet50.state_dict(), strict=False)
    with torch.no_grad():
        # FrozenBN folds the statistics into one scale and bias: float32 rounding differs
        assert_features_equal(fpn.bottom_up(IMAGE), reference.eval()(IMAGE), tolerance=1e-4)
    # default Detectron2 normalisation is BGR with std 1: the mismatch is reported
    messages = check_input_normalization(cfg)
    assert messages and "INPUT.FORMAT is 'BGR'" in messages[0]


def test_convert_tool_output_loads_with_model_weights(tmp_path):
    from resbackbones.checkpoint.convert import main as convert_main  # tools/convert_weights.py
    torch.manual_seed(0)
    source = randomize_norm_statistics(torchvision.models.resnet18(weights=None)).eval()
    path = save_state(source.state_dict(), tmp_path / "tv_resnet18.pth")
    output = tmp_path / "d2" / "resnet18_d2.pth"
    assert convert_main(["--arch", "resnet18", "--input", path, "--output", str(output)]) == 0
    data = torch.load(output, weights_only=True)
    assert all(k.startswith("backbone.bottom_up.body.") for k in data["model"])

    cfg = make_cfg("resnet18", "", norm="FrozenBN", name="build_resbackbone_fpn_backbone")
    cfg.MODEL.WEIGHTS = str(output)
    model = nn.Module()
    model.backbone = build_backbone(cfg)
    DetectionCheckpointer(model).load(str(output))
    with torch.no_grad():
        assert_features_equal(model.backbone.bottom_up.eval()(IMAGE),
                              torchvision_features(source, IMAGE), tolerance=1e-4)

    # pickles only when asked; the .pkl then loads through the restricted unpickler
    with pytest.raises(ValueError, match="--format pkl"):
        convert_main(["--arch", "resnet18", "--input", path, "--output", str(tmp_path / "x.pkl")])
    pkl = tmp_path / "resnet18_d2.pkl"
    convert_main(["--arch", "resnet18", "--input", path, "--output", str(pkl), "--format", "pkl"])
    backbone = build_backbone(make_cfg("resnet18", str(pkl))).eval()
    with torch.no_grad():
        assert_features_equal(backbone(IMAGE), torchvision_features(source, IMAGE))
    assert "resbackbones" in load_state_dict_file(str(pkl)).source_format


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_restricted_unpickler_refuses_code(tmp_path):
    victim = tmp_path / "created-by-pickle.txt"
    crafted = tmp_path / "evil.pkl"
    crafted.write_bytes(pickle.dumps({"model": {"conv1.weight": _CreatesAFile(str(victim))}}))
    with pytest.raises(UnsafePickleError, match="tries to import 'io.open'"):
        safe_load_pickle(str(crafted))
    with pytest.raises(UnsafePickleError):
        load_state_dict_file(str(crafted))
    assert not victim.exists()


def test_torch_file_with_objects_is_refused(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "extra": _CreatesAFile("x")}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(str(path))
    assert not os.path.exists("x")


def test_partial_caffe2_and_detectron2_resnet_files_are_converted_then_refused(tmp_path):
    import numpy as np

    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                               "res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}}, f)
    keys = load_state_dict_file(str(path))
    assert set(keys.tensors) == {"conv1.weight", "layer1.0.conv1.weight"}
    backbone = TimmBackbone(get_entry("resnet50"), norm="BN")
    with pytest.raises(IncompatibleWeightsError, match="missing"):
        load_backbone_weights(backbone, str(path))
    d2 = tmp_path / "d2_r50.pth"
    torch.save({"model": {"backbone.bottom_up.res2.0.conv1.weight": torch.zeros(64, 64, 1, 1),
                          "backbone.fpn_lateral2.weight": torch.zeros(1)}}, d2)
    keys = load_state_dict_file(str(d2))
    assert list(keys.tensors) == ["layer1.0.conv1.weight"]
    assert keys.ignored == ["backbone.fpn_lateral2.weight"]


def test_offline_imagenet_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    with pytest.raises(WeightsUnavailableError) as error:
        load_backbone_weights(backbone, "imagenet")
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and "MODEL.RESBACKBONE.WEIGHTS" in message


def test_timm_weights_for_another_architecture_are_refused():
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    with pytest.raises(IncompatibleWeightsError, match="timm:resnet18.<tag>"):
        load_backbone_weights(backbone, "timm:resnet50.a1_in1k")


def test_missing_file_error_names_the_key(tmp_path):
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN")
    with pytest.raises(FileNotFoundError, match="MODEL.RESBACKBONE.WEIGHTS"):
        load_backbone_weights(backbone, str(tmp_path / "nope.pth"))
