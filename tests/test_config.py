"""MODEL.RESBACKBONE keys, normalisation helpers and config validation."""
import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import resbackbones
from resbackbones.catalog import input_normalization
from resbackbones.config import (
    add_resbackbone_config,
    apply_catalog_input_normalization,
    check_input_normalization,
)
from resbackbones.modeling.norms import NORM_CHOICES


def test_import_registers_the_three_builders():
    for name in ("build_resbackbone_backbone", "build_resbackbone_fpn_backbone",
                 "build_resbackbone_retinanet_fpn_backbone"):
        assert BACKBONE_REGISTRY.get(name) is not None
    assert resbackbones.add_resbackbone_config is add_resbackbone_config


def test_defaults_and_yaml_merge(tmp_path):
    cfg = add_resbackbone_config(get_cfg())
    keys = cfg.MODEL.RESBACKBONE
    assert keys.ARCH == "resnet50" and keys.NORM == "FrozenBN" and keys.WEIGHTS == ""
    assert keys.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    assert keys.ALLOW_PARTIAL_WEIGHTS is False
    assert "FrozenBN" in NORM_CHOICES and "naiveSyncBN" in NORM_CHOICES
    assert "RESBACKBONE" not in get_cfg().MODEL  # no global side effect
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"MODEL": {"RESBACKBONE": {"ARCH": "resnext101_32x8d",
                                                              "NORM": "GN"}}}))
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.RESBACKBONE.ARCH == "resnext101_32x8d" and cfg.MODEL.RESBACKBONE.NORM == "GN"


@pytest.mark.parametrize("arch", ["resnet50", "resnetv2_50"])
def test_apply_catalog_input_normalization(arch):
    cfg = add_resbackbone_config(get_cfg())
    cfg.MODEL.RESBACKBONE.ARCH = arch
    cfg.MODEL.RESBACKBONE.WEIGHTS = "imagenet"
    assert check_input_normalization(cfg)  # Detectron2's BGR defaults disagree
    apply_catalog_input_normalization(cfg)
    assert (cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD) == \
        input_normalization(arch)
    assert check_input_normalization(cfg) == []


def test_timm_weights_tag_decides_normalization():
    cfg = add_resbackbone_config(get_cfg())
    cfg.MODEL.RESBACKBONE.ARCH = "resnet50"
    cfg.MODEL.RESBACKBONE.WEIGHTS = "timm:resnet50.tv_in1k"
    apply_catalog_input_normalization(cfg)
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]


def test_builder_needs_the_config_namespace():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_fpn_backbone"
    with pytest.raises(KeyError, match="add_resbackbone_config"):
        build_backbone(cfg)


def test_invalid_norm_lists_valid_choices():
    cfg = add_resbackbone_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_backbone"
    cfg.MODEL.RESBACKBONE.NORM = "LN"
    with pytest.raises(ValueError, match="FrozenBN, BN, SyncBN, naiveSyncBN, GN"):
        build_backbone(cfg)


def test_misspelt_arch_in_config():
    cfg = add_resbackbone_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_backbone"
    cfg.MODEL.RESBACKBONE.NORM = "BN"
    cfg.MODEL.RESBACKBONE.ARCH = "wide_resnet50"
    with pytest.raises(KeyError, match="Did you mean: wide_resnet50_2"):
        build_backbone(cfg)
