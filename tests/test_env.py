"""``python -m resbackbones doctor`` (resbackbones/env.py): the report on v0.6, on upstream main,
with a Detectron2 that is broken, lacks APIs or is missing, and the extras."""
import importlib.metadata
import re
import subprocess
import sys

import pytest

from detectron2_main import REPO, main_environment, require_detectron2_main
from fake_detectron2 import make_bare_python, make_fake_detectron2, python_path_env
from resbackbones import env


def _row(output: str, name: str) -> str:
    """The value of one row of the report (``name`` padded, two spaces, value)."""
    match = re.search(rf"^{re.escape(name)} {{2,}}(.*)$", output, re.MULTILINE)
    assert match, f"no row {name!r} in:\n{output}"
    return match.group(1)


def _doctor(*args, python=sys.executable, environment=None, timeout=300):
    return subprocess.run([python, "-m", "resbackbones", "doctor", *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=timeout)


def test_doctor_on_v06_names_the_flavour_and_passes(capsys):
    import detectron2
    import torch

    assert env.doctor_main([]) == 0
    output = capsys.readouterr().out
    assert _row(output, "Detectron2 flavour") == "v0.6"
    assert _row(output, "API self-test") == "all 32 APIs resbackbones calls are present"
    assert _row(output, "torch").startswith(f"{torch.__version__} (")
    assert _row(output, "CUDA available").startswith(f"{torch.cuda.is_available()} (")
    assert f"at {detectron2.__path__[0]}" in _row(output, "Detectron2")
    assert _row(output, "Detectron2 C++ ops").startswith("absent (")
    assert "The core works" in output


def test_doctor_on_upstream_main_names_the_flavour():
    root = require_detectron2_main()
    result = _doctor(environment=main_environment(root))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert _row(result.stdout, "Detectron2 flavour") == "main"
    assert _row(result.stdout, "Detectron2").startswith(
        "Detectron2 main flavour (version 0.6, not an installed distribution")
    assert _row(result.stdout, "API self-test") == "all 32 APIs resbackbones calls are present"


def test_doctor_reports_a_detectron2_that_fails_to_import(tmp_path):
    symbol = "undefined symbol: _ZN3c106detail14torchCheckFailEPKcS2_jRKSs"
    make_fake_detectron2(tmp_path, files={"_C.py": f"raise ImportError({symbol!r})\n"},
                         init_code="from detectron2 import _C\n")
    result = _doctor(environment=python_path_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert _row(result.stdout, "import error") == f"detectron2: ImportError: {symbol}"
    assert "The core does not work. To fix:" in result.stdout
    assert "Likely fix: detectron2's compiled C++ extension does not load" in result.stdout
    # import resbackbones said so too, and went on
    assert "Detectron2 is installed but resbackbones cannot import it" in result.stderr


@pytest.mark.slow  # imports timm before the builders find what is missing (~20 s)
def test_doctor_reports_a_detectron2_lacking_apis(tmp_path):
    package = make_fake_detectron2(tmp_path, version="0.5",
                                   drop=["detectron2.config.LazyConfig",
                                         "detectron2.export.TracingAdapter"])
    result = _doctor(environment=python_path_env(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert _row(result.stdout, "API self-test") == (
        "2 of the 32 APIs resbackbones calls are missing: detectron2.config.LazyConfig, "
        "detectron2.export.TracingAdapter")
    assert (f"The Detectron2 at {package} (version 0.5) lacks 2 API(s) resbackbones calls"
            in result.stdout)
    assert "Supported flavours: v0.6:" in result.stdout
    assert "python -m resbackbones install-detectron2 --replace" in result.stdout


def test_doctor_without_torch_or_detectron2_says_what_to_install(tmp_path):
    """A bare interpreter that sees only the source tree: nothing crashes, both are named."""
    bare = make_bare_python(tmp_path / "venv")
    result = subprocess.run([bare, "-m", "resbackbones.env"], cwd=tmp_path,
                            env=python_path_env(REPO), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert _row(result.stdout, "torch").startswith("does not import (ModuleNotFoundError")
    assert _row(result.stdout, "Detectron2") == "not installed"
    assert ("Detectron2 is not installed (it is not on PyPI): python -m resbackbones "
            "install-detectron2") in result.stdout
    assert "install the build for your machine (https://pytorch.org" in result.stdout


def test_missing_extras_get_their_pip_line_and_do_not_fail_the_core(monkeypatch):
    real = importlib.metadata.requires("resbackbones")
    fake = [r for r in real if "extra ==" not in r] + [
        'pytest>=8; extra == "checked"', 'resbackbones-no-such-distribution>=1; extra == "absent"']
    monkeypatch.setattr(importlib.metadata, "requires",
                        lambda name: fake if name == "resbackbones" else real)
    assert env.extras_status() == {"checked": {"pytest": "ok"},
                                   "absent": {"resbackbones-no-such-distribution": "not installed"}}
    report = env.doctor_report()
    assert report.core_works
    assert report.missing_extras == {"absent": "pip install 'resbackbones[absent]'"}
    rows = dict(report.rows)
    assert rows["extra 'checked'"] == "ok (pytest)"
    assert rows["extra 'absent'"] == ("missing (resbackbones-no-such-distribution not installed): "
                                      "pip install 'resbackbones[absent]'")
    assert "- absent: pip install 'resbackbones[absent]'" in env.format_doctor(report)


def test_a_missing_core_requirement_fails_the_core(monkeypatch):
    real = importlib.metadata.requires("resbackbones")
    monkeypatch.setattr(importlib.metadata, "requires",
                        lambda name: real + ["resbackbones-no-such-core>=1"])
    report = env.doctor_report()
    assert not report.core_works
    assert report.problems == ["requirements of resbackbones are not installed: "
                               "resbackbones-no-such-core: pip install resbackbones-no-such-core"]
