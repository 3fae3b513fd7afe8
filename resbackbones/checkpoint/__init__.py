"""Whole-detector checkpoints: Detectron2's checkpointer with name conversion, safe reading and
atomic writes, and weight-file conversion. Backbone weight files themselves are read by
:mod:`resbackbones.weights`, whose public names are re-exported here for convenience.
"""
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer, resolve_checkpoint_path
from resbackbones.weights import (
    IncompatibleWeightsError,
    UnsafePickleError,
    UnsupportedCheckpointError,
    WeightLoadReport,
    WeightsUnavailableError,
    load_backbone_weights,
    load_state_dict_file,
    resolve_weights,
    safe_load_pickle,
    to_backbone_names,
)

__all__ = [
    "IncompatibleWeightsError",
    "ResBackboneCheckpointer",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "WeightLoadReport",
    "WeightsUnavailableError",
    "load_backbone_weights",
    "load_state_dict_file",
    "resolve_checkpoint_path",
    "resolve_weights",
    "safe_load_pickle",
    "to_backbone_names",
]
