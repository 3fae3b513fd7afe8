"""Detectron2 model-zoo detectors for the demo, run through this project's twin configs.

A :class:`ModelZooModel` records everything the demo needs to show a real detector: the twin
config in ``configs/Detectron2-ModelZoo/`` (resbackbones' ResNet in place of Detectron2's, same
detections), the model-zoo checkpoint, and the class names and dataset ids that belong to its
weights (taken from Detectron2's builtin COCO metadata, so nothing depends on a dataset being
registered in the demo process).

The checkpoint is fetched on first use into Detectron2's cache by
:func:`resbackbones.checkpoint.download.fetch_model_zoo_file`, which keeps a file only when it
is complete and :func:`check_checkpoint_fits` accepts it: read with the restricted unpickler and
every tensor loaded into the twin config's model, none missing, none left over, no shape
different. Offline, :func:`build_model_zoo_predictor` raises a ``DownloadError`` that names the
URL and the path to copy the file to; the demo shows it on the page.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model

from resbackbones.checkpoint import ResBackboneCheckpointer
from resbackbones.checkpoint.download import fetch_model_zoo_file, model_zoo_cache_path
from resbackbones.model_zoo_files import config_root

from .predictor import DemoPredictor, build_inference_config

__all__ = [
    "COCO_MASK_RCNN_R50_FPN_3X",
    "MODEL_ZOO_MODELS",
    "ModelZooModel",
    "build_model_zoo_predictor",
    "check_checkpoint_fits",
    "coco_thing_classes",
    "fetch_model_zoo_weights",
]

# Packaged with the other configs (resbackbones.model_zoo_files): a checkout and a wheel alike.
TWIN_CONFIG_DIR = str(config_root() / "Detectron2-ModelZoo")


def coco_thing_classes() -> Tuple[List[str], Dict[int, int]]:
    """The 80 COCO thing classes in Detectron2's contiguous order and their COCO category ids.

    Returns:
        ``(names, {coco category id: contiguous id})``, from Detectron2's builtin metadata.
    """
    things = [c for c in COCO_CATEGORIES if c["isthing"] == 1]
    return [c["name"] for c in things], {c["id"]: i for i, c in enumerate(things)}


@dataclass(frozen=True)
class ModelZooModel:
    """A model-zoo detector as the demo offers it.

    Attributes:
        name: display name in the model dropdown.
        config_file: twin config file name in ``configs/Detectron2-ModelZoo/``.
        checkpoint: path under Detectron2's model zoo (``detectron2://`` + this is its name).
        class_names: name of each contiguous class id of the weights.
        dataset_id_to_contiguous_id: the dataset's category ids (COCO results use them).
    """

    name: str
    config_file: str
    checkpoint: str
    class_names: Tuple[str, ...] = field(repr=False)
    dataset_id_to_contiguous_id: Dict[int, int] = field(repr=False)

    @property
    def config_path(self) -> str:
        """The twin config's path (packaged)."""
        return os.path.join(TWIN_CONFIG_DIR, self.config_file)

    @property
    def cache_path(self) -> str:
        """Where Detectron2 caches the checkpoint (and where to copy it by hand offline)."""
        return model_zoo_cache_path(self.checkpoint)


def _coco_model(name: str, config_file: str, checkpoint: str) -> ModelZooModel:
    names, ids = coco_thing_classes()
    return ModelZooModel(name, config_file, checkpoint, tuple(names), ids)


COCO_MASK_RCNN_R50_FPN_3X = _coco_model(
    "COCO Mask R-CNN R50-FPN 3x (Detectron2 model zoo)", "mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")

# What the demo offers next to the user's own models.
MODEL_ZOO_MODELS: Tuple[ModelZooModel, ...] = (COCO_MASK_RCNN_R50_FPN_3X,)


