"""Load ImageNet (or resbackbones) weights into a backbone, and say exactly what was loaded.

``MODEL.RESBACKBONE.WEIGHTS`` names the source: ``"imagenet"`` (the catalog entry's pinned timm
tag), ``"timm:<model>.<tag>"`` (downloaded by the Hugging Face hub client into its cache), or a
local file (see :mod:`resbackbones.weights.files`). The comparison with the model is logged as
a table, and loading fails when a backbone parameter would stay random, a shape differs, or the
file has backbone keys the architecture lacks (a different depth or width) - unless
``ALLOW_PARTIAL_WEIGHTS`` is set.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import timm
import torch
from tabulate import tabulate
from timm.models import get_pretrained_cfg
from torch import nn

from resbackbones.catalog import CATALOG, TIMM_PREFIX, CatalogEntry, is_timm_name
from resbackbones.weights.files import CheckpointKeys, load_state_dict_file

__all__ = [
    "IncompatibleWeightsError",
    "WeightsUnavailableError",
    "WeightLoadReport",
    "resolve_weights",
    "download_timm_weights",
    "compare_state_dicts",
    "load_backbone_weights",
    "matching_architectures",
]

logger = logging.getLogger(__name__)

_IGNORED_SUFFIXES = ("num_batches_tracked",)
_STATISTICS = (".running_mean", ".running_var")
_MAX_EXAMPLES = 4
# Report rows shown even when empty; the others appear only when they have keys.
_ALWAYS_SHOWN = ("loaded", "missing (stay random)", "shape mismatch",
                 "unexpected (not in this architecture)")


class IncompatibleWeightsError(ValueError):
    """The weights would leave part of the backbone random, or belong to another architecture."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (e.g. offline); the message says how to fix it."""


