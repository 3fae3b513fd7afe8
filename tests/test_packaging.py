"""Packaging (issue #24): a lean core install, every other dependency an extra.

- ``import resbackbones``, building a model and a training run import no extra: a subprocess
  makes every extra's modules unimportable and records who tried to import them;
- a feature whose extra is missing raises an ImportError with the exact ``pip install`` line;
- the distributions that ``pip install resbackbones`` pulls in are a short list kept here, so a
  new heavy dependency fails a test instead of reaching every training cluster;
- every third-party import of the library is declared (core, or an extra through
  ``resbackbones._requirements.require_extra``).

Run as a script (``.venv/bin/python tests/test_packaging.py``) to print the install size of the
core closure against ``[all]``, measured on the installed files.
"""
from __future__ import annotations

import ast
import configparser
import functools
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from resbackbones._requirements import EXTRAS, MissingExtraError, pip_install_line, require_extra

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "resbackbones"
QUICK = REPO / "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"

# Extras that are not features of the library.
NON_FEATURE_EXTRAS = ("test", "dev", "all")
# In user-facing extras but deliberately left out of `all` (see its comment in setup.cfg).
NOT_IN_ALL = ("resunetpp",)
# The user's own torch build decides their dependencies (CPU or CUDA wheels): not walked into.
USER_CHOSEN = ("torch", "torchvision")
# What `pip install resbackbones` installs next to torch/torchvision (Linux, Python 3.11, the
# installed versions). About half of it is the Hugging Face hub client and its HTTP stack, which
# timm requires. Change this list deliberately, never to make the test pass.
CORE_DISTRIBUTIONS = {
    "anyio", "click", "filelock", "fsspec", "fvcore", "h11", "hf-xet", "httpcore2", "httpx2",
    "huggingface-hub", "idna", "iopath", "numpy", "packaging", "pillow", "portalocker",
    "pycocotools", "pyyaml", "safetensors", "shapely", "tabulate", "termcolor", "timm", "torch",
    "torchvision", "tqdm", "truststore", "typing-extensions", "yacs",
}
# Required only on some platforms or Python versions: ignored when comparing with the list.
PLATFORM_CONDITIONAL = {"colorama", "exceptiongroup", "hf-xet", "tomli"}
# Detectron2 is installed by tools/install_detectron2.py with its own requirements; the library
# uses this one of them only together with Detectron2 (LazyConfig files, in compat.py).
WITH_DETECTRON2 = {"detectron2", "omegaconf"}
# What the issue says a training cluster must not get from the core install.
NEVER_IN_CORE = {"gradio", "opencv-python", "opencv-python-headless", "matplotlib",
                 "faster-coco-eval", "psutil", "onnx", "onnxruntime", "scikit-image", "pandas",
                 "segmentation-models-pytorch"}


