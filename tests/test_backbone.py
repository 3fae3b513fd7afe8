"""The Detectron2 backbone adapter and builders: shapes, numerics vs timm, freezing, norms."""
import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_backbone
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import resbackbones
from resbackbones.catalog import catalog_names, get_entry, one_per_family
from resbackbones.modeling.norms import NaiveSyncBatchNormAct2d
from resbackbones.modeling.timm_backbone import TimmBackbone
from helpers import randomize_norm_statistics

ONE_PER_FAMILY = one_per_family()


def make_cfg(arch="resnet18", name="build_resbackbone_fpn_backbone", norm="BN", freeze_at=0):
    cfg = get_cfg()
    resbackbones.add_resbackbone_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESBACKBONE.ARCH = arch
    cfg.MODEL.RESBACKBONE.NORM = norm
    return cfg


@pytest.mark.parametrize("arch", catalog_names())
def test_every_entry_builds_fpn_and_retinanet(arch):
    image = torch.randn(1, 3, 64, 64)
    fpn = build_backbone(make_cfg(arch)).eval()
    with torch.no_grad():
        outputs = fpn(image)
    shapes = fpn.output_shape()
    assert list(outputs) == list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [shapes[k].stride for k in shapes] == [4, 8, 16, 32, 64]
    for key, tensor in outputs.items():
        assert tensor.shape[1] == shapes[key].channels == 256
        assert tensor.shape[-1] == 64 // shapes[key].stride
    assert fpn.size_divisibility == 32
    bottom_up = fpn.bottom_up.output_shape()
    entry = get_entry(arch)
    assert {k: v.channels for k, v in bottom_up.items()} == entry.channel_dict()

    retina = build_backbone(make_cfg(arch, "build_resbackbone_retinanet_fpn_backbone")).eval()
    with torch.no_grad():
        outputs = retina(image)
    shapes = retina.output_shape()
    assert list(outputs) == list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [shapes[k].stride for k in shapes] == [8, 16, 32, 64, 128]
    assert all(t.shape[1] == 256 for t in outputs.values())
    assert outputs["p7"].shape[-1] == 1  # 64 / 128 rounded up by the stride-2 conv


def test_plain_backbone_outputs_res2_to_res5():
    backbone = build_backbone(make_cfg("resnet34", "build_resbackbone_backbone")).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, 96, 64))
    for name, spec in backbone.output_shape().items():
        assert outputs[name].shape == (2, spec.channels, 96 // spec.stride, 64 // spec.stride)
    assert backbone.size_divisibility == 32


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_features_equal_timm_features_only(arch):
    torch.manual_seed(0)
    reference = timm.create_model(arch, pretrained=False, features_only=True,
                                  out_indices=(1, 2, 3, 4)).eval()
    randomize_norm_statistics(reference)
    ours = TimmBackbone(get_entry(arch), norm="BN").eval()
    # features_only flattens ResNetV2's "stem.conv"/"stages.0" to "stem_conv"/"stages_0"; our
    # body keeps timm's own names.
    state = {_unflatten(k): v for k, v in reference.state_dict().items()}
    result = ours.body.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = reference(image)
        got = ours(image)
    if arch.startswith("resnetv2"):
        # Pre-activation: res5 is returned after timm's final norm + ReLU (the only un-copied
        # weights: set them and apply them to the reference too).
        assert result.missing_keys and all(k.startswith("norm.") for k in result.missing_keys)
        randomize_norm_statistics(ours.body.norm, seed=1)
        with torch.no_grad():
            got = ours(image)
            expected[3] = ours.body.norm(expected[3])
        assert isinstance(ours.body.norm, BatchNormAct2d)
    else:
        assert not result.missing_keys
    for name, tensor in zip(["res2", "res3", "res4", "res5"], expected):
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-5)


def _unflatten(key: str) -> str:
    for prefix in ("stem_", "stages_"):
        if key.startswith(prefix):
            return prefix[:-1] + "." + key[len(prefix):]
    return key


def _groups(backbone):
    return {group: [backbone.body.get_submodule(n) for n in names]
            for group, names in backbone.stage_module_names().items()}


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("arch", ["resnet18", "resnetv2_50"])
def test_freeze_at_matches_detectron2_semantics(arch, freeze_at):
    backbone = build_backbone(make_cfg(arch, "build_resbackbone_backbone", freeze_at=freeze_at))
    groups = _groups(backbone)
    assert list(groups) == ["stem", "res2", "res3", "res4", "res5"]
    for level, (group, modules) in enumerate(groups.items(), start=1):
        frozen = level <= freeze_at
        for module in modules:
            params = list(module.parameters())
            if params:
                assert all(p.requires_grad is not frozen for p in params), (group, freeze_at)
        inner = [m for module in modules for m in module.modules()]
        batch_norms = [m for m in inner if isinstance(m, nn.BatchNorm2d)]
        frozen_types = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
        frozen_norms = [m for m in inner if isinstance(m, frozen_types)]
        if group == "stem" and arch.startswith("resnetv2"):
            assert not batch_norms and not frozen_norms  # pre-activation stem: conv + pool only
        elif frozen:
            assert frozen_norms and not batch_norms, (group, freeze_at)
        else:
            assert batch_norms and not frozen_norms, (group, freeze_at)
    if arch == "resnetv2_50" and freeze_at == 5:
        # the final pre-activation norm belongs to res5 and keeps its ReLU when frozen
        assert isinstance(backbone.body.norm, FrozenBatchNormAct2d)
        assert isinstance(backbone.body.norm.act, nn.ReLU)
    with pytest.raises(ValueError, match=r"FREEZE_AT 6 is invalid; valid: 0 \(nothing\) .. 5"):
        backbone.freeze(6)


