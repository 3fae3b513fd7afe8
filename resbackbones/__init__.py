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

if _detectron2_installed():
    from resbackbones import modeling  # noqa: E402,F401  (registers the builders)
    from resbackbones.config import add_resbackbone_config, build_config  # noqa: E402,F401


def __getattr__(name: str):
    if name in ("modeling", "add_resbackbone_config", "build_config", "config"):
        from resbackbones._requirements import require_detectron2

        require_detectron2(f"resbackbones.{name}")
    raise AttributeError(f"module 'resbackbones' has no attribute {name!r}")
