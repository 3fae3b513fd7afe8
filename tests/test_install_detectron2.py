"""The Detectron2 installer (resbackbones/installer.py, tools/install_detectron2.py, make setup):
what it does with each Detectron2 it finds, its backups, the torch guard, and the backports it
applies, checked on the installed detectron2."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2_main import main_environment, require_detectron2_main
from fake_detectron2 import (add_dist_info, make_bare_python, make_fake_detectron2,
                             make_fake_torch, python_path_env, tree)
from resbackbones import installer
from resbackbones.installer import PATCH_LEVEL, WHEEL_VERSION, Detectron2Probe, decide_action

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALLER_PATH = REPO_ROOT / "tools" / "install_detectron2.py"


def _own_build() -> bool:
    import detectron2

    return "+resbackbones." in detectron2.__version__


requires_own_build = pytest.mark.skipif(
    not _own_build(), reason="detectron2 was not built by tools/install_detectron2.py"
)


def test_detectron2_subpackages_import():
    import detectron2.data
    import detectron2.engine
    import detectron2.evaluation
    import detectron2.modeling

    assert callable(detectron2.modeling.build_model)
    assert callable(detectron2.engine.launch)
    assert hasattr(detectron2.evaluation, "COCOEvaluator")
    assert hasattr(detectron2.data, "MetadataCatalog")


@requires_own_build
def test_installed_version_is_this_installers_current_build():
    from importlib.metadata import version

    import detectron2

    assert version("detectron2") == installer.WHEEL_VERSION
    assert detectron2.__version__ == installer.WHEEL_VERSION


def test_polygon_to_mask_works_with_numpy2():
    from detectron2.structures.masks import PolygonMasks, polygons_to_bitmask

    square = [np.array([2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0])]
    mask = polygons_to_bitmask(square, 10, 10)
    assert mask.dtype == bool and mask.shape == (10, 10)
    assert mask[5, 5] and not mask[0, 0]
    assert not polygons_to_bitmask([], 4, 4).any()
    nonempty = PolygonMasks([square, []]).nonempty()
    assert nonempty.tolist() == [True, False]


def test_transforms_work_with_installed_pillow():
    from detectron2.data.transforms import ExtentTransform, ResizeTransform

    image = (np.arange(20 * 30 * 3) % 255).astype(np.uint8).reshape(20, 30, 3)
    extent = ExtentTransform(src_rect=(0, 0, 30, 20), output_size=(10, 15))
    assert extent.apply_image(image).shape == (10, 15, 3)
    resize = ResizeTransform(20, 30, 40, 60)
    assert resize.apply_image(image).shape == (40, 60, 3)


def test_dataset_histogram_uses_builtin_int():
    """v0.6 built the histogram with np.int (gone in NumPy 1.24): it must log the counts."""
    import logging
    import uuid

    from detectron2.data.build import print_instances_class_histogram

    # log_first_n logs a message once per process: class names of our own make it a new one.
    names = [f"cat-{uuid.uuid4().hex[:6]}", f"dog-{uuid.uuid4().hex[:6]}"]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("detectron2.data.build")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        dataset_dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}]},
                         {"annotations": [{"category_id": 1}]}]
        print_instances_class_histogram(dataset_dicts, names)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(r.getMessage() for r in records))
    assert "Distribution of instances among all 2 categories" in text
    counts = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        counts.update((name, value) for name, value in zip(cells[::2], cells[1::2])
                      if name in names or name == "total")
    assert counts == {names[0]: "1", names[1]: "2", "total": "3"}


def test_every_model_zoo_config_is_found():
    from detectron2 import model_zoo

    root = Path(model_zoo.__file__).parent / "configs"
    configs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
    assert len(configs) >= 90
    assert "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" in configs
    for name in configs:
        assert os.path.isfile(model_zoo.get_config_file(name)), name


@pytest.mark.parametrize(
    "call, op_name",
    [
        (lambda: __import__("detectron2.layers.rotated_boxes", fromlist=["x"])
         .pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5)), "box_iou_rotated"),
        (lambda: __import__("detectron2.layers.nms", fromlist=["x"])
         .nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5), "nms_rotated"),
        (lambda: __import__("detectron2.layers", fromlist=["x"])
         .ROIAlignRotated((2, 2), 1.0, 0)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 6)),
         "roi_align_rotated_forward"),
    ],
)
@requires_own_build
def test_cpp_only_op_raises_clear_error(call, op_name):
    with pytest.raises(RuntimeError) as error:
        call()
    message = str(error.value)
    assert op_name in message and "C++" in message and "build detectron2 from source" in message


@requires_own_build
def test_fast_coco_eval_error_says_how_to_evaluate():
    from detectron2.evaluation import fast_eval_api

    with pytest.raises(RuntimeError, match="use_fast_impl=False"):
        fast_eval_api._C.COCOevalAccumulate


def test_rewrite_refuses_unexpected_source():
    rewrite = installer.SourceRewrite("x.py", "old()", "new()", 1, "test")
    assert rewrite.apply("a = old()\n") == "a = new()\n"
    with pytest.raises(installer.RewriteMismatch, match=r"detectron2/x\.py.*expected 1.*found 0"):
        rewrite.apply("a = changed()\n")
    with pytest.raises(installer.RewriteMismatch, match="found 2"):
        rewrite.apply("old()\nold()\n")


def test_numpy_alias_rewrite_leaves_sized_types_alone():
    rewrite = installer.SourceRewrite("x.py", installer._NUMPY_ALIAS, r"\1", 2, "t", regex=True)
    text = "a = np.int64(1)\nb = x.astype(np.bool)\nc = np.bool_\nd = np.float\n"
    assert rewrite.apply(text) == "a = np.int64(1)\nb = x.astype(bool)\nc = np.bool_\nd = float\n"


def test_sdist_checksum_mismatch_is_refused_and_kept_aside(tmp_path):
    (tmp_path / installer.SDIST_FILENAME).write_bytes(b"not the sdist")
    with pytest.raises(RuntimeError, match="does not match the expected"):
        installer.download_sdist(sys.executable, tmp_path)
    assert not (tmp_path / installer.SDIST_FILENAME).exists()
    assert (tmp_path / installer.SDIST_FILENAME).with_suffix(".bad").read_bytes() == b"not the sdist"


CACHED_SDIST = installer.DEFAULT_CACHE / installer.SDIST_FILENAME


@pytest.mark.skipif(not CACHED_SDIST.exists(), reason="no cached sdist (detectron2 was kept)")
def test_all_rewrites_match_the_real_sdist(tmp_path):
    package = installer.extract_package(CACHED_SDIST, tmp_path)
    installer.apply_rewrites(package)
    for rewrite in installer.SOURCE_REWRITES:
        text = (package / rewrite.path).read_text()
        if not rewrite.regex:
            assert rewrite.new in text, rewrite.path
    assert (package / "_C_lazy.py").exists()
    with tarfile.open(CACHED_SDIST) as archive:
        assert not any("/layers/csrc/" in name for name in archive.getnames())


def _all_reduce_worker(out_dir):
    import torch.distributed as dist
    from torch import nn

    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    value = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(value)
    model = create_ddp_model(nn.Linear(2, 1))
    model(torch.ones(3, 2)).sum().backward()
    Path(out_dir, f"rank{comm.get_rank()}").write_text(
        f"{dist.get_backend()} {value.item()} {type(model).__name__}"
    )
    from resbackbones.engine.distributed import leave_process_group

    leave_process_group()  # Gloo groups left to interpreter shutdown can abort the process


@pytest.mark.slow
def test_distributed_launch_runs_on_cpu_with_gloo(tmp_path):
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU path")
    launch(_all_reduce_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = sorted(p.read_text() for p in tmp_path.iterdir())
    assert results == ["gloo 3.0 DistributedDataParallel"] * 2


# ---------------------------------------------------------------------------------------------
# What the installer does with what it finds

_OURS = WHEEL_VERSION
_OLDER = f"0.6+resbackbones.{PATCH_LEVEL - 1}"
_DIST = {"name": "detectron2", "version": "0.6", "site": "/s", "files": []}


def _probe(state="ok", version="0.6", missing=(), dist=_DIST):
    dist = dict(dist, version=version) if dist else None
    return Detectron2Probe(state=state, python=sys.executable, version=version,
                           flavour="v0.6" if state == "ok" else None, missing_apis=tuple(missing),
                           api_count=32, location="/s/detectron2", distribution=dist,
                           error="ImportError: boom" if state == "broken" else None)


DECISIONS = [
    # (what is found, flags, action)
    ("none", _probe(state="absent", version=None, dist=None), {}, "install"),
    ("none, --replace", _probe(state="absent", version=None, dist=None), {"replace": True},
     "install"),
    ("ours, current", _probe(version=_OURS), {}, "up-to-date"),
    ("ours, current, --force", _probe(version=_OURS), {"force": True}, "reinstall"),
    ("ours, current, --replace", _probe(version=_OURS), {"replace": True}, "replace"),
    ("ours, older", _probe(version=_OLDER), {}, "upgrade"),
    ("ours, older, broken", _probe(state="broken", version=_OLDER), {}, "upgrade"),
    ("ours, current, broken", _probe(state="broken", version=_OURS), {}, "refuse-broken"),
    ("ours, current, broken, --force", _probe(state="broken", version=_OURS), {"force": True},
     "reinstall"),
    ("ours, current, lacking APIs", _probe(version=_OURS, missing=["a.b"]), {},
     "refuse-missing-api"),
    ("foreign, complete", _probe(), {}, "keep"),
    ("foreign, on PYTHONPATH, complete", _probe(dist=None), {}, "keep"),
    ("foreign, complete, --force", _probe(), {"force": True}, "refuse-force"),
    ("foreign, complete, --replace", _probe(), {"replace": True}, "replace"),
    ("foreign, lacking APIs", _probe(missing=["detectron2.config.LazyConfig"]), {},
     "refuse-missing-api"),
    ("foreign, lacking APIs, --replace", _probe(missing=["x.y"]), {"replace": True}, "replace"),
    ("foreign, broken", _probe(state="broken"), {}, "refuse-broken"),
    ("foreign, broken, --force", _probe(state="broken"), {"force": True}, "refuse-force"),
    ("foreign, broken, --replace", _probe(state="broken"), {"replace": True}, "replace"),
]


@pytest.mark.parametrize("found, probe, flags, action", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decide_action(found, probe, flags, action):
    assert decide_action(probe, **flags) == action


def test_every_action_is_decided_somewhere():
    assert {action for *_, action in DECISIONS} == set(installer.ACTIONS)
    assert set(installer.REFUSAL_STATUS) <= set(installer.ACTIONS)


def _run_installer(*args, env=None, python=sys.executable, timeout=300):
    return subprocess.run([python, str(INSTALLER_PATH), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_wrapper_loads_the_installer_without_the_package_torch_or_detectron2():
    """A fresh clone runs tools/install_detectron2.py before anything is installed: it must not
    execute resbackbones/__init__.py (which imports Detectron2) nor need torch."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('wrapper', {str(INSTALLER_PATH)!r})\n"
            "wrapper = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(wrapper)\n"
            "print(wrapper.WHEEL_VERSION, wrapper.DEFAULT_CACHE)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('resbackbones', 'torch', 'detectron2')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    version_line, imported = result.stdout.strip().splitlines()
    assert version_line == f"{WHEEL_VERSION} {REPO_ROOT / '.cache' / 'detectron2'}"
    assert imported == "[]"