def read_requirements() -> Tuple[List[str], Dict[str, List[str]]]:
    """setup.cfg's install_requires and extras_require (``%(test)s`` interpolated)."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")

    def lines(value: str) -> List[str]:
        return [line.strip() for line in value.splitlines() if line.strip()]

    extras = {name: lines(value) for name, value in parser["options.extras_require"].items()}
    return lines(parser["options"]["install_requires"]), extras


def distribution_closure(requirements: Iterable[str],
                         leaves: Iterable[str] = USER_CHOSEN) -> Set[str]:
    """The installed distributions ``requirements`` pull in, transitively (canonical names).

    Requirement markers are evaluated for this interpreter and platform, with the extras each
    requirement asks for (``extra == "x"`` markers of other extras are skipped); ``leaves`` are
    included but not walked into.

    Raises:
        importlib.metadata.PackageNotFoundError: a required distribution is not installed here.
    """
    leaves = {canonicalize_name(name) for name in leaves}
    extras_seen: Dict[str, Set[str]] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        asked = {canonicalize_name(extra) for extra in requirement.extras}
        if name in extras_seen and asked <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(asked)
        if name in leaves:
            continue
        for text in importlib.metadata.distribution(name).requires or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(
                    dependency.marker.evaluate({"extra": extra}) for extra in {"", *asked}):
                pending.append(dependency)
    return set(extras_seen)


def install_size_bytes(distributions: Iterable[str]) -> int:
    """Bytes on disk of the files each installed distribution's RECORD lists."""
    total = 0
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return total


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Dict[str, List[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed distribution


def _top_level_modules() -> Dict[str, Set[str]]:
    """Canonical distribution name -> the top-level modules it installs."""
    modules: Dict[str, Set[str]] = {}
    for module, distributions in _packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(canonicalize_name(distribution), set()).add(module)
    return modules


def _distribution_of(module: str) -> Set[str]:
    top = module.partition(".")[0]
    return {canonicalize_name(name)
            for name in _packages_distributions().get(top, [])}


def _names(requirements: Iterable[str]) -> Set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def extra_modules() -> Dict[str, Set[str]]:
    """For each user-facing extra, the installed top-level modules of its own distributions
    (those the core does not pull in anyway)."""
    core, extras = read_requirements()
    core_closure = distribution_closure(core)
    modules = _top_level_modules()
    return {extra: {module for name in _names(extras[extra]) - core_closure
                    for module in modules.get(name, ())}
            for extra in EXTRAS}


# --- setup.cfg and the helper agree -------------------------------------------------------------

def test_setup_cfg_extras_are_the_helpers_extras_and_all_holds_every_feature():
    core, extras = read_requirements()
    user_facing = [name for name in extras if name not in NON_FEATURE_EXTRAS]
    assert sorted(user_facing) == sorted(EXTRAS), (
        "setup.cfg's extras and resbackbones._requirements.EXTRAS differ: add the new extra to "
        "both (EXTRAS is what require_extra accepts).")
    in_all = set().union(*(extras[name] for name in EXTRAS if name not in NOT_IN_ALL))
    assert set(extras["all"]) == in_all
    # make setup installs every feature and the test tools.
    assert '-e ".[all,test]"' in (REPO / "Makefile").read_text()
    # A floor, never a pin or cap, on what a user's CUDA build provides.
    for requirement in map(Requirement, core):
        if canonicalize_name(requirement.name) in USER_CHOSEN:
            assert {spec.operator for spec in requirement.specifier} <= {">="}, requirement


def test_require_extra_refuses_an_unknown_extra_and_returns_the_module():
    with pytest.raises(ValueError, match=r"Unknown extra 'plot'.*valid: demo, plots"):
        require_extra("plot", "matplotlib", "A plot")
    assert require_extra("plots", "json", "A test") is json  # any importable module


def test_every_require_extra_call_names_the_extra_that_installs_its_module():
    _, extras = read_requirements()
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra"
                    and all(isinstance(arg, ast.Constant) for arg in node.args[:2])):
                calls.append((path.relative_to(REPO), node.args[0].value, node.args[1].value))
    assert len(calls) >= 10  # the scan sees the call sites
    for path, extra, module in calls:
        providers = _distribution_of(module)
        if providers:  # installed here: its distribution must be one the extra installs
            assert providers & _names(extras[extra]), (
                f"{path}: require_extra({extra!r}, {module!r}): {module} comes from "
                f"{sorted(providers)}, which setup.cfg's '{extra}' extra does not list.")


def _imports_by_function(tree: ast.AST):
    """(import node, its innermost enclosing function or None) for every import in ``tree``."""
    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, function
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            yield from visit(child, inner)

    return visit(tree, None)


def _required_before(function: ast.AST, line: int) -> Set[str]:
    """Top-level modules that ``function`` asks ``require_extra`` for before ``line``."""
    return {node.args[1].value.partition(".")[0] for node in ast.walk(function)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra"
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
            and node.lineno < line}


def test_every_third_party_import_of_the_library_is_declared():
    """Module-level imports are core (or Detectron2's, installed by its own tool); an extra's
    package is imported inside the function that needs it, after require_extra asked for it
    (so that a missing one names its pip install line)."""
    core, extras = read_requirements()
    core_names = _names(core) | WITH_DETECTRON2
    extra_names = set().union(*(_names(extras[name]) for name in EXTRAS))
    problems = []
    for path in PACKAGE.rglob("*.py"):
        for node, function in _imports_by_function(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("resbackbones", "__future__"):
                    continue
                providers = _distribution_of(top) or {canonicalize_name(top)}
                where = f"{path.relative_to(REPO)}:{node.lineno} imports {module}"
                if providers & core_names:
                    continue
                if not providers & extra_names:
                    problems.append(f"{where}, from {', '.join(sorted(providers))}, which "
                                    "setup.cfg does not declare")
                elif function is None:
                    problems.append(f"{where} (an extra's package) at module level")
                elif top not in _required_before(function, node.lineno):
                    problems.append(f"{where} (an extra's package) without require_extra first")
    assert not problems, (
        "Declare each distribution in setup.cfg (install_requires, or an extra) and import an "
        "extra's module inside the function that uses it, through "
        "resbackbones._requirements.require_extra:\n" + "\n".join(problems))


# --- the core install --------------------------------------------------------------------------

def test_core_install_pulls_in_a_short_deliberate_list():
    core, _ = read_requirements()
    closure = distribution_closure(core)
    assert not closure & NEVER_IN_CORE, sorted(closure & NEVER_IN_CORE)
    new = sorted(closure - CORE_DISTRIBUTIONS - PLATFORM_CONDITIONAL)
    gone = sorted(CORE_DISTRIBUTIONS - closure - PLATFORM_CONDITIONAL)
    assert not new and not gone, (
        f"`pip install resbackbones` now pulls in {len(closure)} distributions (new: {new}, no "
        f"longer: {gone}). If that is deliberate, update CORE_DISTRIBUTIONS in "
        "tests/test_packaging.py; otherwise make the dependency an extra in setup.cfg and import "
        "it through resbackbones._requirements.require_extra.")


def test_all_closure_contains_the_core_and_every_extra():
    core, extras = read_requirements()
    core_closure = distribution_closure(core)
    all_closure = distribution_closure(core + extras["all"])
    assert core_closure < all_closure
    assert _names(extras["all"]) <= all_closure
    assert install_size_bytes(core_closure - set(USER_CHOSEN)) < install_size_bytes(
        all_closure - set(USER_CHOSEN))


# --- a missing extra: the feature says how to install it -----------------------------------------

def _web_demo():
    from resbackbones.demo.app import build_app

    build_app(demo=None)


def _drawing():
    import numpy as np
    from detectron2.structures import Instances

    from resbackbones.demo.drawing import draw_detections

    draw_detections(np.zeros((8, 8, 3), np.uint8), Instances((8, 8)), ["a"])


def _video(tmp_path):
    from resbackbones.demo.batch import run_on_video

    run_on_video(None, str(tmp_path / "clip.mp4"), str(tmp_path))


def _metrics_plot(tmp_path):
    from resbackbones.engine.plots import plot_metrics

    plot_metrics(str(tmp_path))


def _drawn_predictions(tmp_path):
    from resbackbones.engine.visualize import draw_predictions

    draw_predictions(None, None, "any", str(tmp_path))


def _onnx_export(tmp_path):
    from resbackbones.deploy.export import export_detector

    export_detector(None, None, str(tmp_path), fmt="onnx")


def _onnx_runner(tmp_path):
    from resbackbones.deploy.onnx_runner import OnnxDetector

    OnnxDetector(str(tmp_path))


def _benchmark_memory():
    import torch

    from resbackbones.benchmark.harness import PeakMemory

    with PeakMemory(torch.device("cpu")):
        pass


def _benchmark_plot(tmp_path):
    from resbackbones.benchmark.report import plot_scaling

    plot_scaling([], str(tmp_path / "plot.png"))


def _faster_coco_eval():
    from resbackbones.engine.evaluation import FasterCOCOEvaluator

    FasterCOCOEvaluator("any")


@pytest.mark.parametrize("feature, module, extra", [
    (lambda tmp: _web_demo(), "gradio", "demo"),
    (lambda tmp: _drawing(), "cv2", "demo"),
    (lambda tmp: _drawing(), "matplotlib", "demo"),
    (_video, "cv2", "demo"),
    (_metrics_plot, "matplotlib", "plots"),
    (_drawn_predictions, "cv2", "plots"),
    (_onnx_export, "onnx", "export"),
    (_onnx_export, "onnxruntime", "export"),
    (_onnx_runner, "onnxruntime", "export"),
    (lambda tmp: _benchmark_memory(), "psutil", "benchmark"),
    (_benchmark_plot, "matplotlib", "benchmark"),
    (lambda tmp: _faster_coco_eval(), "faster_coco_eval", "fast-eval"),
], ids=["web-demo", "drawing-cv2", "drawing-matplotlib", "video", "metrics-plot",
        "drawn-predictions", "export-onnx", "export-onnxruntime", "onnx-runner",
        "benchmark-memory", "benchmark-plot", "faster-coco-eval"])
def test_a_feature_without_its_extra_names_the_pip_install_line(feature, module, extra,
                                                                monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError) as raised:
        feature(tmp_path)
    assert isinstance(raised.value, ImportError)
    message = str(raised.value)
    assert f"'{module}'" in message and pip_install_line(extra) in message
    assert pip_install_line(extra) == f"pip install 'resbackbones[{extra}]'"


# --- a training run without any extra ------------------------------------------------------------

# Runs in a fresh interpreter. Every meta-path finder is wrapped so that it does not find a
# blocked module, as if it were not installed (``import`` raises ModuleNotFoundError,
# ``importlib.util.find_spec`` returns None: torch probes some with find_spec), and a first finder
# records which module asked for it (the first frame outside importlib). Then the script imports
# the package, builds a model from a config and trains a few iterations with evaluation and the
# run report.
_WITHOUT_EXTRAS = textwrap.dedent('''
    import importlib.abc
    import json
    import logging
    import sys

    blocked, quick, data_root, output_dir, report = sys.argv[1:6]
    BLOCKED = set(json.loads(blocked))
    attempts = []


    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                frame = sys._getframe(1)
                while frame is not None and frame.f_globals.get("__name__", "").startswith(
                        "importlib"):
                    frame = frame.f_back
                attempts.append([frame.f_globals.get("__name__", "?") if frame else "?", name])
            return None


    class NotFinding(importlib.abc.MetaPathFinder):
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):
                return None
            return self.finder.find_spec(name, path, target)

        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()


    already = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    sys.meta_path[:] = [Recorder()] + [NotFinding(finder) for finder in sys.meta_path]
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)

    import resbackbones
    from detectron2.modeling import build_model
    from resbackbones.config import build_config
    from resbackbones.data import (SyntheticSpec, generate_synthetic_coco, register_coco_dataset,
                                   synthetic_paths)
    from resbackbones.engine import Trainer

    generate_synthetic_coco(data_root, SyntheticSpec(num_train=4, num_val=2, seed=0, height=64,
                                                     width=96, max_instances=2))
    for split in ("train", "val"):
        register_coco_dataset(f"no_extras_{split}", *synthetic_paths(data_root, split))
    cfg = build_config(quick, [
        "DATASETS.TRAIN", "('no_extras_train',)", "DATASETS.TEST", "('no_extras_val',)",
        "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
        "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", output_dir])
    build_model(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    imported = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    with open(report, "w") as f:
        json.dump({"already": already, "attempts": attempts, "imported": imported,
                   "results": sorted(results)}, f)
''')


@pytest.mark.slow
def test_package_model_and_training_run_import_no_extra(tmp_path):
    modules = extra_modules()
    for extra, names in modules.items():
        if extra not in NOT_IN_ALL:  # installed by make setup: the test must block something
            assert names, f"no installed module of the '{extra}' extra: nothing to block"
    blocked = sorted(set().union(*modules.values()))
    script = tmp_path / "without_extras.py"
    script.write_text(_WITHOUT_EXTRAS)
    output_dir, report = tmp_path / "output", tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(script), json.dumps(blocked), str(QUICK), str(tmp_path / "data"),
         str(output_dir), str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    outcome = json.loads(report.read_text())
    print("import attempts of blocked modules (importer, module):", outcome["attempts"])
    assert outcome["already"] == []  # nothing got in before the finder
    assert outcome["imported"] == []
    # Our code asks for an extra's module only through require_extra / module_installed, which
    # is how a missing one is found out; third parties may probe too (Detectron2 tries cv2,
    # and falls back).
    ours = {importer for importer, _ in outcome["attempts"] if importer.startswith("resbackbones")}
    assert ours <= {"resbackbones._requirements"}, outcome["attempts"]
    # ... and only for the optional fast path and the two end-of-run pictures.
    asked = {module for importer, module in outcome["attempts"]
             if importer == "resbackbones._requirements"}
    assert asked <= {"faster_coco_eval", "matplotlib", "cv2"}, outcome["attempts"]
    assert (output_dir / "model_final.pth").is_file()
    assert (output_dir / "last_checkpoint").is_file()
    assert "bbox" in outcome["results"]  # COCO evaluation ran, with pycocotools
    assert not (output_dir / "metrics.png").exists()
    assert not list((output_dir / "visualizations").glob("*.png"))
    log = run.stdout + run.stderr
    assert "metrics.png not written" in log and "visualizations/ not written" in log
    assert log.count(pip_install_line("plots")) >= 2
    assert "using the official pycocotools COCOeval" in log


def _size_report() -> str:
    core, extras = read_requirements()
    core_closure = distribution_closure(core)
    rows = [("core (pip install resbackbones), without torch/torchvision",
             core_closure - set(USER_CHOSEN))]
    for extra in EXTRAS + ("all",):
        try:
            closure = distribution_closure(core + extras[extra])
        except importlib.metadata.PackageNotFoundError as error:
            rows.append((f"[{extra}] adds", f"not installed here ({error})"))
            continue
        rows.append((f"[{extra}] adds", closure - core_closure))
    torch_closure = distribution_closure(USER_CHOSEN, leaves=())
    rows.append(("torch + torchvision as installed here (build-dependent)", torch_closure))
    rows.append(("core adds to an environment with torch + torchvision",
                 core_closure - torch_closure))
    try:  # Detectron2's own requirements come with it (tools/install_detectron2.py)
        rows.append(("detectron2 with its requirements adds to the core",
                      distribution_closure(["detectron2"]) - core_closure))
    except importlib.metadata.PackageNotFoundError as error:
        rows.append(("detectron2 adds", f"not installed here ({error})"))
    lines = []
    for label, names in rows:
        if isinstance(names, str):
            lines.append(f"{label:62} {names}")
        else:
            lines.append(f"{label:62} {len(names):3d} distributions "
                         f"{install_size_bytes(names) / 2**20:9.1f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_size_report())
