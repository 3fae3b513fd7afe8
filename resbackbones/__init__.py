"""resbackbones: the ResNet family as Detectron2 FPN backbones.

Importing the package registers its backbones in Detectron2's ``BACKBONE_REGISTRY`` and its
meta-architectures in ``META_ARCH_REGISTRY``, nothing else (data sets are registered by what
uses them); a user's ``train_net.py`` needs only ``import resbackbones``.

Without Detectron2 the import still works but registers nothing, so that the dependency-free
parts (``resbackbones.deploy.onnx_runner``, ``python -m resbackbones.env``) run anywhere; the
Detectron2-based names then raise an ImportError that says how to install it.
"""
__version__ = "0.1.0"

from resbackbones._requirements import detectron2_installed as _detectron2_installed

# A Detectron2 that is installed but does not import (a C++ extension built for another torch, a
# missing dependency) or lacks what the builders import (a fork, a release older than v0.6) is
# reported, not raised: `python -m resbackbones doctor` and `install-detectron2` must still run to
# say what is wrong and fix it.
_DETECTRON2_IMPORT_ERROR = None
if _detectron2_installed():
    import importlib as _importlib

    import warnings as _warnings

    try:
        with _warnings.catch_warnings():
            # fvcore and Detectron2 (both flavours) decorate functions with torch.jit.script at
            # import: two FutureWarnings on every command that the user can do nothing about.
            _warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                     category=FutureWarning)
            _importlib.import_module("detectron2.modeling")  # Detectron2's own imports, first
    except Exception as _error:  # noqa: BLE001  (anything Detectron2's import raises)
        _DETECTRON2_IMPORT_ERROR = _error
    else:
        try:
            from resbackbones import modeling  # noqa: E402,F401  (registers the builders)
            from resbackbones.config import add_resbackbone_config, build_config  # noqa: E402,F401
        except ImportError as _error:
            if not (_error.name or "").startswith("detectron2"):
                raise  # ours, or another package's: not Detectron2's shape
            _DETECTRON2_IMPORT_ERROR = _error
    if _DETECTRON2_IMPORT_ERROR is not None:
        import warnings

        warnings.warn(f"Detectron2 is installed but resbackbones cannot import it "
                      f"({type(_DETECTRON2_IMPORT_ERROR).__name__}: {_DETECTRON2_IMPORT_ERROR}); "
                      "nothing was registered. `python -m resbackbones doctor` says why and how "
                      "to fix it.", RuntimeWarning, stacklevel=2)


def __getattr__(name: str):
    if name in ("modeling", "add_resbackbone_config", "build_config", "config"):
        if _DETECTRON2_IMPORT_ERROR is not None:
            raise ImportError(f"resbackbones.{name} needs Detectron2, which is installed but "
                              f"cannot be imported: {_DETECTRON2_IMPORT_ERROR}. `python -m "
                              "resbackbones doctor` says why and how to fix it."
                              ) from _DETECTRON2_IMPORT_ERROR
        from resbackbones._requirements import require_detectron2

        require_detectron2(f"resbackbones.{name}")
    raise AttributeError(f"module 'resbackbones' has no attribute {name!r}")