class _ReportingCheckpointer(ResBackboneCheckpointer):
    """Keeps the incompatible keys that Detectron2 would only log."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def check_checkpoint_fits(cfg: CfgNode, path: str) -> None:
    """Load ``path`` into the model of ``cfg`` and require every tensor to be accounted for.

    The model is built on the ``meta`` device (no memory, no initialisation), so this costs the
    file's reading only. The backbone goes through resbackbones' own check (renamed Detectron2
    names, nothing missing); the rest must match the model's state dict exactly.

    Args:
        cfg: the config the file is meant for (its ``MODEL.WEIGHTS`` is replaced by ``path``).
        path: a ``.pkl`` (restricted unpickler) or ``.pth`` file.

    Raises:
        ValueError: tensors missing, unused or of another shape (lists a few of each).
        resbackbones.checkpoint.UnsafePickleError: the pickle asks for code.
    """
    with torch.device("meta"):
        model = build_model(_meta_config(cfg, path))
    checkpointer = _ReportingCheckpointer(model)
    with warnings.catch_warnings():  # copying into meta tensors is a no-op, as intended here
        warnings.filterwarnings("ignore", message=".*to a meta parameter", category=UserWarning)
        checkpointer.load(path)
    incompatible = checkpointer.incompatible
    if incompatible is None:
        raise ValueError(f"{path} holds no model weights.")
    # Non-persistent buffers (pixel mean/std, anchors) are rebuilt from the config.
    rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    unused = [k for k in incompatible.unexpected_keys if k not in rebuilt]
    problems = []
    for label, keys in (("missing", list(incompatible.missing_keys)), ("unused", unused),
                        ("with another shape", [k for k, *_ in incompatible.incorrect_shapes])):
        if keys:
            problems.append(f"{len(keys)} tensors {label} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise ValueError(f"{path} does not fit the model of its config: {'; '.join(problems)}.")


def _meta_config(cfg: CfgNode, weights: str) -> CfgNode:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "meta"
    cfg.MODEL.WEIGHTS = weights  # the builder refuses a FrozenBN backbone without weights
    cfg.freeze()
    return cfg


def fetch_model_zoo_weights(model: ModelZooModel, base_url: Optional[str] = None,
                            progress: bool = True) -> str:
    """The model's checkpoint in Detectron2's cache, downloaded and checked on first use.

    Args:
        model: the model-zoo entry.
        base_url: model-zoo mirror (default ``$RESBACKBONES_MODEL_ZOO_URL``, else Detectron2's).
        progress: show a progress bar.

    Returns:
        The local path.

    Raises:
        resbackbones.checkpoint.download.DownloadError: offline, cut short or refused; nothing
            is left under the cache name.
    """
    cfg = build_inference_config(model.config_path, device="cpu")
    return fetch_model_zoo_file(model.checkpoint, validate=lambda p: check_checkpoint_fits(cfg, p),
                                base_url=base_url, progress=progress)


def build_model_zoo_predictor(model: ModelZooModel, device: Optional[str] = None,
                              opts: Sequence[str] = (), base_url: Optional[str] = None,
                              progress: bool = True) -> DemoPredictor:
    """A demo predictor for a model-zoo detector, its weights fetched on first use.

    Args:
        model: the model-zoo entry.
        device: as :func:`~resbackbones.demo.predictor.build_inference_config`.
        opts: extra ``KEY VALUE`` overrides of the twin config.
        base_url: model-zoo mirror (see :func:`fetch_model_zoo_weights`).
        progress: show a download progress bar.

    Returns:
        The predictor, with the model's class names and dataset ids.

    Raises:
        resbackbones.checkpoint.download.DownloadError: the weights could not be had; the
            message names the URL and where to copy the file.
    """
    weights = fetch_model_zoo_weights(model, base_url=base_url, progress=progress)
    cfg = build_inference_config(model.config_path, list(opts) + ["MODEL.WEIGHTS", weights], device=device)
    return DemoPredictor(cfg, name=model.name, class_names=model.class_names,
                         dataset_id_to_contiguous_id=model.dataset_id_to_contiguous_id)
