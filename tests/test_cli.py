"""``python -m resbackbones <command>``: the command table, every command's ``--help``, the
errors of a bad command, the tools as thin wrappers over the same functions, and (slow) a wheel
installed outside the repository that lists its configs and trains from one of them by name."""
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from resbackbones.__main__ import COMMANDS, Command, main
from resbackbones.model_zoo_files import config_root, list_configs

REPO = Path(__file__).resolve().parents[1]
# Reserved for commands that another part of the package provides: until it does, the entry
# must fail alone with a message naming what is missing.
PROVIDED_ELSEWHERE = {"doctor", "install-detectron2"}
# tools/*.py -> the command that runs the same function. Not commands: the installer (runs
# before the package is installed, stdlib only) and the checkout's own maintenance scripts.
TOOL_COMMANDS = {
    "train_net": "train", "quickstart": "quickstart", "demo": "demo", "gradio_demo": "web-demo",
    "export_model": "export", "benchmark": "benchmark", "validate_dataset": "validate-dataset",
    "make_synthetic_coco": "make-synthetic-coco", "convert_weights": "convert-weights",
    "plot_metrics": "plot-metrics",
}
NOT_COMMANDS = {"install_detectron2", "generate_configs", "gpu_check"}
QUICK = "quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"

# Every command's --help as a user types it (sys.argv as `python -m resbackbones` sets it), in
# one interpreter: the package and Detectron2 are imported once for all of them.
_HELP_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    import resbackbones.__main__ as cli

    def run(argv):
        sys.argv = [cli.__file__, *argv]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main()
            except SystemExit as stop:  # argparse's --help
                status = stop.code or 0
        return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}

    results = {"--help": run(["--help"])}
    for name in cli.COMMANDS:
        results[name] = run([name, "--help"])
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def help_outputs():
    result = subprocess.run([sys.executable, "-c", _HELP_SCRIPT], capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_help_lists_every_command_with_one_line(help_outputs):
    top = help_outputs["--help"]
    assert top["status"] == 0
    lines = top["stdout"].splitlines()
    for name, command in COMMANDS.items():
        assert [line.split(None, 1) for line in lines if line.split()[:1] == [name]] == [
            [name, command.summary]], name
    expected = {"list", "show", "configs", "train", "quickstart", "demo", "web-demo", "export",
                "benchmark", "validate-dataset", "make-synthetic-coco", "convert-weights",
                "plot-metrics", "doctor", "install-detectron2"}
    assert set(COMMANDS) == expected


def test_every_command_help_exits_0_and_names_the_command(help_outputs):
    unavailable = {}
    for name in COMMANDS:
        result = help_outputs[name]
        if result["status"] == 1 and "which this installation of resbackbones does not have" in \
                result["stderr"]:
            unavailable[name] = result["stderr"]
            continue
        assert result["status"] == 0, (name, result["stderr"][-2000:])
        assert f"usage: python -m resbackbones {name}" in result["stdout"], name
    # Only the reserved entries may be missing, and they say what they need.
    assert set(unavailable) <= PROVIDED_ELSEWHERE, unavailable
    for name, message in unavailable.items():
        assert COMMANDS[name].target.split(":")[0] in message


def test_an_unknown_command_names_the_close_ones(capsys):
    assert main(["trian"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'trian'. Did you mean: train?" in error
    assert "validate-dataset" in error  # the valid ones
    assert main([]) == 2 and "commands:" in capsys.readouterr().err


def test_a_command_whose_function_is_missing_fails_alone(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "gone", Command("resbackbones.no_such_module:main", "x"))
    monkeypatch.setitem(COMMANDS, "renamed", Command("resbackbones.model_zoo_files:no_main", "x"))
    assert main(["gone"]) == 1
    assert ("command 'gone' needs resbackbones.no_such_module, which this installation of "
            "resbackbones does not have") in capsys.readouterr().err
    assert main(["renamed"]) == 1
    assert "needs resbackbones.model_zoo_files:no_main" in capsys.readouterr().err
    assert main(["configs", "quick_schedules"]) == 0  # the others still work


def test_a_command_whose_dependency_fails_to_import_says_so(monkeypatch, capsys, tmp_path):
    (tmp_path / "broken_command.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "broken", Command("broken_command:main", "x"))
    assert main(["broken"]) == 1
    assert ("command 'broken' needs broken_command, which fails to import: No module named "
            "'no_such_dependency'") in capsys.readouterr().err


def test_configs_lists_the_packaged_configs(capsys):
    assert main(["configs"]) == 0
    assert capsys.readouterr().out.splitlines() == list_configs()
    assert main(["configs", "synthetic", "--paths"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(config_root() / name) for name in list_configs("synthetic")]
    assert main(["configs", "resnet51"]) == 1
    assert "no packaged config name contains 'resnet51'" in capsys.readouterr().err


def _imported_functions(tool: Path):
    tree = ast.parse(tool.read_text())
    return tree, [f"{node.module}:{alias.name}" for node in tree.body
                  if isinstance(node, ast.ImportFrom) for alias in node.names]


def test_tools_are_thin_wrappers_over_the_commands_functions():
    tools = {p.stem for p in (REPO / "tools").glob("*.py")}
    assert tools == set(TOOL_COMMANDS) | NOT_COMMANDS, "a new tool: give it a command"
    for stem, name in TOOL_COMMANDS.items():
        tree, imported = _imported_functions(REPO / "tools" / f"{stem}.py")
        definitions = [node.name for node in tree.body
                       if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not definitions, f"tools/{stem}.py defines {definitions}: move it to the library"
        target = COMMANDS[name].target
        if callable(target):
            target = f"{target.__module__}:{target.__name__}"
        assert imported == [target], (stem, imported, target)


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


@pytest.mark.slow
def test_a_wheel_outside_the_repository_lists_its_configs_and_trains_by_name(tmp_path):
    """Build the wheel from a copy of the sources, install it into a fresh virtual environment
    that sees this one's torch and Detectron2 but not the repository, and use it from a folder
    outside the repository, as a pip user would."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "configs", source / "configs")
    shutil.copytree(REPO / "resbackbones", source / "resbackbones", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation: the build runs offline with this environment's setuptools.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, timeout=600, cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("resbackbones-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n[len("resbackbones/configs/"):] for n in archive.namelist()
                    if n.startswith("resbackbones/configs/")}
    assert packaged == set(list_configs())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    site = _site_packages(venv)
    # torch, Detectron2 & co. from this environment; a plain path line, so that the .pth files
    # there (among them the editable install's finder for the repository) are not run.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=600)

    user = tmp_path / "user"
    user.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"

    def run(*args, timeout=600):
        result = subprocess.run([python, "-m", "resbackbones", *args], cwd=user, env=env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result

    listed = run("configs", "--paths").stdout.splitlines()
    installed = site / "resbackbones" / "configs"
    assert listed == [str(installed / name) for name in list_configs()]  # from the wheel
    assert not any(str(REPO) in line for line in listed)

    run("make-synthetic-coco", "--out", "data", "--num-train", "2", "--num-val", "1",
        "--image-size", "64", "96")
    data = ["--dataset", "tiny_train=data/annotations/instances_train.json:data/train",
            "--dataset", "tiny_val=data/annotations/instances_val.json:data/val"]
    trained = run("train", "--config-file", QUICK, *data,
                  "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
                  "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.WARMUP_ITERS", "1",
                  "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100",
                  "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                  "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
                  "MODEL.DEVICE", "cpu", "OUTPUT_DIR", "out")
    assert (user / "out" / "model_final.pth").is_file()
    # Detectron2 logged the config it read: the wheel's copy, found by name.
    assert f"args.config_file={installed / QUICK}" in trained.stdout + trained.stderr
