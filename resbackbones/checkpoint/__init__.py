"""Weight files: safe reading, key conversion, loading with a report, and conversion."""
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer, resolve_checkpoint_path
from resbackbones.checkpoint.files import (
    UnsupportedCheckpointError,
    load_state_dict_file,
    to_backbone_names,
)
from resbackbones.checkpoint.loader import (
    IncompatibleWeightsError,
    WeightLoadReport,
    WeightsUnavailableError,
    load_backbone_weights,
    resolve_weights,
)
from resbackbones.checkpoint.safe_pickle import UnsafePickleError, safe_load_pickle

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
