"""Packaged configs by name (resbackbones.model_zoo, resbackbones.model_zoo_files): every file
under configs/ is listed and resolves, names work wherever a config file does (build_config and
its callers: train, demo, export), a file of the user's wins over a packaged name, and a name
that is not packaged is refused with the closest packaged names."""
import filecmp
import os
from pathlib import Path

import pytest

from resbackbones import model_zoo
from resbackbones.config import build_config
from resbackbones.errors import ConfigError
from resbackbones.model_zoo_files import (
    ConfigNotFoundError,
    close_config_names,
    config_root,
    get_config_file,
    list_configs,
    resolve_config_file,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ON_DISK = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*")
                 if p.is_file() and p.suffix in (".yaml", ".py") and "__pycache__" not in p.parts)
QUICK = "quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"
R50_3X = "COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3x.yaml"


def test_every_file_under_configs_is_listed_and_resolves_to_it():
    assert len(ON_DISK) > 100  # the generated COCO configs, Detectron2 twins, quick, LazyConfig
    assert list_configs() == ON_DISK
    for name in ON_DISK:
        path = get_config_file(name)
        assert filecmp.cmp(path, CONFIGS / name, shallow=False), name
        # The repository's spelling names the same file (defaults written for a checkout).
        assert get_config_file(f"configs/{name}") == path
    # In a checkout the package's configs/ is the repository's (the symlink), not a copy.
    assert config_root().resolve() == CONFIGS.resolve()


def test_a_checkout_without_the_symlink_finds_the_repository_configs(tmp_path, monkeypatch):
    """Git writes a symlink as a plain file where the system has none (Windows)."""
    from resbackbones import model_zoo_files

    (tmp_path / "resbackbones").mkdir()
    (tmp_path / "resbackbones" / "configs").write_text("../configs")
    (tmp_path / "configs" / "quick_schedules").mkdir(parents=True)
    (tmp_path / "configs" / "quick_schedules" / "a.yaml").write_text("SOLVER:\n  MAX_ITER: 3\n")
    monkeypatch.setattr(model_zoo_files, "__file__",
                        str(tmp_path / "resbackbones" / "model_zoo_files.py"))
    assert config_root() == tmp_path / "configs"
    assert list_configs() == ["quick_schedules/a.yaml"]
    assert build_config("quick_schedules/a.yaml").SOLVER.MAX_ITER == 3


def test_list_configs_filters_case_insensitively():
    assert list_configs("QUICK_SCHEDULES/") == [
        "quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml",
        "quick_schedules/mask_rcnn_R_18_FPN_synthetic_quickstart.yaml"]
    assert {n.rsplit("/", 1)[-1] for n in list_configs(".py")} == {
        p.name for p in (CONFIGS / "new_baselines").glob("*.py")}
    assert list_configs("no such text") == []


def _one_leaf_per_folder():
    """The first non-base YAML of each folder: resolution does not depend on the file, only on
    where its _BASE_ files are (two builds per config cost ~0.5 s; tests/test_configs.py builds
    every one by path)."""
    leaves = {}
    for name in ON_DISK:
        folder, _, file_name = name.rpartition("/")
        if name.endswith(".yaml") and not file_name.startswith("Base-"):
            leaves.setdefault(folder, name)
    return sorted(leaves.values())


@pytest.mark.parametrize("name", _one_leaf_per_folder())
def test_build_config_takes_a_packaged_name_as_it_takes_the_path(name):
    opts = ["MODEL.DEVICE", "cpu"]
    assert build_config(name, opts).dump() == build_config(str(CONFIGS / name), opts).dump()


def test_a_mistyped_name_lists_the_closest_packaged_names():
    typo = "COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3X.yaml"
    with pytest.raises(ConfigNotFoundError) as error:
        build_config(typo)
    message = str(error.value)
    assert f"Config file not found: {typo!r}" in message  # the path that does not exist
    assert f"Closest packaged configs: {R50_3X}," in message  # the right one first
    assert "python -m resbackbones configs" in message
    # One error for both kinds of caller: config errors and missing files.
    assert isinstance(error.value, ConfigError) and isinstance(error.value, FileNotFoundError)
    with pytest.raises(ConfigNotFoundError, match="is not a packaged config. Closest"):
        get_config_file(typo)