def test_installer_imports_only_the_standard_library():
    """It runs before torch, Detectron2 and the package's dependencies are installed, and must
    not import the package (whose __init__ imports Detectron2)."""
    import ast

    source = (REPO_ROOT / "resbackbones" / "installer.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is loaded by path"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == set()
    assert "resbackbones" not in imported


def test_installed_build_is_kept_through_the_package_command():
    """What a wheel user runs: `python -m resbackbones install-detectron2`."""
    result = subprocess.run([sys.executable, "-m", "resbackbones", "install-detectron2"],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    if _own_build():
        assert "already installed: Detectron2 v0.6 flavour" in result.stdout
    else:
        assert "keeping the detectron2 that already imports" in result.stdout
    assert "API self-test: all 32 APIs resbackbones calls are present" in result.stdout
    assert "downloading" not in result.stdout and "installing" not in result.stdout


def test_foreign_build_lacking_an_api_is_refused_with_names_flavours_and_fix(tmp_path):
    package = make_fake_detectron2(tmp_path, version="0.5", drop=["detectron2.config.LazyConfig"])
    before = tree(package)
    result = _run_installer(env=python_path_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"found: Detectron2 v0.6 flavour (version 0.5, not an installed distribution" \
        in result.stdout
    assert "API self-test: 1 of the 32 APIs resbackbones calls are missing: " \
           "detectron2.config.LazyConfig" in result.stdout
    error = result.stderr
    assert f"The Detectron2 at {package} (version 0.5) lacks 1 API(s) resbackbones calls: " \
           "detectron2.config.LazyConfig." in error
    assert "Supported flavours: v0.6:" in error and "main: upstream main" in error
    assert "Nothing was changed" in error and f"{INSTALLER_PATH} --replace" in error
    assert tree(package) == before


def test_detectron2_whose_extension_fails_to_load_is_reported_not_reinstalled(tmp_path):
    symbol = "undefined symbol: _ZN2at4_ops5zeros4callEN3c108ArrayRefINS2_6SymIntEEE"
    package = make_fake_detectron2(tmp_path, flavour="main", files={
        "_C.py": f"raise ImportError({('/site/detectron2/_C.so: ' + symbol)!r})\n"})
    result = _run_installer(env=python_path_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr
    assert f"detectron2 at {package} does not import" in error
    assert f"importing detectron2._C raised ImportError: /site/detectron2/_C.so: {symbol}" in error
    assert "Nothing was changed" in error and "never reinstalled unasked" in error
    assert f"built against another torch. Rebuild detectron2 for this torch" in error
    assert f"torch installed now ({installer.installed_versions(sys.executable)['torch']})" \
        in error
    assert "--replace" in error
    assert "building" not in result.stdout and "installing" not in result.stdout


def test_detectron2_missing_a_dependency_names_the_module(tmp_path):
    make_fake_detectron2(tmp_path, init_code="import resbackbones_test_absent_dependency\n")
    result = _run_installer(env=python_path_env(tmp_path))
    assert result.returncode == 1
    assert "importing detectron2 raised ModuleNotFoundError: No module named " \
           "'resbackbones_test_absent_dependency'" in result.stderr
    assert "a package Detectron2 needs is missing: the module " \
           "'resbackbones_test_absent_dependency'" in result.stderr


def test_complete_foreign_build_is_kept_and_force_does_not_replace_it(tmp_path):
    package = make_fake_detectron2(tmp_path, version="0.6", flavour="main")
    env = python_path_env(tmp_path)
    kept = _run_installer(env=env)
    assert kept.returncode == 0, kept.stderr
    assert ("keeping the detectron2 that already imports: Detectron2 main flavour (version 0.6, "
            f"not an installed distribution: a folder on sys.path or PYTHONPATH, pure Python, no "
            f"C++ ops) at {package}") in kept.stdout
    forced = _run_installer("--force", env=env)
    assert forced.returncode == 2
    assert "--force rebuilds resbackbones' own build only" in forced.stderr
    assert f"{INSTALLER_PATH} --replace" in forced.stderr


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    return make_bare_python(tmp_path_factory.mktemp("bare-venv") / "venv")


def test_nothing_installed_means_build_v06_and_torch_must_be_there(tmp_path, bare_python):
    deps = tmp_path / "deps"
    deps.mkdir()
    planned = _run_installer("--dry-run", python=bare_python, env=python_path_env(deps))
    assert planned.returncode == 0, planned.stderr
    assert (f"no detectron2 in {bare_python}: building Detectron2 v0.6 with "
            f"{len(installer.SOURCE_REWRITES)} source rewrites and installing it as detectron2 "
            f"{WHEEL_VERSION}") in planned.stdout
    assert "--dry-run: nothing was changed" in planned.stdout
    no_torch = _run_installer("--cache-dir", tmp_path / "cache", python=bare_python,
                              env=python_path_env(deps))
    assert no_torch.returncode == 1
    assert (f"torch is not installed in {bare_python}: install the build for your machine "
            "first") in no_torch.stderr
    assert "never installs or upgrades torch" in no_torch.stderr
    assert not (tmp_path / "cache").exists()  # failed before downloading anything


def test_interpreter_crash_while_importing_is_broken_not_absent(tmp_path, bare_python):
    make_fake_torch(tmp_path)
    make_fake_detectron2(tmp_path, files={"_C.py": "import os, signal\n"
                                                   "os.kill(os.getpid(), signal.SIGSEGV)\n"})
    probe = installer.probe_detectron2(bare_python, env=python_path_env(tmp_path))
    assert probe.state == "broken"
    assert probe.error.startswith("the interpreter was killed by signal 11 while importing")
    assert "does not load with the torch installed now" in installer.likely_fix(probe, "cmd")


def test_source_install_without_its_extension_is_broken_with_the_build_hint(tmp_path,
                                                                          bare_python):
    """Upstream's sources installed without building them: `from detectron2 import _C` at
    import (what the pb1-detectron2 sdist does, unpatched)."""
    make_fake_torch(tmp_path)
    package = make_fake_detectron2(tmp_path)
    engine = package / "engine" / "__init__.py"
    engine.write_text(engine.read_text() + "from detectron2 import _C\n")
    result = _run_installer(python=bare_python, env=python_path_env(tmp_path))
    assert result.returncode == 1
    assert ("importing detectron2.engine raised ImportError: cannot import name '_C' from "
            "'detectron2'") in result.stderr
    assert "installed from source without building it" in result.stderr


def test_a_fork_without_the_modules_compat_reads_is_refused_not_crashed(tmp_path, bare_python):
    import shutil

    make_fake_torch(tmp_path)
    package = make_fake_detectron2(tmp_path)
    shutil.rmtree(package / "utils" / "comm")
    probe = installer.probe_detectron2(bare_python, env=python_path_env(tmp_path))
    assert (probe.state, probe.flavour) == ("ok", "unknown")
    assert [m.split(" ")[0] for m in probe.missing_apis] == [
        "detectron2.utils.comm.get_local_rank", "detectron2.utils.comm._LOCAL_PROCESS_GROUP"]
    assert decide_action(probe) == "refuse-missing-api"


def _fake_world(tmp_path, version="0.5", flavour="main"):
    """A site folder with a foreign detectron2 installed as pip would (RECORD), and a fake torch
    in another folder: what the bare interpreter sees."""
    site, deps = tmp_path / "site", tmp_path / "deps"
    make_fake_detectron2(site, version=version, flavour=flavour)
    add_dist_info(site, "detectron2", version, "detectron2")
    make_fake_torch(deps)
    return site, deps


def test_replace_keeps_a_backup_and_restore_puts_the_old_build_back(tmp_path, bare_python,
                                                                   monkeypatch, capsys):
    site, deps = _fake_world(tmp_path)
    original = tree(site)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{deps}")
    probe = installer.probe_detectron2(bare_python)
    assert (probe.state, probe.flavour, probe.version) == ("ok", "main", "0.5")
    assert probe.distribution["name"] == "detectron2"
    assert decide_action(probe) == "keep"
    assert decide_action(probe, replace=True) == "replace"

    seen_at_install = []

    def fake_prepare_wheel(python, cache_dir):
        assert (site / "detectron2").exists()  # built before anything is removed
        return cache_dir / "wheels" / f"detectron2-{WHEEL_VERSION}-py3-none-any.whl"

    def fake_install_wheel(python, wheel, keep):  # what pip does, without pip
        seen_at_install.append(sorted(p.name for p in site.iterdir()))
        make_fake_detectron2(site, version=WHEEL_VERSION)
        add_dist_info(site, "detectron2", WHEEL_VERSION, "detectron2")

    monkeypatch.setattr(installer, "prepare_wheel", fake_prepare_wheel)
    monkeypatch.setattr(installer, "install_wheel", fake_install_wheel)
    cache = tmp_path / "cache"
    status = installer.carry_out("replace", probe, cache, command=["install-detectron2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert seen_at_install == [[]]  # the old one, byte code included, was gone: no namespace left
    (backup,) = (cache / "backups").iterdir()
    assert f"--replace: replacing Detectron2 main flavour (version 0.5" in out
    assert f"backed up detectron2 0.5 ({len(original)} files from {site}) to {backup}" in out
    assert f"to put it back: install-detectron2 --restore {backup}" in out
    assert f"removed {len(original)} files of detectron2 0.5 from {site}" in out
    assert f"installed: Detectron2 v0.6 flavour (version {WHEEL_VERSION}, built by " \
           "resbackbones' installer" in out
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["version"] == "0.5" and manifest["flavour"] == "main"
    assert tree(backup / "files") == original

    restored = _run_installer("--python", bare_python, "--cache-dir", cache, "--restore", backup)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(site) == original
    assert "restored: Detectron2 main flavour (version 0.5, installed as detectron2 0.5" \
        in restored.stdout
    (saved_ours,) = [p for p in (cache / "backups").iterdir() if p != backup]
    assert json.loads((saved_ours / "manifest.json").read_text())["version"] == WHEEL_VERSION
    assert f"to undo this restore later: {sys.executable} {INSTALLER_PATH} --restore " \
           f"{saved_ours}" in restored.stdout


def test_restore_of_a_folder_that_is_no_backup_names_the_backups(tmp_path):
    (tmp_path / "cache" / "backups" / "detectron2-0.5-20260101-000000").mkdir(parents=True)
    (tmp_path / "cache" / "backups" / "detectron2-0.5-20260101-000000" / "manifest.json") \
        .write_text("{}")
    result = _run_installer("--cache-dir", tmp_path / "cache", "--restore", tmp_path)
    assert result.returncode == 1
    assert f"--restore {tmp_path}: not a backup made by this installer (no manifest.json)" \
        in result.stderr
    assert "detectron2-0.5-20260101-000000" in result.stderr


def test_replace_refuses_a_folder_on_the_path(tmp_path):
    make_fake_detectron2(tmp_path, flavour="main")
    result = _run_installer("--replace", "--cache-dir", tmp_path / "cache",
                            env=python_path_env(tmp_path))
    assert result.returncode == 1
    assert "is not an installed distribution" in result.stderr
    assert "nothing was changed" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_bad_flags_are_refused():
    result = _run_installer("--restore", "x", "--replace")
    assert result.returncode == 2
    assert "--restore puts a backup back; it cannot be combined with --replace" in result.stderr
    missing = _run_installer("--python", "/no/such/python", "--dry-run")
    assert missing.returncode == 1
    assert "--python '/no/such/python' is not an executable Python interpreter" in missing.stderr


# ---------------------------------------------------------------------------------------------
# torch is never changed


def test_pip_runs_with_torch_pinned_and_only_if_needed_upgrades(tmp_path):
    record = tmp_path / "pip.json"
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "constraints = open(args[args.index('-c') + 1]).read()\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'args': args, 'c': constraints}}))\n")
    fake_python.chmod(0o755)
    installer.pip_install(str(fake_python), ["x.whl"], {"torch": "2.0.0", "torchvision": None})
    seen = json.loads(record.read_text())
    assert seen["args"][:3] == ["-m", "pip", "install"]
    assert seen["args"][-1] == "x.whl"
    strategy = seen["args"].index("--upgrade-strategy")
    assert seen["args"][strategy + 1] == "only-if-needed"
    assert seen["c"] == "torch==2.0.0\n"


def test_a_changed_torch_fails_loudly(tmp_path, bare_python, monkeypatch):
    make_fake_torch(tmp_path, "2.0.0")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    before = installer.installed_versions(bare_python)
    assert before == {"torch": "2.0.0", "torchvision": None}
    installer.check_torch_unchanged(bare_python, before)  # unchanged: no error
    (tmp_path / "torch-2.0.0.dist-info").rename(tmp_path / "torch-2.1.0.dist-info")
    metadata = tmp_path / "torch-2.1.0.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text().replace("2.0.0", "2.1.0"))
    with pytest.raises(installer.TorchChangedError) as error:
        installer.check_torch_unchanged(bare_python, before)
    message = str(error.value)
    assert "pip changed torch 2.0.0 -> 2.1.0 while installing detectron2" in message
    assert f"{bare_python} -m pip install torch==2.0.0" in message


# ---------------------------------------------------------------------------------------------
# The main snapshot, and make setup with an environment of one's own


def test_probe_of_upstream_main_reports_main_and_no_missing_api():
    root = require_detectron2_main()
    probe = installer.probe_detectron2(sys.executable, env=main_environment(root))
    assert probe.state == "ok", probe.error
    assert probe.flavour == "main"
    assert probe.missing_apis == ()
    assert probe.location == str((root / "detectron2").resolve())
    assert probe.distribution is None  # the installed v0.6's metadata is not taken for it
    assert decide_action(probe) == "keep"


def _fake_make_python(tmp_path):
    """A stand-in interpreter that logs every call (and its PIP_CONSTRAINT) and reports torch."""
    log = tmp_path / "calls.log"
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(repr((sys.argv[1:], os.environ.get('PIP_CONSTRAINT'))) + '\\n')\n"
        "if sys.argv[1] == '-c' and 'importlib.metadata' in sys.argv[2]:\n"
        "    print('torch==2.3.1\\ntorchvision==0.18.1')\n")
    python.chmod(0o755)
    return python, log


def test_make_setup_uses_an_existing_environment_and_pins_its_torch(tmp_path):
    python, log = _fake_make_python(tmp_path)
    stamps = tmp_path / "stamps"
    result = subprocess.run(["make", "--no-print-directory", "setup", f"USE_PYTHON={python}",
                             f"STAMPS={stamps}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 (our own repr)
    commands = [" ".join(args) for args, _ in calls]
    assert not any("venv" in command for command in commands)
    assert not any("install" in c and ("torch " in c or c.endswith("torch")) for c in commands)
    (pip_args, constraint), = [(a, c) for a, c in calls if a[:2] == ["-m", "pip"]]
    assert "install" in pip_args
    assert "-e" in pip_args
    assert Path(constraint).read_text() == "torch==2.3.1\ntorchvision==0.18.1\n"
    assert any(a == ["tools/install_detectron2.py"] for a, _ in calls)
    assert any(a == ["-m", "resbackbones.env"] for a, _ in calls)
    assert f"make: using {python} as it is (no .venv); pip keeps torch==2.3.1 " \
           "torchvision==0.18.1" in result.stdout
    assert (stamps / "package").exists()


def test_make_setup_refuses_an_environment_without_torch(tmp_path):
    python = tmp_path / "python"
    python.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(1)\n")
    python.chmod(0o755)
    result = subprocess.run(["make", "--no-print-directory", "setup", f"USE_PYTHON={python}",
                             f"STAMPS={tmp_path / 'stamps'}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"make: {python} has no torch and torchvision: install the build for your machine " \
           "first" in result.stderr
    assert not (tmp_path / "stamps" / "package").exists()


def test_make_setup_default_still_makes_its_own_venv():
    result = subprocess.run(["make", "-n", "-B", "--no-print-directory", "setup"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "python3 -m venv .venv"
    assert ".venv/bin/python -m pip --disable-pip-version-check install --quiet torch " \
           "torchvision" in lines
    assert "keep-torch" not in result.stdout and "PIP_CONSTRAINT" not in result.stdout
