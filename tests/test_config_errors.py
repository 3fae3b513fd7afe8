"""Bad configs fail before any work starts, naming the key/value and what would be valid."""
import pytest
from detectron2.config import get_cfg

from resbackbones.config import (
    ConfigError,
    add_resbackbone_config,
    merge_config_checked,
    validate_config,
)


def _cfg():
    cfg = add_resbackbone_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resbackbone_fpn_backbone"
    return cfg


def test_unknown_key_in_file_names_file_and_close_keys(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("MODEL:\n  RESBACKBONE:\n    ARCHH: resnet18\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key "
                       r"'MODEL\.RESBACKBONE\.ARCHH'\. Did you mean: MODEL\.RESBACKBONE\.ARCH"):
        merge_config_checked(_cfg(), str(config))


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="command-line overrides: unknown config key "
                       "'SOLVER.BASE_LRR'. Did you mean: SOLVER.BASE_LR"):
        merge_config_checked(_cfg(), opts=["SOLVER.BASE_LRR", "0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.FREEZE_AT"):
        merge_config_checked(_cfg(), opts=["MODEL.BACKBONE.FREEZE_AT", "'two'"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="Config file not found: nowhere.yaml"):
        merge_config_checked(_cfg(), "nowhere.yaml")


@pytest.mark.parametrize("key, value, expected", [
    ("MODEL.RESBACKBONE.ARCH", "resnet51", "resnet50"),
    ("MODEL.RESBACKBONE.NORM", "LayerNorm", "valid: FrozenBN, BN, SyncBN, naiveSyncBN, GN"),
    ("MODEL.RESBACKBONE.CHANNELS_LAST", "yes", "valid: auto, on, off"),
    ("MODEL.RESBACKBONE.INFERENCE_AMP", "half", "valid: off, auto, bf16, fp16"),
    ("MODEL.RESBACKBONE.OUT_FEATURES", ["res6"], "subset of"),
    ("MODEL.RESBACKBONE.WEIGHTS", "missing/R-50.pkl", "file not found: 'missing/R-50.pkl'"),
    ("MODEL.BACKBONE.NAME", "build_resnet51_fpn", "build_resbackbone_fpn_backbone"),
    ("MODEL.BACKBONE.FREEZE_AT", 7, "0 (nothing) .. 5"),
])
def test_invalid_values_are_refused_with_choices(key, value, expected):
    cfg = _cfg()
    node, _, leaf = key.rpartition(".")
    target = cfg
    for part in node.split("."):
        target = target[part]
    target[leaf] = value
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert expected in str(error.value) and key.split(".")[-1] in str(error.value)


@pytest.mark.parametrize("key, values", [
    ("MODEL.RESBACKBONE.ARCH", ["resnet18", "resnet50d"]),
    ("MODEL.RESBACKBONE.NORM", ["FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN"]),
    ("MODEL.RESBACKBONE.CHANNELS_LAST", ["auto", "on", "off"]),
    ("MODEL.RESBACKBONE.INFERENCE_AMP", ["off", "auto", "bf16", "fp16"]),
    ("MODEL.RESBACKBONE.OUT_FEATURES", [["res2", "res5"], ["res3", "res4", "res5"]]),
    ("MODEL.BACKBONE.FREEZE_AT", [0, 2, 5]),
])
def test_every_valid_value_passes_and_leaves_the_config_unchanged(key, values):
    """The counterpart of the refusals above: each valid choice is accepted, and validation
    returns the very config it was given, unchanged (callers use the return value)."""
    for value in values:
        cfg = _cfg()
        node, _, leaf = key.rpartition(".")
        target = cfg
        for part in node.split("."):
            target = target[part]
        target[leaf] = value
        before = cfg.dump()
        assert validate_config(cfg) is cfg, value
        assert cfg.dump() == before, value


def test_a_renamed_key_says_its_new_name(tmp_path):
    """Keys moved out of Detectron2's own namespaces (issue 13) are named in the error."""
    from resbackbones.config import build_config

    old = tmp_path / "old.yaml"
    old.write_text("DATASETS:\n  VALIDATE: full\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'DATASETS.VALIDATE'. It was "
                                          r"renamed DATA_VALIDATION.MODE"):
        build_config(str(old))
    assert build_config("", ["DATA_VALIDATION.MODE", "full"]).DATA_VALIDATION.MODE == "full"
    with pytest.raises(ConfigError, match="DATA_VALIDATION.MODE 'all' is invalid; valid: off, "
                                          "header, full"):
        build_config("", ["DATA_VALIDATION.MODE", "all"])
