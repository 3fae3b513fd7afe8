"""resbackbones: the ResNet family as Detectron2 FPN backbones.

Importing the package registers its backbones in Detectron2's ``BACKBONE_REGISTRY``; nothing
else is needed in a user's ``train_net.py``.
"""
__version__ = "0.1.0"

import importlib.util as _importlib_util

# Registers the backbones in Detectron2's BACKBONE_REGISTRY. Skipped only when detectron2 is not
# installed at all, so that `python -m resbackbones.env` and the installer still run.
if _importlib_util.find_spec("detectron2") is not None:
    from resbackbones import modeling  # noqa: E402,F401
    from resbackbones.config import add_resbackbone_config  # noqa: E402,F401
    # Registers synthetic_shapes_train/val lazily (files are read only when used).
    from resbackbones import data  # noqa: E402,F401