@dataclass
class WeightLoadReport:
    """What a weight file gave the backbone.

    Attributes:
        source: what was loaded (file path, and tag when downloaded).
        loaded: keys copied into the model.
        missing: model keys the file lacks (they stay as initialised: random).
        mismatched: ``(key, file shape, model shape)`` for keys whose shapes differ.
        unexpected: backbone-like keys in the file the architecture does not have.
        classifier: classifier keys dropped on purpose (``fc.*``, ``head.fc.*``).
        unused_stages: keys of stages not built for this OUT_FEATURES (pruned on purpose).
        ignored: non-backbone keys of a detector checkpoint (heads, FPN, ...).
        unused_statistics: BatchNorm running statistics with no use in the model's norm
            (NORM "GN" loading BatchNorm weights: the affine parameters load, statistics do not).
        converted: ``(name in the file, model name)`` for keys renamed from Detectron2 or Caffe2
            names (they are also in ``loaded``).
        filled: BatchNorm statistics the file lacks (Caffe2 folds them into scale and bias), set
            to Detectron2's running mean 0 / variance 1.
        timm_input_normalization: False for Detectron2/Caffe2 files (their input contract is the
            config's INPUT.FORMAT/PIXEL_MEAN/PIXEL_STD, not the catalog's timm statistics).
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    classifier: List[str] = field(default_factory=list)
    unused_stages: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    unused_statistics: List[str] = field(default_factory=list)
    converted: List[Tuple[str, str]] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)
    timm_input_normalization: bool = True

    @property
    def complete(self) -> bool:
        """True when every backbone key loaded and the file held nothing foreign."""
        return not (self.missing or self.mismatched or self.unexpected)

    def table(self) -> str:
        """A table of counts with example keys, plus each shape mismatch."""
        def examples(keys: List[str]) -> str:
            shown = ", ".join(keys[:_MAX_EXAMPLES])
            return shown + (f", ... (+{len(keys) - _MAX_EXAMPLES})" if len(keys) > _MAX_EXAMPLES
                            else "")

        rows = [
            ("loaded", len(self.loaded), "ok", examples(self.loaded)),
            ("missing (stay random)", len(self.missing), "ERROR" if self.missing else "ok",
             examples(self.missing)),
            ("shape mismatch", len(self.mismatched), "ERROR" if self.mismatched else "ok",
             examples([k for k, _, _ in self.mismatched])),
            ("unexpected (not in this architecture)", len(self.unexpected),
             "ERROR" if self.unexpected else "ok", examples(self.unexpected)),
            ("classifier (dropped)", len(self.classifier), "expected", examples(self.classifier)),
            ("stages not built (OUT_FEATURES)", len(self.unused_stages), "expected",
             examples(self.unused_stages)),
            ("non-backbone keys (ignored)", len(self.ignored), "expected", examples(self.ignored)),
            ("BN statistics unused by GN", len(self.unused_statistics), "expected",
             examples(self.unused_statistics)),
            ("converted from Detectron2/Caffe2 names (in loaded)", len(self.converted),
             "ok", examples([f"{a} -> {b}" for a, b in self.converted])),
            ("BN statistics absent from file (mean 0, var 1 as Detectron2)", len(self.filled),
             "expected", examples(self.filled)),
        ]
        rows = [row for row in rows if row[1] or row[0] in _ALWAYS_SHOWN]
        text = tabulate(rows, headers=["keys", "count", "status", "examples"], tablefmt="pipe")
        if self.mismatched:
            text += "\n" + tabulate(
                [(k, tuple(a), tuple(b)) for k, a, b in self.mismatched[:20]],
                headers=["key", "shape in file", "shape in model"], tablefmt="pipe")
        return text


def download_timm_weights(timm_weights: str) -> str:
    """Download ``"<model>.<tag>"`` weights through the Hugging Face hub cache; return the path.

    Raises:
        WeightsUnavailableError: unknown tag, or the hub cannot be reached (offline); the message
            names the hub id and how to pass a local file instead.
    """
    try:
        cfg = get_pretrained_cfg(timm_weights, allow_unregistered=False)
    except RuntimeError as error:
        architecture = timm_weights.split(".")[0]
        tags = timm.list_pretrained(f"{architecture}.*")
        raise WeightsUnavailableError(f"timm has no weights '{timm_weights}' ({error}). "
                                      f"Available: {', '.join(tags) or 'none'}.") from error
    hub_id = cfg.hf_hub_id
    if not hub_id:
        raise WeightsUnavailableError(
            f"timm weights '{timm_weights}' are not on the Hugging Face hub (url: {cfg.url!r}). "
            "Download the file yourself and set MODEL.RESBACKBONE.WEIGHTS to its local path.")
    from huggingface_hub import hf_hub_download

    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    filenames += ["model.safetensors", "pytorch_model.bin"]
    errors = []
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id=hub_id, filename=filename)
            logger.info(f"Weights '{timm_weights}': {path}")
            return path
        except Exception as error:  # offline, missing file, auth: all reported below
            errors.append(f"{filename}: {type(error).__name__}: {error}")
    raise WeightsUnavailableError(
        f"Could not get timm weights '{timm_weights}' from the Hugging Face hub (repo "
        f"'{hub_id}'):\n  " + "\n  ".join(errors) + "\nOffline? On a machine with network run "
        f"`huggingface-cli download {hub_id} model.safetensors --local-dir {hub_id.split('/')[-1]}`"
        f", copy the file here and set MODEL.RESBACKBONE.WEIGHTS to its path (a local "
        ".safetensors/.pth/.bin file), or set WEIGHTS '' and NORM 'BN'/'GN' to train from scratch."
    )


def resolve_weights(weights: str, entry: CatalogEntry) -> Tuple[str, str]:
    """Turn a ``MODEL.RESBACKBONE.WEIGHTS`` value into a local file.

    Args:
        weights: ``"imagenet"``, ``"timm:<model>[.<tag>]"`` or a local path.
        entry: the architecture the weights are for.

    Returns:
        ``(local path, description of the source)``.
    """
    if weights == "imagenet":
        if not entry.timm_weights:
            raise WeightsUnavailableError(f"'{entry.name}' has no ImageNet weights in timm; set "
                                          "MODEL.RESBACKBONE.WEIGHTS to a local file or ''.")
        return download_timm_weights(entry.timm_weights), f"imagenet ({entry.timm_weights})"
    if is_timm_name(weights):
        timm_weights = weights[len(TIMM_PREFIX):]
        architecture, _, tag = timm_weights.partition(".")
        if architecture != entry.timm_name:
            raise IncompatibleWeightsError(
                f"MODEL.RESBACKBONE.WEIGHTS '{weights}' are for timm model '{architecture}', but "
                f"MODEL.RESBACKBONE.ARCH '{entry.name}' is timm model '{entry.timm_name}'. Use "
                f"weights 'timm:{entry.timm_name}.<tag>' (tags: "
                f"{', '.join(timm.list_pretrained(entry.timm_name + '.*')) or 'none'}).")
        if not tag:
            cfg = get_pretrained_cfg(architecture)
            if cfg is None or not cfg.tag:
                raise WeightsUnavailableError(f"timm has no pretrained weights for "
                                              f"'{architecture}'.")
            timm_weights = f"{architecture}.{cfg.tag}"
            logger.info(f"WEIGHTS '{weights}' has no tag; using timm's default '{timm_weights}'.")
        return download_timm_weights(timm_weights), f"timm ({timm_weights})"
    return os.path.expanduser(weights), weights


def _is_ignorable(key: str) -> bool:
    return key.endswith(_IGNORED_SUFFIXES)


def _is_under(key: str, prefixes: List[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes if p)


def compare_state_dicts(
    model_state: Dict[str, torch.Tensor],
    checkpoint: CheckpointKeys,
    classifier: str = "",
    full_model_keys: Optional[set] = None,
    source: str = "",
) -> WeightLoadReport:
    """Sort a checkpoint's keys against a model's state dict.

    Args:
        model_state: the backbone body's state dict (timm names).
        checkpoint: the file's tensors in timm names.
        classifier: timm's classifier module name (``fc``/``head.fc``); its keys are dropped.
        full_model_keys: keys of the unpruned architecture; file keys in it but not in
            ``model_state`` belong to stages that OUT_FEATURES did not build.
        source: for the report.

    Returns:
        The :class:`WeightLoadReport` (nothing is loaded here).
    """
    report = WeightLoadReport(source=source, ignored=list(checkpoint.ignored),
                              timm_input_normalization=checkpoint.timm_input_normalization)
    filled = set(checkpoint.filled)
    for key, value in checkpoint.tensors.items():
        if _is_ignorable(key):
            continue
        if key in model_state:
            if tuple(value.shape) == tuple(model_state[key].shape):
                (report.filled if key in filled else report.loaded).append(key)
                if key in checkpoint.renamed:
                    report.converted.append((checkpoint.renamed[key], key))
            else:
                report.mismatched.append((key, tuple(value.shape),
                                          tuple(model_state[key].shape)))
        elif _is_under(key, [classifier]):
            report.classifier.append(key)
        elif key.endswith(_STATISTICS) and key.rsplit(".", 1)[0] + ".weight" in model_state:
            report.unused_statistics.append(key)
        elif full_model_keys is not None and key in full_model_keys:
            report.unused_stages.append(key)
        else:
            report.unexpected.append(key)
    report.missing = [key for key in model_state
                      if key not in checkpoint.tensors and not _is_ignorable(key)]
    return report


def _full_architecture_keys(entry: CatalogEntry) -> Dict[str, Tuple[int, ...]]:
    """State-dict key shapes of the whole timm model (no classifier), built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(entry.timm_name, pretrained=False, num_classes=0)
    return {key: tuple(v.shape) for key, v in model.state_dict().items()}


