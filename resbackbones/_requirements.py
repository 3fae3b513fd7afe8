"""Clear ImportErrors for what the core install lacks: Detectron2, and the optional extras.

``import resbackbones`` itself works without Detectron2 (the dependency-free ONNX runner in
``resbackbones.deploy`` and ``python -m resbackbones.env`` need that), but registers nothing;
every Detectron2-based package calls :func:`require_detectron2` first.

``pip install resbackbones`` installs what backbones, configs, training and COCO evaluation need;
the web demo, plots, export, the benchmark and the rest are extras (setup.cfg
``[options.extras_require]``). A module imports an extra's package only where the feature uses
it, through :func:`require_extra`, so that the package, a model and a training run never need
one and a missing one fails with the exact ``pip install`` line.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "detectron2_installed", "module_installed",
           "pip_install_line", "require_detectron2", "require_extra"]

# The user-facing extras of setup.cfg (tests/test_packaging.py keeps the two equal).
EXTRAS = ("demo", "plots", "fast-eval", "export", "benchmark", "resunetpp")


class MissingExtraError(ImportError):
    """An optional feature's package is not installed; the message holds the ``pip install``
    line of the extra that provides it. Callers that can do without the feature (the end-of-run
    plots) catch this and nothing broader."""


def pip_install_line(extra: str) -> str:
    """The command that installs ``extra``, e.g. ``pip install 'resbackbones[demo]'`` (quoted
    for the shell: brackets are glob characters in zsh)."""
    return f"pip install 'resbackbones[{extra}]'"


def module_installed(module: str) -> bool:
    """Whether ``module`` could be imported, without importing it: for optional fast paths
    (faster-coco-eval) that are picked when present and need no error when absent."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, module: str, feature: str) -> ModuleType:
    """Import and return ``module``, a package of the ``extra`` extra that ``feature`` needs.

    Why one helper: every optional import then fails the same way, naming the feature and the
    exact ``pip install`` line, instead of a bare ``No module named 'gradio'``.

    Args:
        extra: the setup.cfg extra that installs ``module`` (one of :data:`EXTRAS`).
        module: the module to import, e.g. ``"gradio"`` or ``"matplotlib.pyplot"``.
        feature: what needs it, named in the message (``"The web demo"``).

    Raises:
        ValueError: ``extra`` is not an extra of the package (a mistake in the caller).
        MissingExtraError: ``module`` cannot be imported.
    """
    if extra not in EXTRAS:
        raise ValueError(f"Unknown extra {extra!r} (asked for {module!r} by {feature}); "
                         f"valid: {', '.join(EXTRAS)}.")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{feature} needs the '{module}' module, which cannot be imported here ({error}). "
            f"Install the '{extra}' extra: {pip_install_line(extra)}") from error


def detectron2_installed() -> bool:
    """Whether ``import detectron2`` can succeed (without importing it)."""
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


def require_detectron2(what: str) -> None:
    """Raise an ImportError that says how to install Detectron2 if it is missing.

    Args:
        what: the module that needs it, named in the message.
    """
    try:
        # By name, like require_extra: this module is the bottom layer, importable by the
        # Detectron2-free ONNX runner, so it holds no import of Detectron2 itself.
        importlib.import_module("detectron2")
    except ImportError as error:
        raise ImportError(
            f"{what} needs Detectron2, which cannot be imported here ({error}). Detectron2 is not "
            "on PyPI: `python -m resbackbones install-detectron2` builds v0.6 here (from a "
            "checkout: `make setup`), or install upstream main from git; `python -m resbackbones "
            "doctor` says what is found.") from error
