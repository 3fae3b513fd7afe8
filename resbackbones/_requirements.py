"""A clear ImportError when Detectron2 is missing, raised by the packages that need it.

``import resbackbones`` itself works without Detectron2 (the dependency-free ONNX runner in
``resbackbones.deploy`` and ``python -m resbackbones.env`` need that), but registers nothing;
every Detectron2-based package calls :func:`require_detectron2` first.
"""
from __future__ import annotations

import importlib.util

__all__ = ["detectron2_installed", "require_detectron2"]


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
        import detectron2  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{what} needs Detectron2, which cannot be imported here ({error}). Detectron2 is not "
            "on PyPI: install it with `python tools/install_detectron2.py` (or `make setup`); see "
            "the README section 'How Detectron2 is installed'.") from error
