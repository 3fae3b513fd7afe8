"""Fake Detectron2 installations for the installer and doctor tests, made under ``tmp_path``.

A fake package has the modules and attribute names of ``compat.REQUIRED_APIS`` (so that the
installer's real probe and API self-test run on it) minus what a test drops; a fake site folder
adds a ``.dist-info`` with a RECORD, as pip writes one, so that backups and removal see it. The
"bare" interpreter is a venv without site packages: with a fake torch on ``PYTHONPATH`` nothing
of the project's own environment is visible to it, so a test of ``--replace``/``--restore`` can
never touch the real ``.venv``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional

from resbackbones.compat import REQUIRED_APIS

MAIN_ONLY_API = "create_local_process_group"  # how compat tells main from v0.6


def make_fake_detectron2(root: Path, version: str = "0.6", flavour: str = "v0.6",
                         drop: Iterable[str] = (), init_code: str = "",
                         files: Optional[Dict[str, str]] = None) -> Path:
    """Write a ``detectron2`` package under ``root`` with every required API except ``drop``
    (``"module.attribute"`` names); returns the package folder."""
    dropped = set(drop)
    attributes: Dict[str, list] = {"detectron2.utils.comm": []}
    for module, attribute in REQUIRED_APIS:
        attributes.setdefault(module, [])
        if f"{module}.{attribute}" not in dropped:
            attributes[module].append(attribute)
    if flavour == "main":
        attributes["detectron2.utils.comm"].append(MAIN_ONLY_API)
    for module in attributes:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            init = root.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.parent.mkdir(parents=True, exist_ok=True)
                init.write_text("")
    for module, names in attributes.items():
        root.joinpath(*module.split("."), "__init__.py").write_text(
            "".join(f"{name} = None\n" for name in names))
    package = root / "detectron2"
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n{init_code}")
    for relative, text in (files or {}).items():
        (package / relative).write_text(text)
    return package


def add_dist_info(site: Path, name: str, version: str, top_level: str) -> Path:
    """A ``.dist-info`` for the files of ``site/top_level`` (METADATA, INSTALLER, RECORD), as
    pip writes it; returns the folder."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "top_level.txt").write_text(f"{top_level}\n")
    files = sorted(p for p in (site / top_level).rglob("*") if p.is_file())
    files += [info / "METADATA", info / "INSTALLER", info / "top_level.txt"]
    lines = [f"{path.relative_to(site).as_posix()},," for path in files]
    (info / "RECORD").write_text("\n".join(lines + [f"{info.name}/RECORD,,"]) + "\n")
    return info


def make_fake_torch(site: Path, version: str = "2.0.0") -> None:
    """An importable ``torch`` with its distribution metadata (what the probe and the torch
    guard read), for the bare interpreter."""
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    add_dist_info(site, "torch", version, "torch")


def make_bare_python(folder: Path) -> str:
    """A venv without pip and without site packages: an interpreter that sees only what a test
    puts on ``PYTHONPATH``. Returns its ``python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                   timeout=120)
    return str(folder / "bin" / "python")


def python_path_env(*folders: Path, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this environment) with ``folders`` first on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(f) for f in folders] + existing)
    return env


def tree(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` but byte code: relative path -> contents."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