@pytest.mark.parametrize("arch", ["resnet18", "resnetv2_50"])
def test_frozen_bn_is_frozen_and_equals_bn_in_eval(arch):
    bn_backbone = TimmBackbone(get_entry(arch), norm="BN").eval()
    randomize_norm_statistics(bn_backbone)
    cfg = make_cfg(arch, "build_resbackbone_backbone", norm="FrozenBN")
    cfg.MODEL.WEIGHTS = "provided-later-by-the-checkpointer.pth"  # FrozenBN needs some weights
    # Compare the very same kernels in train and eval (BN folding is tested in test_speedups).
    cfg.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE = False
    frozen = build_backbone(cfg)
    frozen.body.load_state_dict(bn_backbone.body.state_dict())
    assert not [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    frozen_types = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
    norms = [m for m in frozen.modules() if isinstance(m, frozen_types)]
    assert norms and all(not list(m.parameters(recurse=False)) for m in norms)
    image = torch.randn(1, 3, 64, 64)
    frozen.train()
    with torch.no_grad():
        train_out = frozen(image)
        reference = bn_backbone(image)
    state_before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.eval()
    with torch.no_grad():
        eval_out = frozen(image)
    for key in train_out:
        torch.testing.assert_close(train_out[key], eval_out[key], rtol=0, atol=0)
        # FrozenBN folds statistics into one scale and bias: float32 rounding differs slightly
        scale = float(reference[key].abs().max())
        torch.testing.assert_close(train_out[key], reference[key], rtol=1e-4, atol=1e-4 * scale)
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in state_before.items())


def test_frozen_bn_without_any_weights_is_refused():
    with pytest.raises(ValueError, match="NORM 'BN', 'GN' or 'naiveSyncBN'"):
        build_backbone(make_cfg("resnet18", norm="FrozenBN"))


@pytest.mark.parametrize("norm, expected_type", [
    ("SyncBN", nn.SyncBatchNorm), ("naiveSyncBN", NaiveSyncBatchNorm), ("GN", nn.GroupNorm)])
@pytest.mark.parametrize("arch", ["resnet18", "resnetv2_50"])
def test_other_norms_build_and_train(arch, norm, expected_type):
    fpn = build_backbone(make_cfg(arch, norm=norm)).train()
    norms = [m for m in fpn.bottom_up.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             or isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, expected_type) for m in norms)
    if arch == "resnetv2_50":  # pre-activation norms keep their ReLU
        assert all(isinstance(m.act, nn.ReLU) for m in [fpn.bottom_up.body.norm])
        if norm == "naiveSyncBN":
            assert isinstance(fpn.bottom_up.body.norm, NaiveSyncBatchNormAct2d)
    outputs = fpn(torch.randn(2, 3, 64, 64))
    sum(t.mean() for t in outputs.values()).backward()
    grads = [p.grad for p in fpn.bottom_up.parameters()]
    assert all(g is not None for g in grads)


def test_sync_bn_multi_process_without_cuda_is_refused(monkeypatch):
    from detectron2.utils import comm

    if torch.cuda.is_available():
        pytest.skip("the refusal only applies without CUDA")
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="naiveSyncBN"):
        build_backbone(make_cfg("resnet18", norm="SyncBN"))


def test_out_features_subset_prunes_later_stages():
    cfg = make_cfg("resnet18", "build_resbackbone_backbone")
    cfg.MODEL.RESBACKBONE.OUT_FEATURES = ["res3", "res4"]
    backbone = build_backbone(cfg).eval()
    assert not any(k.startswith("body.layer4") for k in backbone.state_dict())
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64))
    assert list(outputs) == ["res3", "res4"]
    assert {k: v.channels for k, v in backbone.output_shape().items()} == {"res3": 128, "res4": 256}
    cfg.MODEL.RESBACKBONE.OUT_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(cfg)


def test_fpn_in_features_must_be_produced():
    cfg = make_cfg("resnet18")
    cfg.MODEL.RESBACKBONE.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match=r"needs \['res2'\]"):
        build_backbone(cfg)


def test_state_dict_keys_are_timm_names_under_bottom_up_body():
    fpn = build_backbone(make_cfg("resnet18"))
    keys = [k for k in fpn.state_dict() if k.startswith("bottom_up.")]
    timm_keys = [k for k in timm.create_model("resnet18").state_dict() if not k.startswith("fc.")]
    assert sorted(keys) == sorted("bottom_up.body." + k for k in timm_keys)
