#!/usr/bin/env python
"""Check this environment's detectron2 and install Detectron2 v0.6 only where none is installed.

A thin wrapper over :func:`resbackbones.installer.main` (``python -m resbackbones
install-detectron2`` once the package is installed; see that module for what it does). It runs
before the package and its dependencies are installed, so it loads ``resbackbones/installer.py``
by file path (standard library only) without executing ``resbackbones/__init__.py``.
"""
import importlib.util
import sys
from pathlib import Path

INSTALLER_PATH = Path(__file__).resolve().parents[1] / "resbackbones" / "installer.py"


def load_installer():
    """The installer module, loaded from its file (not through the ``resbackbones`` package)."""
    spec = importlib.util.spec_from_file_location("resbackbones_installer", INSTALLER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


_installer = load_installer()


def __getattr__(name):
    """Older callers read the installer's names from this file (``WHEEL_VERSION``, ...)."""
    return getattr(_installer, name)


if __name__ == "__main__":
    sys.exit(_installer.main(prog="tools/install_detectron2.py",
                             command=[sys.executable, str(Path(__file__).resolve())]))
