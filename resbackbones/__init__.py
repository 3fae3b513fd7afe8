"""resbackbones: the ResNet family as Detectron2 FPN backbones.

Importing the package registers its backbones in Detectron2's ``BACKBONE_REGISTRY``; nothing
else is needed in a user's ``train_net.py``.
"""
__version__ = "0.1.0"
