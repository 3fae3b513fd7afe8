"""The catalog against timm: names, tags, channels, strides, normalisation; and its CLI."""
import io
from contextlib import redirect_stdout

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import resbackbones  # noqa: F401
from resbackbones.__main__ import main as cli_main
from resbackbones.catalog import (
    CATALOG,
    STAGE_NAMES,
    catalog_names,
    get_entry,
    input_normalization,
    select_stride_indices,
)
from resbackbones.listing import measure_architecture

REQUIRED = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50d", "resnet101d",
    "resnet152d", "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2", "seresnet50", "seresnext50_32x4d",
    "seresnext101_32x4d", "resnetv2_50", "resnetv2_101", "resnetrs50", "resnetrs101",
    "resnetrs152",
}


def test_catalog_has_every_required_architecture():
    assert REQUIRED <= set(catalog_names())


@pytest.mark.parametrize("name", catalog_names())
def test_entry_matches_timm(name):
    entry = get_entry(name)
    assert entry.timm_name in timm.list_models()
    assert entry.timm_weights in timm.list_pretrained(f"{entry.timm_name}.*")
    with torch.device("meta"):
        model = timm.create_model(entry.timm_name, pretrained=False)
    info = model.feature_info
    # feature_info index 0 is the stem (stride 2); res2..res5 are indices 1..4.
    assert select_stride_indices(info, name) == [1, 2, 3, 4]
    assert list(entry.channels) == [info[i]["num_chs"] for i in (1, 2, 3, 4)]
    assert list(entry.strides) == [info[i]["reduction"] for i in (1, 2, 3, 4)] == [4, 8, 16, 32]
    assert entry.channel_dict() == dict(zip(STAGE_NAMES, entry.channels))


@pytest.mark.parametrize("name", catalog_names())
def test_input_normalization_comes_from_the_pinned_tag(name):
    cfg = get_pretrained_cfg(get_entry(name).timm_weights)
    fmt, mean, std = input_normalization(name)
    assert fmt == "RGB"
    assert mean == pytest.approx([m * 255 for m in cfg.mean], abs=1e-3)
    assert std == pytest.approx([s * 255 for s in cfg.std], abs=1e-3)


def test_known_normalizations():
    assert input_normalization("resnet50") == ("RGB", [123.675, 116.28, 103.53],
                                                [58.395, 57.12, 57.375])
    assert input_normalization("resnetv2_50") == ("RGB", [127.5] * 3, [127.5] * 3)
    assert input_normalization("timm:resnet50.tv_in1k")[1] == [123.675, 116.28, 103.53]


def test_misspelt_name_lists_close_matches():
    with pytest.raises(KeyError) as error:
        get_entry("resnet51")
    message = error.value.args[0]
    assert "Did you mean: resnet50" in message and "resnet50d" in message
    with pytest.raises(KeyError, match="Did you mean: resnext101_32x8d"):
        get_entry("resnext101_32x8")


def test_timm_prefix_entry_is_marked_untested():
    entry = get_entry("timm:resnet26d")
    assert entry.in_catalog is False and entry.timm_name == "resnet26d"
    assert entry.channels == (256, 512, 1024, 2048) and entry.strides == (4, 8, 16, 32)
    assert "timm:" not in "".join(CATALOG)
    with pytest.raises(KeyError, match="timm:resnet26d"):
        get_entry("timm:resnet26e")


def test_cli_show_and_misspelling():
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["show", "wide_resnet50_2"]) == 0
    text = out.getvalue()
    assert "wide_resnet50_2.racm_in1k" in text and "123.675" in text
    assert cli_main(["show", "resnet51"]) == 2


def test_cli_list_counts_match_timm():
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["list", "--names", "resnet18", "--input-size", "64", "64"]) == 0
    assert "resnet18" in out.getvalue() and "64x64" in out.getvalue()
    cost = measure_architecture("resnet18", (60, 60))
    reference = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    assert cost.bottom_up_params == sum(p.numel() for p in reference.parameters())
    assert cost.input_size == (64, 64)  # padded to a multiple of 32, as Detectron2 does
    assert 0 < cost.bottom_up_gflops < cost.total_gflops
