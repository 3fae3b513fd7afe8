"""Helpers shared by several test modules."""
import pytest
import torch
from torch import nn


def randomize_norm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d non-trivial statistics and affine values (in place), so that norm
    handling (freezing, folding, weight conversion) is really tested. Returns ``model``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


# Tests of the NNPACK Winograd path need a PyTorch build that has NNPACK.
needs_nnpack = pytest.mark.skipif(not torch._nnpack_available(),
                                  reason="this PyTorch build has no NNPACK")


def count_nnpack_calls(monkeypatch) -> list:
    """Record the input shape of every NNPACK Winograd convolution from now on (a list that
    fills as the test runs)."""
    from resbackbones.modeling import winograd

    calls = []
    original = winograd._nnpack_conv

    def counting(*args):
        calls.append(args[1].shape)
        return original(*args)

    monkeypatch.setattr(winograd, "_nnpack_conv", counting)
    return calls
