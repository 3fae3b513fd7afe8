"""Read weight files into ``{timm name: tensor}`` without running code from them.

Accepted files and how their key names are converted to the timm names of the backbone body:

* ``.safetensors`` (preferred), ``.pth``/``.pt``/``.bin``/``.ckpt`` read with
  ``torch.load(weights_only=True)``; ``.pkl`` with a restricted unpickler (numpy only).
* timm and torchvision ImageNet checkpoints: names are used as they are (torchvision's ResNet,
  ResNeXt and Wide ResNet names are identical to timm's); the classifier is dropped later.
* resbackbones/Detectron2 checkpoints: ``backbone.bottom_up.body.<name>`` (FPN models),
  ``backbone.body.<name>`` (plain backbone) or ``body.<name>``; other detector keys are ignored.
* Detectron2's built-in ResNet names (``stem.conv1``, ``res2.0.conv1``: model-zoo detectors,
  ``model_final.pth``) and Caffe2 names (``res2_0_branch2a_w``: MSRA ``R-50.pkl``, FAIR
  ``X-101-32x8d.pkl``) are converted by :mod:`resbackbones.weights.detectron2_names`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

import numpy as np
import torch

from resbackbones.weights.detectron2_names import (
    caffe2_to_timm_names,
    detectron2_backbone_prefix,
    detectron2_to_timm_key,
    fill_caffe2_statistics,
    has_caffe2_names,
)
from resbackbones.weights.safe_pickle import safe_load_pickle

__all__ = [
    "BACKBONE_PREFIXES",
    "CheckpointKeys",
    "UnsupportedCheckpointError",
    "load_state_dict_file",
    "to_backbone_names",
    "WEIGHT_EXTENSIONS",
]

WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
# Prefixes under which resbackbones modules store the timm body, most specific first.
BACKBONE_PREFIXES = ("backbone.bottom_up.body.", "backbone.body.", "bottom_up.body.", "body.")

_DETECTRON2_RESNET_START = re.compile(r"^(stem|res[2-5])\.")


class UnsupportedCheckpointError(NotImplementedError):
    """A weight file whose naming scheme resbackbones does not convert."""


@dataclass
class CheckpointKeys:
    """A checkpoint's tensors renamed to the backbone body's (timm) names.

    Attributes:
        tensors: ``{timm name: tensor}``.
        ignored: keys that are not part of a backbone (detector heads, FPN, optimizer...).
        source_format: short description of the naming found (for the report).
        renamed: ``{timm name: name in the file}`` for keys converted from Detectron2 or Caffe2
            names.
        filled: BatchNorm statistics the file lacks and that were set to Detectron2's values
            (Caffe2 files fold them into scale and bias).
        timm_input_normalization: whether the weights expect the catalog's (timm) input
            normalisation; False for Detectron2/Caffe2 files, whose contract is the config's.
    """

    tensors: Dict[str, torch.Tensor]
    ignored: List[str] = field(default_factory=list)
    source_format: str = "timm/torchvision"
    renamed: Dict[str, str] = field(default_factory=dict)
    filled: List[str] = field(default_factory=list)
    timm_input_normalization: bool = True


def _as_tensor(value: Any, key: str, path: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{path}: key '{key}' holds a {type(value).__name__}, not a tensor or array.")


def _read_file(path: str) -> Any:
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if extension in (".pkl", ".pickle"):
        return safe_load_pickle(path)
    if extension in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError or RuntimeError variants
            raise ValueError(
                f"Cannot read {path} with torch.load(weights_only=True): {error}. The file holds "
                "objects other than tensors and containers; resbackbones never unpickles code. "
                "Re-save only its state dict (or convert it to .safetensors)."
            ) from error
    raise ValueError(f"Unsupported weight file extension '{extension}' ({path}); use one of "
                     f"{', '.join(WEIGHT_EXTENSIONS)}.")


def _unwrap(data: Any, path: str) -> Mapping[str, Any]:
    """Find the state dict inside common checkpoint containers."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict.")
    for container in ("model", "state_dict", "model_state_dict", "module", "blobs"):
        inner = data.get(container)
        if isinstance(inner, Mapping) and inner:
            return inner
    return data


