"""Weight files of a backbone: safe reading, Detectron2/Caffe2/torchvision/timm names, and
loading into a backbone with a report. Below ``modeling`` (the builders load weights) and free of
Detectron2 model code; whole-detector checkpoints live in :mod:`resbackbones.checkpoint`.
"""
from resbackbones.weights.files import (
    UnsupportedCheckpointError,
    load_state_dict_file,
    to_backbone_names,
)
from resbackbones.weights.loader import (
    IncompatibleWeightsError,
    WeightLoadReport,
    WeightsUnavailableError,
    load_backbone_weights,
    resolve_weights,
)
from resbackbones.weights.safe_pickle import UnsafePickleError, safe_load_pickle

__all__ = [
    "IncompatibleWeightsError",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "WeightLoadReport",
    "WeightsUnavailableError",
    "load_backbone_weights",
    "load_state_dict_file",
    "resolve_weights",
    "safe_load_pickle",
    "to_backbone_names",
]