def matching_architectures(tensors: Dict[str, torch.Tensor]) -> List[str]:
    """Return catalog names whose backbone keys and shapes all match ``tensors``.

    Used in error messages to say which architecture a refused file was made for.
    """
    wanted = {k: tuple(v.shape) for k, v in tensors.items() if not _is_ignorable(k)}
    matches = []
    for name, entry in CATALOG.items():
        keys = {k: s for k, s in _full_architecture_keys(entry).items() if not _is_ignorable(k)}
        classifier = get_pretrained_cfg(entry.timm_name).classifier or ""
        file_keys = {k: s for k, s in wanted.items() if not _is_under(k, [classifier])}
        if keys == file_keys:
            matches.append(name)
    return matches


def _first_problem(report: WeightLoadReport) -> str:
    if report.mismatched:
        key, in_file, in_model = report.mismatched[0]
        return (f" First mismatching tensor: '{key}' has shape {tuple(in_file)} in the file, "
                f"{tuple(in_model)} in the model.")
    if report.unexpected:
        return f" First tensor the architecture lacks: '{report.unexpected[0]}'."
    if report.missing:
        return f" First tensor missing from the file: '{report.missing[0]}'."
    return ""


def check_weight_report(
    report: WeightLoadReport,
    architecture: str,
    tensors: Dict[str, torch.Tensor],
    allow_partial: bool = False,
) -> None:
    """Refuse an incomplete or foreign set of backbone weights, unless ``allow_partial``.

    Args:
        report: the comparison of the file with the backbone (:func:`compare_state_dicts`).
        architecture: the catalog name, for the message.
        tensors: the file's tensors in timm names (to say which architecture they fit).
        allow_partial: ``MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS``: only warn.

    Raises:
        IncompatibleWeightsError: missing keys, shape mismatches or foreign backbone keys; the
            message names the first mismatching tensor and the architectures the file fits.
    """
    if report.complete:
        return
    if allow_partial:
        logger.warning(f"ALLOW_PARTIAL_WEIGHTS: {len(report.missing)} backbone keys stay random "
                       f"and {len(report.mismatched)} mismatched keys are skipped.")
        return
    guesses = matching_architectures(tensors)
    guess = (f" The file matches catalog architecture(s): {', '.join(guesses)}; set "
             "MODEL.RESBACKBONE.ARCH accordingly." if guesses else "")
    raise IncompatibleWeightsError(
        f"Weights {report.source} do not fit architecture '{architecture}': "
        f"{len(report.missing)} missing, {len(report.mismatched)} shape mismatches, "
        f"{len(report.unexpected)} unexpected backbone keys.{_first_problem(report)}{guess} "
        "Loading anyway would leave part of the backbone random; set "
        "MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS True to accept that.\n" + report.table())