def to_backbone_names(state_dict: Mapping[str, Any], path: str = "<state dict>") -> CheckpointKeys:
    """Rename a checkpoint's keys to the timm names of the backbone body.

    Args:
        state_dict: flat ``{name: tensor or ndarray}``.
        path: file name, for messages.

    Returns:
        The renamed tensors and the ignored (non-backbone) keys.

    Detectron2 built-in ResNet names and Caffe2 blob names are converted; ResNet keys without a
    timm equivalent keep their names, so that the comparison with the model reports them.
    """
    keys = [key[len("module."):] if key.startswith("module.") else key for key in state_dict]
    values = list(state_dict.values())
    for prefix in BACKBONE_PREFIXES:
        if any(key.startswith(prefix) for key in keys):
            tensors = {key[len(prefix):]: _as_tensor(value, key, path)
                       for key, value in zip(keys, values) if key.startswith(prefix)}
            ignored = [key for key in keys if not key.startswith(prefix)]
            return CheckpointKeys(tensors, ignored, source_format=f"resbackbones ({prefix}*)")
    if has_caffe2_names(keys):
        return _from_caffe2(dict(zip(keys, values)), path)
    d2_prefix = detectron2_backbone_prefix(keys)
    if d2_prefix is not None:
        return _from_detectron2(dict(zip(keys, values)), d2_prefix, path)
    tensors = {key: _as_tensor(value, key, path) for key, value in zip(keys, values)
               if isinstance(value, (torch.Tensor, np.ndarray))}
    ignored = [key for key, value in zip(keys, values)
               if not isinstance(value, (torch.Tensor, np.ndarray))]
    return CheckpointKeys(tensors, ignored)


def _from_caffe2(blobs: Dict[str, Any], path: str) -> CheckpointKeys:
    """Caffe2 ResNet blobs -> timm names, with Detectron2's identity statistics filled in."""
    arrays = {k: v for k, v in blobs.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    renamed, sources, ignored, _ = caffe2_to_timm_names(arrays)
    tensors = {key: _as_tensor(value, key, path) for key, value in renamed.items()}
    filled = fill_caffe2_statistics(tensors, torch.zeros_like, torch.ones_like)
    ignored += [k for k in blobs if k not in arrays]
    return CheckpointKeys(tensors, ignored, source_format="Caffe2 (res2_0_branch2a_w)",
                          renamed=sources, filled=filled, timm_input_normalization=False)


def _from_detectron2(state: Dict[str, Any], prefix: str, path: str) -> CheckpointKeys:
    """Detectron2 built-in ResNet keys under ``prefix`` -> timm names; other keys are ignored.

    ResNet-looking keys without a timm equivalent (deformable-conv offsets, ...) keep their name
    so that the comparison with the model reports them as unexpected.
    """
    tensors: Dict[str, torch.Tensor] = {}
    sources: Dict[str, str] = {}
    ignored: List[str] = []
    for key, value in state.items():
        relative = key[len(prefix):] if key.startswith(prefix) else ""
        if not _DETECTRON2_RESNET_START.match(relative) or \
                not isinstance(value, (torch.Tensor, np.ndarray)):
            ignored.append(key)
            continue
        timm_key = detectron2_to_timm_key(relative) or key
        tensors[timm_key] = _as_tensor(value, key, path)
        if timm_key != key:
            sources[timm_key] = key
    return CheckpointKeys(tensors, ignored, source_format=f"Detectron2 ResNet ({prefix}res2.*)",
                          renamed=sources, timm_input_normalization=False)


def load_state_dict_file(path: str) -> CheckpointKeys:
    """Read a local weight file and rename its keys to the backbone body's timm names.

    Args:
        path: ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.ckpt`` or ``.pkl`` file.

    Returns:
        :class:`CheckpointKeys`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weight file not found: '{path}' (MODEL.RESBACKBONE.WEIGHTS). Give an existing "
            "local file, 'imagenet', 'timm:<model>.<tag>', or '' for random initialisation.")
    return to_backbone_names(_unwrap(_read_file(path), path), path)
