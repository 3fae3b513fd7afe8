"""The BN-folded inference copy and the channels-last rule (issue 19, items 4-6), on the CPU.

What a GPU must confirm (memory after ``train()`` on CUDA, compile over many sizes) is in
``tools/gpu_check.py``; here the rules themselves are checked.
"""
import torch

from resbackbones.catalog import get_entry
from resbackbones.modeling.inference import FoldedInferenceCopy
from resbackbones.modeling.timm_backbone import TimmBackbone, channels_last_applies
from helpers import randomize_norm_statistics


def _backbone(**kwargs) -> TimmBackbone:
    backbone = TimmBackbone(get_entry("resnet18"), norm="BN", fold_bn_for_inference=True,
                            **kwargs)
    return randomize_norm_statistics(backbone)


def test_folded_copy_is_dropped_when_training_resumes():
    backbone = _backbone().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        folded = backbone(images)
    assert backbone._inference_body._copy is not None  # the eval pass built it
    backbone.train()
    assert backbone._inference_body._copy is None  # no second set of weights while training
    backbone.eval()
    with torch.no_grad():
        again = backbone(images)
    for name in folded:
        assert torch.allclose(folded[name], again[name], rtol=1e-4, atol=1e-5)


def test_changed_weights_refresh_the_same_copy():
    """An optimizer step or checkpoint load between evaluations updates the folded copy in
    place: the same module (so a compiled copy is not compiled again), the new values."""
    source = randomize_norm_statistics(
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8))).eval()
    holder = FoldedInferenceCopy()
    images = torch.randn(2, 3, 16, 16)
    first = holder.get(source)
    with torch.no_grad():
        assert torch.allclose(first(images), source(images), atol=1e-5)
        source[0].weight.mul_(2.0)  # a new version of one parameter
        expected = source(images)
    second = holder.get(source)
    assert second is first
    with torch.no_grad():
        assert torch.allclose(second(images), expected, atol=1e-5)
    assert holder.get(source, channels_last=True) is not first  # another layout: a new copy


class _TinyBody(torch.nn.Sequential):
    """A conv + BN with timm's ``forward_intermediates``, the method the compile wrapper wraps."""

    def forward_intermediates(self, x, **kwargs):
        return [self(x)]


def test_compiled_copy_survives_a_weight_change():
    source = _TinyBody(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    holder = FoldedInferenceCopy(compile_for_inference=True)
    wrapper = holder.get(source)
    with torch.no_grad():
        source[1].running_mean.add_(0.5)
    assert holder.get(source) is wrapper  # torch.compile's wrapper is kept, weights copied in


def test_channels_last_auto_is_off_for_cuda_training():
    """"auto" means: channels-last on the CPU; on CUDA only at inference under autocast (CUDA
    training stays NCHW until a GPU measurement says otherwise)."""
    rule = channels_last_applies
    assert rule("auto", "cpu", training=True, autocast=False)
    assert not rule("auto", "cuda", training=True, autocast=True)
    assert not rule("auto", "cuda", training=False, autocast=False)
    assert rule("auto", "cuda", training=False, autocast=True)
    assert rule("on", "cuda", training=True, autocast=False)
    assert not rule("off", "cpu", training=False, autocast=False)
    # The module applies the rule: a CPU forward in training runs channels-last.
    cpu = torch.empty(1, 3, 32, 32)
    assert _backbone(channels_last="auto").train().uses_channels_last(cpu)
    assert not _backbone(channels_last="off").eval().uses_channels_last(cpu)
