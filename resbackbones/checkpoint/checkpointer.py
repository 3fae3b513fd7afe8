"""``ResBackboneCheckpointer``: Detectron2's checkpointer that reads Detectron2's own weights
into resbackbones models, and reads any weight file without running code from it.

Use it wherever Detectron2 code uses ``DetectionCheckpointer`` (same constructor)::

    ResBackboneCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS)

On top of ``DetectionCheckpointer`` it

* converts Detectron2's built-in ResNet names (model-zoo ``model_final_*.pkl``, your own
  ``model_final.pth``) and Caffe2 names (``R-50.pkl``) to resbackbones names when the model holds
  a resbackbones backbone, checks that every backbone tensor is accounted for (partial loads are
  refused unless ``allow_partial_weights=True``) and logs the report;
* reads ``.pkl`` with the restricted unpickler (numpy arrays and plain containers only) and
  ``.pth`` with ``torch.load(weights_only=True)``;
* writes checkpoints and ``last_checkpoint`` atomically (a kill mid-write leaves the previous
  checkpoint usable; a full disk says so and names the checkpoint kept);
* resumes (``--resume``) from the newest earlier checkpoint, with a WARNING naming both files,
  when the one ``last_checkpoint`` names cannot be read (truncated by a copy or a disk that
  failed); the unreadable file is left in place;
* resolves ``detectron2://...`` names as Detectron2 does (``https://dl.fbaipublicfiles.com/
  detectron2/...``, cached by iopath) and, offline, says where to put the file.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names
from detectron2.utils.file_io import PathManager
from torch import nn

from resbackbones import compat
from resbackbones.checkpoint.atomic import AtomicSaveMixin
from resbackbones.modeling.timm_backbone import TimmBackbone
from resbackbones.weights.detectron2_names import (
    caffe2_to_timm_names,
    detectron2_to_resbackbones,
    fill_caffe2_statistics,
    has_caffe2_names,
)
from resbackbones.weights.files import CheckpointKeys
from resbackbones.weights.loader import (
    WeightsUnavailableError,
    _full_architecture_keys,
    check_weight_report,
    compare_state_dicts,
)
from resbackbones.weights.safe_pickle import safe_load_pickle

__all__ = ["ResBackboneCheckpointer", "DETECTRON2_URL_PREFIX", "UnreadableCheckpointError",
           "iopath_cache_file", "resolve_checkpoint_path"]

logger = logging.getLogger(__name__)

# Detectron2's PathManager maps "detectron2://X" to this URL + X.
DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
_D2_SCHEME = "detectron2://"


def iopath_cache_file(url: str) -> str:
    """Where iopath's HTTP handler caches ``url`` (it reuses the file when it is there)."""
    from iopath.common.file_io import get_cache_dir

    parsed = urlparse(url)
    return os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")),
                        url.split("/")[-1])


def resolve_checkpoint_path(path: str) -> str:
    """Turn a ``MODEL.WEIGHTS`` value into a local file, as Detectron2's PathManager would.

    Args:
        path: a local file, ``detectron2://<name>`` (Detectron2's model zoo) or an http(s) URL.

    Returns:
        A local path; URLs are downloaded once into iopath's cache (``$FVCORE_CACHE``, default
        ``~/.torch/iopath_cache``) and read from there afterwards, also offline.

    Raises:
        WeightsUnavailableError: the download failed; the message gives the URL and the exact
            path to copy the file to.
        FileNotFoundError: a local path that does not exist.
    """
    if os.path.isfile(path):
        return path
    url = DETECTRON2_URL_PREFIX + path[len(_D2_SCHEME):] if path.startswith(_D2_SCHEME) else path
    if url.startswith(("http://", "https://")):
        cached = iopath_cache_file(url)
        if os.path.isfile(cached):
            return cached
        try:
            local = PathManager.get_local_path(url)
        except Exception as error:  # offline, DNS, HTTP errors: all explained below
            raise WeightsUnavailableError(
                f"Could not download MODEL.WEIGHTS '{path}' ({url}): {type(error).__name__}: "
                f"{error}. Offline? Download {url} on a machine with network and copy it to "
                f"{cached} (where Detectron2's PathManager looks for it), or set MODEL.WEIGHTS "
                "to the file's local path.") from error
        if not os.path.isfile(local):
            raise WeightsUnavailableError(f"MODEL.WEIGHTS '{path}': the download of {url} left "
                                          f"no file at {local}.")
        return local
    raise FileNotFoundError(f"MODEL.WEIGHTS file not found: '{path}'. Give a local .pth/.pkl/"
                            ".safetensors file, 'detectron2://<model zoo name>' or a URL.")


