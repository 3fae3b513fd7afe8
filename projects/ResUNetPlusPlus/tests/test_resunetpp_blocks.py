"""Shapes of every ResUNet++ block, both encoders against their references, gradient flow."""
import os

import pytest
import timm
import torch
from detectron2.modeling import build_backbone, build_model

from resunetpp import build_resunetpp_config
from resunetpp.blocks import (
    ASPP,
    AttentionGate,
    DecoderStep,
    PreActResidualUnit,
    SqueezeExcite,
    StemBlock,
)
from resunetpp.encoders import PaperEncoder
from resunetpp.head import decoder_widths

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BASE = os.path.join(CONFIGS, "Base-ResUNetPP.yaml")
RESBACKBONE = ["MODEL.BACKBONE.NAME", "build_resunetpp_resbackbone_encoder"]


def _cfg(*opts):
    return build_resunetpp_config(BASE, ["MODEL.DEVICE", "cpu", *opts])


@pytest.mark.parametrize("block, inputs, shape", [
    (SqueezeExcite(24, 8), [(2, 24, 9, 7)], (2, 24, 9, 7)),
    (PreActResidualUnit(16, 32, stride=2), [(2, 16, 9, 8)], (2, 32, 5, 4)),
    (PreActResidualUnit(16, 8), [(2, 16, 9, 8)], (2, 8, 9, 8)),
    (StemBlock(3, 16), [(2, 3, 12, 10)], (2, 16, 12, 10)),
    (ASPP(64, 32, (1, 6, 12, 18)), [(2, 64, 8, 8)], (2, 32, 8, 8)),
    (AttentionGate(16, 40), [(2, 16, 12, 10), (2, 40, 6, 5)], (2, 40, 6, 5)),
    (DecoderStep(16, 40, 24), [(2, 16, 12, 10), (2, 40, 6, 5)], (2, 24, 12, 10)),
])
def test_block_output_shapes(block, inputs, shape):
    tensors = [torch.randn(s) for s in inputs]
    assert tuple(block(*tensors).shape) == shape


def test_squeeze_excite_only_rescales_channels():
    se = SqueezeExcite(8, 2)
    x = torch.rand(1, 8, 5, 5) + 0.1
    ratio = se(x) / x
    # one factor per channel, in (0, 1)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_attention_gate_rejects_wrong_skip_size():
    with pytest.raises(ValueError, match="twice the size"):
        AttentionGate(8, 8)(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8))


def test_paper_encoder_outputs_match_output_shape():
    encoder = PaperEncoder((16, 32, 64, 128))
    features = encoder(torch.randn(2, 3, 64, 48))
    assert list(features) == ["c1", "c2", "c3", "c4"]
    for name, spec in encoder.output_shape().items():
        assert features[name].shape == (2, spec.channels, 64 // spec.stride, 48 // spec.stride)
    assert [s.channels for s in encoder.output_shape().values()] == [16, 32, 64, 128]


def test_decoder_widths_paper_rule_and_errors():
    assert decoder_widths([64, 32, 16]) == [128, 64, 32]  # the paper's decoder
    assert decoder_widths([1024, 512, 256, 64]) == [256, 256, 256, 128]
    with pytest.raises(ValueError, match="one width per skip"):
        decoder_widths([64, 32], [8])


def test_resbackbone_encoder_stem_equals_timm_features():
    """The hooked stem output and res2..res5 equal timm's own features_only outputs."""
    torch.manual_seed(0)
    encoder = build_backbone(_cfg(*RESBACKBONE, "MODEL.RESBACKBONE.ARCH", "resnet18",
                                  "MODEL.RESUNETPP.SKIP_SE", "False"))
    reference = timm.create_model("resnet18", features_only=True, pretrained=False)
    missing, _ = reference.load_state_dict(encoder.backbone.body.state_dict(), strict=False)
    assert not missing
    encoder.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():  # eval + no grad: resbackbones runs its BN-folded copy
        features = encoder(x)
        expected = reference(x)
    assert list(features) == ["stem", "res2", "res3", "res4", "res5"]
    for name, want in zip(features, expected):
        torch.testing.assert_close(features[name], want, atol=1e-4, rtol=1e-4)
        spec = encoder.output_shape()[name]
        assert want.shape[1] == spec.channels and 64 // want.shape[2] == spec.stride


@pytest.mark.parametrize("encoder_opts", [[], RESBACKBONE + [
    "MODEL.RESBACKBONE.ARCH", "resnet18", "MODEL.RESUNETPP.FULL_RESOLUTION_CHANNELS", "16"]])
def test_model_binary_outputs_and_gradient_reaches_encoder(encoder_opts):
    torch.manual_seed(0)
    model = build_model(_cfg(*encoder_opts))
    # a stride-2 encoder with FULL_RESOLUTION_CHANNELS gets a residual unit at full resolution
    assert (model.sem_seg_head.full_resolution is None) == (not encoder_opts)
    batch = [{"image": torch.rand(3, 64, 64) * 255,
              "sem_seg": (torch.rand(64, 64) > 0.7).long()} for _ in range(2)]
    losses = model(batch)
    assert set(losses) == {"loss_bce", "loss_dice"}
    sum(losses.values()).backward()
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    # every trainable parameter of the encoder gets a gradient (nothing is bypassed)
    no_grad = [n for n, p in model.backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad
    model.eval()
    with torch.no_grad():
        output = model([{"image": torch.rand(3, 64, 64) * 255, "height": 50, "width": 70}])
    logits = output[0]["sem_seg"]
    assert logits.shape == (2, 50, 70)
    # binary: two channels [0, z], so softmax equals the sigmoid of the foreground logit
    assert torch.all(logits[0] == 0)
    torch.testing.assert_close(torch.softmax(logits, 0)[1], torch.sigmoid(logits[1]))


def test_model_multiclass_uses_cross_entropy():
    model = build_model(_cfg("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"))
    batch = [{"image": torch.rand(3, 32, 32) * 255,
              "sem_seg": torch.randint(0, 4, (32, 32))}]
    assert set(model(batch)) == {"loss_ce", "loss_dice"}
    model.eval()
    with torch.no_grad():
        assert model([{"image": torch.rand(3, 32, 32) * 255}])[0]["sem_seg"].shape == (4, 32, 32)


def test_unknown_encoder_name_is_refused():
    from resbackbones.config import ConfigError

    with pytest.raises(ConfigError, match="build_resunetpp_paper_encoder"):
        _cfg("MODEL.BACKBONE.NAME", "build_resbackbone_fpn_backbone")