@pytest.mark.parametrize("given, expected", [
    ("mask_rcnn_resnt50_FPN_3x.yaml", R50_3X),  # a file name without its folder
    ("/home/me/configs/COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3x.yml", R50_3X),
    ("quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant.yaml", QUICK),
])
def test_close_names_are_found_for_file_names_and_paths(given, expected):
    assert close_config_names(given)[0] == expected


def test_nothing_close_still_says_where_the_list_is():
    with pytest.raises(ConfigNotFoundError) as error:
        resolve_config_file("zzzz")
    assert "List the packaged configs with: python -m resbackbones configs" in str(error.value)


def test_only_listed_names_resolve_inside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "../setup.cfg" must not be found relative to configs/
    for outside in ("../setup.cfg", "../resbackbones/config.py", "quick_schedules"):
        assert (config_root() / outside).exists()
        with pytest.raises(ConfigNotFoundError):
            get_config_file(outside)


def test_an_existing_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    mine = tmp_path / "quick_schedules" / Path(QUICK).name
    mine.parent.mkdir()
    mine.write_text(f'_BASE_: "{get_config_file(QUICK)}"\nSOLVER:\n  MAX_ITER: 7\n')
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file(QUICK) == QUICK  # the user's relative path, as given
    assert build_config(QUICK).SOLVER.MAX_ITER == 7
    monkeypatch.chdir(REPO)  # elsewhere the same name is the packaged file
    assert build_config(QUICK).SOLVER.MAX_ITER == 40


def test_get_config_builds_yaml_with_the_project_keys_and_overrides():
    cfg = model_zoo.get_config(R50_3X, ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3"])
    assert cfg.MODEL.RESBACKBONE.ARCH == "resnet50" and cfg.SOLVER.MAX_ITER == 3
    assert cfg.dump() == build_config(str(CONFIGS / R50_3X),
                                      ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3"]).dump()
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITERS"):
        model_zoo.get_config(R50_3X, ["SOLVER.MAX_ITERS", "3"])


def test_get_config_loads_a_lazyconfig_with_key_value_overrides():
    cfg = model_zoo.get_config("new_baselines/mask_rcnn_WRN50_FPN_100ep_LSJ.py",
                               ["train.max_iter=5"])
    assert cfg.train.max_iter == 5
    assert cfg.model.backbone.bottom_up.entry.name == "wide_resnet50_2"


def test_the_callers_of_build_config_take_names(tmp_path):
    """The demo and export build their configs from a packaged name; training resolves it
    before Detectron2's default_setup opens the file."""
    from resbackbones.demo import build_inference_config
    from resbackbones.deploy.export import export_config
    from resbackbones.engine.launch import build_argument_parser, setup_cfg

    cfg = build_inference_config(QUICK, device="cpu")
    assert cfg.MODEL.RESBACKBONE.ARCH == "resnet18" and cfg.is_frozen()
    with pytest.raises(FileNotFoundError, match=f"Closest packaged configs: {QUICK}"):
        build_inference_config(QUICK.replace("instant_test", "instant"))
    assert export_config(QUICK).MODEL.DEVICE == "cpu"
    args = build_argument_parser().parse_args(
        ["--config-file", QUICK, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"])
    cfg = setup_cfg(args)
    assert args.config_file == get_config_file(QUICK)
    assert cfg.MODEL.RESBACKBONE.ARCH == "resnet18"
    assert (tmp_path / "config.yaml").is_file()  # written by default_setup


def test_the_quickstart_default_is_a_packaged_name():
    from resbackbones.engine.quickstart import QuickstartOptions

    assert os.path.isfile(get_config_file(QuickstartOptions.config_file))