# Detectron2's PeriodicCheckpointer names: model_0004999.pth (the iteration), model_final.pth.
_PERIODIC_CHECKPOINT = re.compile(r"^model_(\d+)\.pth$")


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that is incomplete or damaged (truncated by a kill, a full disk or a
    copy that stopped early), as opposed to one holding objects that are refused."""


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else "(no message)"


def _read_torch_file(filename: str) -> Any:
    try:
        return torch.load(filename, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError / RuntimeError / OSError / EOFError variants
        # torch.save writes a zip archive: one whose archive is intact but whose pickle is
        # refused holds foreign objects; anything else is a damaged file.
        refused = isinstance(error, pickle.UnpicklingError) and (
            zipfile.is_zipfile(filename) or "Unsupported global" in str(error))
        if not refused:
            raise UnreadableCheckpointError(
                f"Cannot read checkpoint {filename} ({os.path.getsize(filename)} bytes): "
                f"{type(error).__name__}: {_first_sentence(error)}. "
                "The file is incomplete or damaged (truncated by a kill, a full disk or a copy "
                "that stopped early).") from error
        raise ValueError(
            f"Cannot read {filename} with torch.load(weights_only=True): {error}. The file holds "
            "objects other than tensors and plain containers; resbackbones never unpickles code. "
            "Re-save only its state dict, or convert it to .safetensors.") from error


def _backbone_bodies(model: nn.Module) -> Dict[str, nn.Module]:
    """``{"backbone.bottom_up.": TimmBackbone}`` for every resbackbones backbone."""
    return {(name + "." if name else ""): module for name, module in model.named_modules()
            if isinstance(module, TimmBackbone)}


class ResBackboneCheckpointer(AtomicSaveMixin, DetectionCheckpointer):
    """``DetectionCheckpointer`` that converts Detectron2/Caffe2 ResNet names for resbackbones
    models, reads files safely and writes checkpoints atomically (see the module docstring)."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk=None,
                 allow_partial_weights: bool = False, **checkpointables: Any) -> None:
        """
        Args:
            model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
            allow_partial_weights: load a checkpoint that leaves part of a resbackbones backbone
                random or has foreign backbone tensors (``MODEL.RESBACKBONE.
                ALLOW_PARTIAL_WEIGHTS``); by default that is an error.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial_weights = allow_partial_weights
        # (path, content) read by resume_or_load to check it, handed to the load that follows.
        self._read_ahead: Optional[Tuple[str, Dict[str, Any]]] = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As Detectron2's, except that a last checkpoint that cannot be read falls back.

        With ``resume`` and a ``last_checkpoint`` in ``save_dir``, the file it names is read; if
        that file is missing, truncated or damaged, the newest earlier ``model_NNNNNNN.pth``
        that reads is loaded instead, with a WARNING naming both. Why: a checkpoint cut short
        (a copy or a disk that failed) must cost one checkpoint period, not the run. Nothing is
        deleted: the unreadable file stays until training saves under its name again.

        Raises:
            UnreadableCheckpointError: no checkpoint in ``save_dir`` can be read; the message
                lists each file with its fault.
        """
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        last = self.get_checkpoint_file()
        failures: List[Tuple[str, str]] = []
        for candidate in [last] + self._earlier_checkpoints(last):
            if not os.path.isfile(candidate):
                failures.append((candidate, f"{candidate} does not exist."))
                continue
            try:
                # Read here (no collective calls), so that every rank's load() below is the
                # same single call whatever was skipped.
                self._read_ahead = (os.path.abspath(candidate), self._load_file(candidate))
            except UnreadableCheckpointError as error:
                failures.append((candidate, str(error)))
                continue
            if failures:
                skipped = " ".join(reason for _, reason in failures)
                self.logger.warning(
                    f"Cannot resume from {last} (named in last_checkpoint): {skipped} Resuming "
                    f"from {candidate} instead, the newest earlier checkpoint that reads. "
                    f"{last} is left as it is (training replaces it when it saves under that "
                    "name again).")
            try:
                return self.load(candidate)
            finally:
                self._read_ahead = None
        listed = " ".join(reason for _, reason in failures)
        raise UnreadableCheckpointError(
            f"--resume: no checkpoint in {self.save_dir} can be read. {listed} The files are "
            "kept. Copy an intact checkpoint into the folder, or remove "
            f"{os.path.join(self.save_dir, 'last_checkpoint')} to start from MODEL.WEIGHTS.")

    def _earlier_checkpoints(self, last: str) -> List[str]:
        """Periodic checkpoints in save_dir older than ``last``, newest first (all of them when
        ``last`` is not a numbered one, e.g. model_final.pth)."""
        match = _PERIODIC_CHECKPOINT.match(os.path.basename(last))
        newest = int(match.group(1)) if match else None
        numbered = []
        for name in os.listdir(self.save_dir):
            found = _PERIODIC_CHECKPOINT.match(name)
            if found and (newest is None or int(found.group(1)) < newest):
                numbered.append((int(found.group(1)), name))
        return [os.path.join(self.save_dir, name) for _, name in sorted(numbered, reverse=True)]

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """As ``DetectionCheckpointer.load``, with ``detectron2://`` resolved first."""
        if path:
            path = resolve_checkpoint_path(path)
        try:
            return super().load(path, *args, **kwargs)
        except BaseException:
            # main's DetectionCheckpointer asserts on the next load after one that raised.
            compat.reset_checkpointer_load_state(self)
            raise

    def _load_file(self, filename: str) -> Dict[str, Any]:
        read_ahead = getattr(self, "_read_ahead", None)
        if read_ahead is not None and read_ahead[0] == os.path.abspath(filename):
            checkpoint, self._read_ahead = read_ahead[1], None
            return checkpoint
        extension = os.path.splitext(filename)[1].lower()
        if extension in (".pkl", ".pickle"):
            data = safe_load_pickle(filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename} holds a {type(data).__name__}, not a checkpoint.")
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            blobs = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if extension == ".safetensors":
            from safetensors.torch import load_file

            return {"model": load_file(filename, device="cpu")}
        data = _read_torch_file(filename)
        if extension == ".pyth" and isinstance(data, dict) and "model_state" in data:
            state = {k: v for k, v in data["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not isinstance(data, dict):
            raise ValueError(f"{filename} holds a {type(data).__name__}, not a checkpoint.")
        return data if "model" in data else {"model": data}

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        bodies = _backbone_bodies(self.model)
        if bodies:
            self._convert_for_resbackbones(checkpoint, bodies)
        return super()._load_model(checkpoint)

    def _convert_for_resbackbones(self, checkpoint: Dict[str, Any],
                                  bodies: Dict[str, nn.Module]) -> None:
        state = checkpoint["model"]
        state = {k[len("module."):] if k.startswith("module.") else k: v
                 for k, v in state.items()}
        filled: List[str] = []
        renamed: Dict[str, str] = {}
        is_caffe2 = checkpoint.get("__author__") == "Caffe2" and has_caffe2_names(state)
        if is_caffe2:
            state, renamed, filled = self._from_caffe2(state, checkpoint, bodies)
        elif len(bodies) == 1:
            state, renamed, _ = detectron2_to_resbackbones(state, next(iter(bodies)) + "body.")
        else:
            state, renamed, _ = detectron2_to_resbackbones(state)
        if renamed and not is_caffe2:
            checkpoint["matching_heuristics"] = False  # names are exact now
        checkpoint["model"] = state
        for prefix, backbone in bodies.items():
            self._check_backbone(prefix, backbone, state, renamed, filled)

    def _from_caffe2(self, blobs: Dict[str, Any], checkpoint: Dict[str, Any],
                     bodies: Dict[str, nn.Module]) -> Tuple[Dict[str, Any], Dict[str, str],
                                                            List[str]]:
        if len(bodies) != 1:
            raise ValueError(f"A Caffe2 backbone file fits one backbone, but the model has "
                             f"{len(bodies)} resbackbones backbones: {', '.join(bodies)}.")
        body = next(iter(bodies)) + "body."
        tensors, sources, _, unknown = caffe2_to_timm_names(blobs)
        tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                   else v for k, v in tensors.items() if k not in unknown}
        added = fill_caffe2_statistics(tensors, torch.zeros_like, torch.ones_like)
        state = {body + k: v for k, v in tensors.items()}
        renamed = {body + k: v for k, v in sources.items()}
        rest = {k: blobs[k] for k in unknown}
        if rest:  # a Detectron1 detector: Detectron2 renames its heads, matched by suffix below
            self._convert_ndarray_to_tensor(rest)
            converted, _ = convert_c2_detectron_names(rest)
            state.update(converted)
            checkpoint["__author__"] = "Caffe2 (backbone converted by resbackbones)"
        else:
            checkpoint["matching_heuristics"] = False
        return state, renamed, [body + k for k in added]

    def _check_backbone(self, prefix: str, backbone: nn.Module, state: Dict[str, Any],
                        renamed: Dict[str, str], filled: List[str]) -> None:
        body = prefix + "body."
        tensors = {k[len(body):]: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                   for k, v in state.items() if k.startswith(body)}
        if not tensors:
            logger.warning(f"The checkpoint has no weights for the backbone at '{prefix}'; it "
                           "keeps its current weights (MODEL.RESBACKBONE.WEIGHTS, or random).")
            return
        keys = CheckpointKeys(
            tensors, source_format="Detectron2/Caffe2 names" if renamed else "resbackbones",
            renamed={k[len(body):]: v for k, v in renamed.items() if k.startswith(body)},
            filled=[k[len(body):] for k in filled if k.startswith(body)])
        full_keys = set(_full_architecture_keys(backbone.entry))
        report = compare_state_dicts(backbone.body.state_dict(), keys, backbone.classifier_name,
                                     full_keys, source=f"checkpoint [{keys.source_format}]")
        logger.info(f"Backbone '{backbone.entry.name}' at '{prefix}' from the checkpoint:\n"
                    f"{report.table()}")
        check_weight_report(report, backbone.entry.name, tensors, self.allow_partial_weights)
        # Classifier / unbuilt-stage keys are dropped here, so Detectron2 does not list them.
        dropped = set(report.classifier) | set(report.unused_stages)
        for key in dropped:
            state.pop(body + key, None)
