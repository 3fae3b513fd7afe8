"""Stochastic depth (MODEL.RESBACKBONE.DROP_PATH_RATE) for every catalog family.

References: at rate 0 the model timm builds without ``drop_path_rate`` (bit for bit); at rate r
the linear rule ``r * i / (N - 1)`` for block ``i`` of ``N``, computed here from the block count
(not read from the modules), against the drop frequency counted over many forward passes.
"""
import math

import pytest
import timm
import torch
from detectron2.modeling import build_backbone
from timm.layers import DropPath

from resbackbones.catalog import get_entry, one_per_family
from resbackbones.config import ConfigError, build_config
from resbackbones.modeling.timm_backbone import TimmBackbone
from helpers import randomize_norm_statistics

ONE_PER_FAMILY = one_per_family()
RATE = 0.3


def _cfg_model(arch: str, rate: float) -> TimmBackbone:
    cfg = build_config("", ["MODEL.BACKBONE.NAME", "build_resbackbone_backbone",
                            "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.RESBACKBONE.ARCH", arch,
                            "MODEL.RESBACKBONE.NORM", "BN", "MODEL.RESBACKBONE.CHANNELS_LAST",
                            "off", "MODEL.RESBACKBONE.DROP_PATH_RATE", str(rate)])
    return build_backbone(cfg)


def _residual_blocks(body: torch.nn.Module):
    """timm's residual blocks in forward order: the modules that own a ``drop_path`` branch."""
    return [module for _, module in body.named_modules() if hasattr(module, "drop_path")]


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_rate_zero_is_todays_model_bit_for_bit(arch):
    """Against timm's model built without drop_path_rate: same tensors, same features."""
    torch.manual_seed(0)
    reference = timm.create_model(get_entry(arch).timm_name, pretrained=False,
                                  zero_init_last=False)
    torch.manual_seed(0)
    model = _cfg_model(arch, 0.0)
    assert not any(isinstance(m, DropPath) for m in model.modules())
    reference_state = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference_state[name[len("body."):]]), name
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # train mode: where a drop would show
        out = model.train()(images)
        expected = reference.train().forward_intermediates(
            images, indices=model._indices, norm=True, stop_early=True, intermediates_only=True)
    for name, value in zip(out, expected):
        assert torch.equal(out[name], value), name


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_drop_frequency_per_block_follows_the_linear_rule(arch):
    """Per block and pooled over the blocks: observed drop fraction within 4 binomial standard
    errors of the rule (a uniform rate, or none, would be off by tens of errors)."""
    torch.manual_seed(1)
    model = _cfg_model(arch, RATE).train()
    blocks = _residual_blocks(model.body)
    expected = [RATE * i / (len(blocks) - 1) for i in range(len(blocks))]
    dropped, calls = [0] * len(blocks), [0] * len(blocks)
    for index, block in enumerate(blocks):
        if expected[index] == 0:
            assert not isinstance(block.drop_path, DropPath), (index, block.drop_path)
            continue

        def count(module, inputs, output, index=index):
            had_signal = inputs[0].flatten(1).abs().amax(1) > 0
            dropped[index] += int(((output.flatten(1).abs().amax(1) == 0) & had_signal).sum())
            calls[index] += 1

        block.drop_path.register_forward_hook(count)
    batch, passes = 64, 8  # 8x8 images: the cheapest input that runs every stage
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, 8, 8))
    samples = batch * passes
    assert all(c == passes for c, r in zip(calls, expected) if r > 0)  # in the forward path
    for index, (count_, rate) in enumerate(zip(dropped, expected)):
        error = math.sqrt(rate * (1 - rate) / samples)
        assert abs(count_ / samples - rate) <= max(4 * error, 1e-9), (
            f"block {index}: dropped {count_ / samples:.4f}, expected {rate:.4f} +- {error:.4f}")
    pooled_error = math.sqrt(sum(r * (1 - r) for r in expected) * samples)
    assert abs(sum(dropped) - sum(expected) * samples) <= 4 * pooled_error
    print(f"{arch}: {len(blocks)} blocks, last block dropped {dropped[-1] / samples:.3f} "
          f"(expected {RATE}), all blocks {sum(dropped)} drops (expected "
          f"{sum(expected) * samples:.0f} +- {pooled_error:.0f})")


@pytest.mark.parametrize("arch", ["resnet18", "resnetv2_50"])
def test_eval_mode_never_drops_and_equals_rate_zero(arch):
    torch.manual_seed(2)
    plain = randomize_norm_statistics(_cfg_model(arch, 0.0))
    dropping = _cfg_model(arch, RATE)
    dropping.load_state_dict(plain.state_dict())  # DropPath has no tensors: same keys
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        plain.eval()
        dropping.eval()
        reference = plain(images)
        first, second = dropping(images), dropping(images)
        dropping.train()
        trained = [dropping(images)["res5"] for _ in range(2)]
    for name in reference:
        assert torch.equal(first[name], reference[name]), name
        assert torch.equal(second[name], reference[name]), name
    assert not torch.equal(trained[0], trained[1])  # train mode does drop


@pytest.mark.parametrize("arch", ["resnet18", "resnet50d"])
def test_bn_folded_inference_copy_is_unaffected(arch):
    torch.manual_seed(3)
    entry = get_entry(arch)
    plain = randomize_norm_statistics(TimmBackbone(entry, norm="BN", fold_bn_for_inference=True))
    dropping = TimmBackbone(entry, norm="BN", fold_bn_for_inference=True, drop_path_rate=RATE)
    dropping.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference, out = plain.eval()(images), dropping.eval()(images)
        unfolded = TimmBackbone(entry, norm="BN", drop_path_rate=RATE)
        unfolded.load_state_dict(plain.state_dict())
        eager = unfolded.eval()(images)
    assert dropping._inference_body.folded_count == plain._inference_body.folded_count > 0
    for name in reference:
        assert torch.equal(out[name], reference[name]), name
        # Folding itself changes rounding (tests/test_inference_copy.py): relative to the scale.
        scale = float(eager[name].abs().max())
        torch.testing.assert_close(out[name], eager[name], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("value", ["-0.1", "1.0", "1.5"])
def test_rates_outside_zero_one_are_refused_with_the_key(value):
    with pytest.raises(ConfigError, match=r"MODEL.RESBACKBONE.DROP_PATH_RATE .* is invalid; "
                                          r"valid: a number in \[0, 1\)"):
        build_config("", ["MODEL.RESBACKBONE.DROP_PATH_RATE", value])


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_the_constructor_refuses_them_alike(value):
    with pytest.raises(ConfigError, match=r"MODEL.RESBACKBONE.DROP_PATH_RATE .* is invalid"):
        TimmBackbone(get_entry("resnet18"), drop_path_rate=value)