def _warn_if_stride_differs(backbone: nn.Module, checkpoint: CheckpointKeys) -> None:
    """MSRA's Caffe2 ResNets (no groups) put the stride in the 1x1 conv; say so if not set."""
    if not checkpoint.source_format.startswith("Caffe2"):
        return
    conv2 = checkpoint.tensors.get("layer2.0.conv2.weight")
    conv1 = getattr(getattr(backbone.body, "layer2", [None])[0], "conv1", None)
    ungrouped_bottleneck = conv2 is not None and conv2.dim() == 4 and \
        conv2.shape[0] == conv2.shape[1] and conv1 is not None and conv1.kernel_size == (1, 1)
    if ungrouped_bottleneck and conv1.stride == (1, 1):
        logger.warning(
            "Caffe2 ResNet weights without groups are usually MSRA's (R-50.pkl, R-101.pkl), "
            "which put the stride in the 1x1 conv: set MODEL.RESBACKBONE.STRIDE_IN_1X1 True "
            "(as Detectron2's MODEL.RESNETS.STRIDE_IN_1X1) unless the file is known to be "
            "FAIR's.")


def load_backbone_weights(
    backbone: nn.Module,
    weights: str,
    allow_partial: bool = False,
) -> WeightLoadReport:
    """Load ``weights`` into a :class:`~resbackbones.modeling.TimmBackbone` and report.

    Args:
        backbone: the bottom-up backbone (its ``body`` holds the timm model).
        weights: ``MODEL.RESBACKBONE.WEIGHTS`` (not empty).
        allow_partial: ``MODEL.RESBACKBONE.ALLOW_PARTIAL_WEIGHTS``: load what matches and go on.

    Returns:
        The report (also logged as a table).

    Raises:
        IncompatibleWeightsError: missing keys, shape mismatches or foreign backbone keys, and
            ``allow_partial`` is False. Nothing is loaded in that case.
    """
    entry: CatalogEntry = backbone.entry
    path, source = resolve_weights(weights, entry)
    checkpoint = load_state_dict_file(path)
    body: nn.Module = backbone.body
    model_state = body.state_dict()
    full_keys = set(_full_architecture_keys(entry))
    report = compare_state_dicts(model_state, checkpoint, backbone.classifier_name, full_keys,
                                 source=f"{source} [{checkpoint.source_format}]")
    logger.info(f"Backbone weights for '{entry.name}' from {report.source}:\n{report.table()}")
    check_weight_report(report, entry.name, checkpoint.tensors, allow_partial)
    _warn_if_stride_differs(backbone, checkpoint)
    to_load = {key: checkpoint.tensors[key] for key in report.loaded + report.filled}
    for key in model_state:  # keep BN counters consistent when the file has them
        if _is_ignorable(key) and key in checkpoint.tensors:
            to_load[key] = checkpoint.tensors[key]
    body.load_state_dict(to_load, strict=False)
    return report
