"""Upstream Detectron2 main for the compatibility tests: found, unpacked once, put on PYTHONPATH.

The tests run the library on main in subprocesses (this process has imported v0.6) with main's
pure-Python package first on ``PYTHONPATH``: no installer rewrite is applied to it, and its C++
extension is not built (the paths under test do not need it).

Found through ``RESBACKBONES_DETECTRON2_MAIN`` (a source checkout, or a ``git archive``
``.tar.gz`` of one) or at ``../shared/detectron2-main/detectron2-main-*.tar.gz`` next to the
repository (where CI has it). Elsewhere the tests that need it skip with one line saying how to
run them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT_VARIABLE = "RESBACKBONES_DETECTRON2_MAIN"
DEFAULT_SNAPSHOTS = REPO.parent / "shared" / "detectron2-main"
UNPACKED = REPO / ".cache" / "detectron2-main"
SKIP_REASON = (f"Detectron2 main not found: set {ENVIRONMENT_VARIABLE} to a checkout (or git "
               "archive .tar.gz) of upstream main to run the main-flavour tests")


def _source_root(directory: Path) -> Optional[Path]:
    """The folder holding ``detectron2/__init__.py`` (the checkout root), or None."""
    if (directory / "detectron2" / "__init__.py").is_file():
        return directory
    for child in sorted(directory.iterdir()) if directory.is_dir() else []:
        if (child / "detectron2" / "__init__.py").is_file():
            return child
    return None


def _unpack(archive: Path) -> Path:
    """Unpack ``archive`` once under .cache/ (atomically: a half-unpacked tree is never used)."""
    name = archive.name.split(".tar")[0]
    destination = UNPACKED / name
    found = _source_root(destination) if destination.exists() else None
    if found is not None:
        return found
    UNPACKED.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=UNPACKED))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(destination)
        except OSError:  # another process unpacked it first
            pass
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    found = _source_root(destination)
    if found is None:
        raise RuntimeError(f"{archive} holds no detectron2/__init__.py")
    return found


def find_detectron2_main() -> Optional[Path]:
    """The root of a Detectron2 main source tree (holding ``detectron2/``, ``tools/``,
    ``configs/``), or None when none is configured or found."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    candidates = [Path(configured)] if configured else sorted(
        DEFAULT_SNAPSHOTS.glob("detectron2-main-*.tar.gz"))
    for candidate in candidates:
        if candidate.is_dir():
            root = _source_root(candidate)
            if root is not None:
                return root
        elif candidate.is_file():
            return _unpack(candidate)
    if configured:
        raise RuntimeError(f"{ENVIRONMENT_VARIABLE}={configured} is neither a Detectron2 source "
                           "checkout nor a .tar.gz of one")
    return None


def require_detectron2_main() -> Path:
    root = find_detectron2_main()
    if root is None:
        pytest.skip(SKIP_REASON)
    return root


def main_environment(root: Path, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this environment) with main's package first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_on_main(root: Path, code: str, timeout: float = 300, cwd: Optional[Path] = None,
                env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run Python ``code`` with main on PYTHONPATH; output captured (short scripts only)."""
    return subprocess.run([sys.executable, "-c", code], env=main_environment(root, env),
                          cwd=str(cwd or REPO), capture_output=True, text=True, timeout=timeout)
