"""Export a resbackbones (or any Detectron2) detector to TorchScript or ONNX.

Tracing (the default) runs the model once through Detectron2's ``TracingAdapter`` on a sample
image and records the graph; image height and width stay dynamic, the batch is one image.
Scripting (``--method scripting``, TorchScript only) compiles the Python code instead and needs
every module to be scriptable, which timm backbones are not; it is offered for configs whose
modules are (Detectron2's own backbones).

What the exported graph contains:

* inference speed-ups that change the network, not how it runs, are baked in: BatchNorm folded
  into the preceding convolutions (``MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE``);
* run-time-only CPU tricks are switched off while tracing, since they are choices of PyTorch's
  CPU runtime rather than parts of the network (ONNX Runtime and libtorch choose their own
  kernels and threads): NNPACK Winograd convolutions (``WINOGRAD``), ROIAlign split over threads
  (``PARALLEL_ROI_ALIGN``), channels-last layouts (``CHANNELS_LAST``), ``torch.compile``
  (``COMPILE``) and mixed precision (``INFERENCE_AMP``: the export is float32).

The output folder holds the model, ``config.yaml``, ``model_meta.json`` (class names and, when
known, the data set's category ids, input format and normalisation, output names, hashes) and a
``README.md`` of inputs and outputs.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import GeneralizedRCNN, PanopticFPN, RetinaNet, build_model
from torch import nn

from resbackbones._requirements import require_extra
from resbackbones.checkpoint import ResBackboneCheckpointer
from resbackbones.config import build_config
from resbackbones.engine.class_names import read_class_names
from resbackbones.deploy.onnx_runner import (
    META_FILE,
    META_SCHEMA_VERSION,
    file_sha256,
    load_rgb,
    preprocess,
)
from resbackbones.modeling.inference import fold_batchnorm
from resbackbones.results_format import check_dataset_id_mapping, generic_class_names

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_METHODS",
    "DEFAULT_OPSET",
    "RUNTIME_ONLY_SETTINGS",
    "ExportError",
    "ExportResult",
    "export_config",
    "export_detector",
    "export_same_weights",
    "export_model",
    "load_export_model",
    "resolve_class_names",
    "resolve_dataset_id_mapping",
    "sample_image",
    "with_export_settings",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
EXPORT_METHODS = ("tracing", "scripting")
# ONNX opset: ROIAlign keeps Detectron2's aligned=True (half-pixel) only from opset 16 on.
DEFAULT_OPSET = 17
MIN_OPSET = 16
# MODEL.RESBACKBONE keys set while exporting: CPU run-time tricks that are not part of the
# network (see the module docstring). BN folding is not here: it is baked into the weights.
RUNTIME_ONLY_SETTINGS: Dict[str, Any] = {
    "WINOGRAD": False,
    "PARALLEL_ROI_ALIGN": False,
    "CHANNELS_LAST": "off",
    "COMPILE": False,
    "INFERENCE_AMP": "off",
}
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
SUPPORTED = ("GeneralizedRCNN / ResBackboneRCNN (Faster and Mask R-CNN) and RetinaNet / "
             "ResBackboneRetinaNet")


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message names the module and what to try."""


@dataclass
class ExportResult:
    """What :func:`export_detector` wrote.

    Attributes:
        output_dir: the export folder.
        model_path: the TorchScript or ONNX file.
        meta: the content of ``model_meta.json``.
        sample_detections: detections of the eager model on the sample image.
        parity: the exported model against the eager model on the sample image (see
            :func:`compare_detections`), when it could be run.
    """

    output_dir: str
    model_path: str
    meta: Dict[str, Any]
    sample_detections: int
    parity: Dict[str, Any] = field(default_factory=dict)


def export_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """The config a model is exported from: :func:`build_config` with the CPU as device and the
    run-time-only speed-ups (:data:`RUNTIME_ONLY_SETTINGS`) off."""
    return with_export_settings(build_config(config_file, opts))


def with_export_settings(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` on the CPU with the run-time-only speed-ups off."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if "RESBACKBONE" in cfg.MODEL:
        for key, value in RUNTIME_ONLY_SETTINGS.items():
            cfg.MODEL.RESBACKBONE[key] = value
    return cfg


class _StrictCheckpointer(ResBackboneCheckpointer):
    """Keeps the incompatible keys that Detectron2's checkpointer only logs."""

    incompatible: Any = None

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_export_model(cfg: CfgNode) -> Tuple[nn.Module, Dict[str, Any], int]:
    """Build the model of ``cfg`` in eval mode, load ``MODEL.WEIGHTS`` strictly, fold BN.

    A checkpoint that leaves parameters of the model random is refused: an exported model is
    shipped, and a half-random one would fail silently far from here.

    Returns:
        (model, extra data of the checkpoint, number of BatchNorms folded).
    """
    model = build_model(cfg).eval()
    extra: Dict[str, Any] = {}
    if cfg.MODEL.WEIGHTS:
        checkpointer = _StrictCheckpointer(model)
        extra = checkpointer.load(cfg.MODEL.WEIGHTS) or {}
        incompatible = checkpointer.incompatible
        if incompatible is not None and (incompatible.missing_keys
                                         or incompatible.incorrect_shapes):
            missing = list(incompatible.missing_keys) + [
                name for name, *_ in incompatible.incorrect_shapes]
            raise ExportError(
                f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} does not fit the model built from the "
                f"config: {len(missing)} parameters missing or of another shape (e.g. "
                f"{', '.join(missing[:3])}). Export with the config the model was trained with.")
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model.")
    folded = 0
    if "RESBACKBONE" in cfg.MODEL and cfg.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE:
        folded = bake_batchnorm_folding(model)
    return model, extra, folded


def bake_batchnorm_folding(model: nn.Module) -> int:
    """Fold, in place, the BatchNorms of every resbackbones bottom-up network into its convs.

    The eager model folds a private copy whenever its weights change (``FoldedInferenceCopy``);
    an export has fixed weights, so the folded network itself is traced, and the backbone is
    told to run it directly.

    Returns:
        The number of norms folded.
    """
    folded = 0
    for module in model.modules():
        if getattr(module, "fold_bn_for_inference", False) and isinstance(
                getattr(module, "body", None), nn.Module):
            folded += fold_batchnorm(module.body)
            module.fold_bn_for_inference = False
    return folded


def _registered_class_names(cfg: CfgNode) -> Tuple[Optional[List[str]], str]:
    for dataset in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        names = MetadataCatalog.get(dataset).get("thing_classes", None)
        if names:
            return [str(n) for n in names], f"metadata of dataset {dataset!r}"
    return None, ""


def resolve_class_names(cfg: CfgNode, num_classes: int,
                        explicit: Optional[Sequence[str]] = None) -> Tuple[List[str], str]:
    """The class names recorded with an export, and where they come from.

    Order: the metadata of a registered dataset of the config (``DATASETS.TEST``, then
    ``TRAIN``) with ``num_classes`` names; else ``explicit`` (``--class-names``); else the
    ``class_names.json`` that training wrote next to ``MODEL.WEIGHTS``; else
    ``class_0 .. class_{n-1}``.

    Raises:
        ExportError: ``explicit`` has the wrong length, or contradicts the registered names.
    """
    registered, source = _registered_class_names(cfg)
    if registered is not None and len(registered) != num_classes:
        logger.warning(f"{len(registered)} class names in the {source} but the model has "
                       f"{num_classes} classes; not using them.")
        registered = None
    if explicit:
        explicit = [str(n).strip() for n in explicit]
        if len(explicit) != num_classes:
            raise ExportError(f"--class-names gives {len(explicit)} names but the model has "
                              f"{num_classes} classes: give one name per class, in class-id "
                              "order.")
        if registered is not None and registered != explicit:
            raise ExportError(f"--class-names {explicit} contradicts the {source} "
                              f"{registered}; drop the flag or fix the config's DATASETS.")
    if registered is not None:
        return registered, source
    if explicit:
        return list(explicit), "--class-names"
    weights = cfg.MODEL.WEIGHTS
    saved = read_class_names(os.path.dirname(weights)) if weights and os.path.isfile(
        weights) else None
    if saved is not None and len(saved.thing_classes) == num_classes:
        return list(saved.thing_classes), saved.path
    return generic_class_names(num_classes), "generic (no registered dataset)"


def resolve_dataset_id_mapping(cfg: CfgNode,
                               class_names: Sequence[str]) -> Optional[Dict[int, int]]:
    """The data set's category ids for ``class_names``, as the eager demo finds them, so that
    the ONNX runner writes the same ``category_id`` (``resbackbones.results_format``).

    Order: the ``class_names.json`` next to ``MODEL.WEIGHTS`` when its names are these; else the
    first registered dataset of ``DATASETS.TEST``, then ``TRAIN``, whose ``thing_classes`` are
    these and whose metadata has ``thing_dataset_id_to_contiguous_id``; else ``None`` (the
    contiguous indices are written).
    """
    names = list(class_names)
    weights = cfg.MODEL.WEIGHTS
    saved = read_class_names(os.path.dirname(weights)) if weights and os.path.isfile(
        weights) else None
    if saved is not None and saved.thing_classes == names and \
            saved.thing_dataset_id_to_contiguous_id:
        return check_dataset_id_mapping(saved.thing_dataset_id_to_contiguous_id, len(names),
                                        saved.path)
    for dataset in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        metadata = MetadataCatalog.get(dataset)
        mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
        if mapping and [str(n) for n in metadata.get("thing_classes", None) or []] == names:
            return check_dataset_id_mapping(mapping, len(names), f"metadata of {dataset!r}")
    return None


def _num_classes(model: nn.Module) -> int:
    if isinstance(model, RetinaNet):
        return int(model.num_classes)
    return int(model.roi_heads.num_classes)


def sample_image(cfg: CfgNode, path: Optional[str] = None, seed: int = 0) -> np.ndarray:
    """The RGB image traced through the model: ``path``, or a synthetic one of the test size.

    The synthetic image (a colour gradient with flat rectangles) is enough for tracing: the
    graph does not depend on what is detected; only the reported parity check does.
    """
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sample-image {path!r} does not exist.")
        return load_rgb(path)
    height = int(cfg.INPUT.MIN_SIZE_TEST)
    width = min(int(height * 4 / 3), int(cfg.INPUT.MAX_SIZE_TEST))
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                      np.full_like(xs, 96)], axis=-1).astype(np.uint8)
    for _ in range(5):
        x0, y0 = rng.integers(0, width * 2 // 3), rng.integers(0, height * 2 // 3)
        x1 = x0 + rng.integers(width // 8, width // 3)
        y1 = y0 + rng.integers(height // 8, height // 3)
        image[y0:y1, x0:x1] = rng.integers(0, 255, size=3)
    return image


def _describe(module: nn.Module) -> str:
    return f"{type(module).__name__} ({type(module).__module__})"


def tracing_function(model: nn.Module) -> Tuple[Callable, List[str]]:
    """How to call ``model`` on one image for tracing, and the names of its outputs.

    R-CNN models return their outputs before Detectron2's postprocess (boxes in input pixels,
    28x28 mask probabilities), which the runner reproduces; RetinaNet's postprocess at the input
    size only clips boxes, so it stays in the graph.

    Raises:
        ExportError: the meta-architecture or a head has no tracing path here.
    """
    if isinstance(model, GeneralizedRCNN) and not isinstance(model, PanopticFPN):
        if model.proposal_generator is None:
            raise ExportError(
                f"{_describe(model)} uses precomputed proposals (no proposal_generator): an "
                "exported model cannot read them. Export with MODEL.PROPOSAL_GENERATOR.NAME "
                "'RPN'.")
        if getattr(model.roi_heads, "keypoint_on", False):
            raise ExportError(
                f"{_describe(model.roi_heads)} has a keypoint head, whose outputs this exporter "
                "does not describe; export with MODEL.KEYPOINT_ON False.")
        with_masks = bool(getattr(model.roi_heads, "mask_on", False))

        def run_rcnn(module: nn.Module, inputs: List[Dict[str, torch.Tensor]]):
            instances = module.inference(inputs, do_postprocess=False)[0]
            outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
            return outputs + (instances.pred_masks,) if with_masks else outputs

        return run_rcnn, ["boxes", "scores", "classes"] + (["masks"] if with_masks else [])
    if isinstance(model, RetinaNet):
        def run_retinanet(module: nn.Module, inputs: List[Dict[str, torch.Tensor]]):
            instances = module(inputs)[0]["instances"]
            return instances.pred_boxes.tensor, instances.scores, instances.pred_classes

        return run_retinanet, ["boxes", "scores", "classes"]
    raise ExportError(
        f"{_describe(model)} cannot be exported by tracing: this exporter describes the outputs "
        f"of {SUPPORTED} only (Detectron2 v0.6 has no export path for panoptic or semantic "
        "segmentation). Export its instance branch with MODEL.META_ARCHITECTURE "
        "'ResBackboneRCNN', or try --method scripting --format torchscript.")


@contextlib.contextmanager
def _module_stack(model: nn.Module) -> Iterator[List[str]]:
    """Track which submodules of ``model`` are running, to name the one an error comes from."""
    names = {id(module): name or "(model)" for name, module in model.named_modules()}
    stack: List[str] = []

    def enter(module, args):
        if id(module) in names:
            stack.append(f"{names[id(module)]} ({type(module).__module__}."
                         f"{type(module).__name__})")

    def leave(module, args, output):
        if id(module) in names and stack:
            stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(enter),
               nn.modules.module.register_module_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:400]


@contextlib.contextmanager
def _naming_failures(model: nn.Module, what: str, advice: str) -> Iterator[None]:
    """Turn an error raised while ``what`` runs ``model`` into an :class:`ExportError` that
    names the innermost module that was running."""
    with _module_stack(model) as stack:
        try:
            yield
        except ExportError:
            raise
        except Exception as error:
            if not stack:  # not raised inside a module (e.g. ONNX conversion): the caller's
                raise
            raise ExportError(f"{what} failed in module {stack[-1]}: {_first_line(error)}. "
                              f"{advice}") from error


_TRACING_ADVICE = ("That module cannot be traced; try --method scripting --format torchscript, "
                   "or a config whose modules are traceable.")


def _adapter(model: nn.Module, image: torch.Tensor):
    """(TracingAdapter, eager outputs, output names) for ``model`` on one image."""
    from detectron2.export import TracingAdapter

    function, output_names = tracing_function(model)
    # eval(): exporters put a module back into the mode it had, which is train() for a new
    # one, and would leave the model itself in training mode.
    adapter = TracingAdapter(model, [{"image": image}], function).eval()
    with _naming_failures(model, "Running the model", _TRACING_ADVICE), torch.no_grad():
        eager_outputs = adapter(image)
    return adapter, eager_outputs, output_names


def _trace_torchscript(model: nn.Module, adapter: nn.Module, image: torch.Tensor):
    import warnings

    with _naming_failures(model, "Tracing", _TRACING_ADVICE), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; parity is checked instead
        return torch.jit.trace(adapter, (image,), check_trace=False)


def _script(model: nn.Module):
    """TorchScript of ``model`` by scripting (Detectron2's ``scripting_with_instances``)."""
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    tracing_function(model)  # the same meta-architectures are supported
    fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor,
              "pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor,
              "pred_masks": torch.Tensor}
    try:
        return scripting_with_instances(model, fields)
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        location = next((line for line in lines if line.startswith("File ")), "")
        raise ExportError(
            f"Scripting failed{' at ' + location if location else ''}: "
            f"{lines[0] if lines else type(error).__name__}. That module is not "
            "TorchScript-compatible (timm backbones are not); use --method tracing (the "
            "default).") from error


def _export_onnx(model: nn.Module, adapter: nn.Module, image: torch.Tensor, path: str,
                 output_names: List[str], opset: int) -> None:
    import warnings

    onnx = require_extra("export", "onnx", "ONNX export")
    dynamic_axes = {"image": {1: "height", 2: "width"},
                    **{name: {0: "detections"} for name in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; parity is checked instead
        try:
            with _naming_failures(model, "Tracing for ONNX", _TRACING_ADVICE):
                    torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=opset,
                                  input_names=["image"], output_names=output_names,
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
        except ExportError:
            raise
        except Exception as error:
            operator = re.search(r"operator '([\w:.]+)'", str(error))
            where = _module_calling(model, adapter, image, operator.group(1)) if operator else None
            raise ExportError(
                f"ONNX export failed{' in module ' + where if where else ''}: "
                f"{_first_line(error)}. That operator has no ONNX translation at opset {opset}; "
                "try a higher --opset, or --format torchscript (TorchScript keeps every PyTorch "
                "operator).") from error
    onnx.checker.check_model(onnx.load(path), full_check=True)


def _module_calling(model: nn.Module, adapter: nn.Module, image: torch.Tensor,
                    operator: str) -> Optional[str]:
    """The innermost module of ``model`` that calls ``operator`` (e.g. "aten::special_i1e")
    when run on ``image``, found by running it once more under a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    wanted = operator.split("::")[-1]
    found: List[str] = []

    class _Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and func.overloadpacket.__name__ == wanted and stack:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    with _module_stack(model) as stack, torch.no_grad():
        try:
            with _Watch():
                adapter(image)
        except Exception:  # only looking; the export error is what gets reported
            pass
    return found[0] if found else None


def raw_outputs(values: Sequence[Any], names: Sequence[str]) -> Dict[str, np.ndarray]:
    """``{name: numpy array}`` of a model's flat outputs (tensors or arrays)."""
    return {name: (value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                   else np.asarray(value)) for name, value in zip(names, values)}


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _lowest(scores) -> Optional[float]:
    scores = np.asarray(scores).ravel()
    return float(scores.min()) if len(scores) else None


def compare_detections(reference: Dict[str, np.ndarray], other: Dict[str, np.ndarray],
                       large_mask_pixels: int = 400) -> Dict[str, Any]:
    """Match two sets of detections one to one (same class, box IoU > 0.9, greedily by the
    reference's score) and report how far the matched ones differ.

    ``masks`` may be (N, 1, M, M) probabilities (thresholded at 0.5) or (N, H, W) booleans.

    Returns:
        ``reference``/``other``/``matched`` counts, the scores of the detections left
        unmatched on either side (``unmatched_reference_scores``, ``unmatched_other_scores``)
        and each side's lowest score (None when empty), and, over the matched detections,
        ``max_box_difference_px``, ``max_score_difference``, ``classes_equal`` and, when both
        have masks, ``min_mask_iou`` and ``min_large_mask_iou`` (over reference masks of at
        least ``large_mask_pixels`` pixels: for a mask of a few dozen pixels a box shifted by
        0.05 px already moves a few boundary pixels, so its IoU says little).
    """
    boxes_a, boxes_b = reference["boxes"].reshape(-1, 4), other["boxes"].reshape(-1, 4)
    report: Dict[str, Any] = {"reference": int(len(boxes_a)), "other": int(len(boxes_b)),
                              "matched": 0, "max_box_difference_px": 0.0,
                              "max_score_difference": 0.0, "classes_equal": True,
                              "lowest_reference_score": _lowest(reference["scores"]),
                              "lowest_other_score": _lowest(other["scores"]),
                              "unmatched_reference_scores": sorted(
                                  float(x) for x in np.asarray(reference["scores"]).ravel()),
                              "unmatched_other_scores": sorted(
                                  float(x) for x in np.asarray(other["scores"]).ravel())}
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return report
    iou = _box_iou(boxes_a.astype(np.float64), boxes_b.astype(np.float64))
    iou[reference["classes"][:, None] != other["classes"][None, :]] = 0
    taken = np.zeros(len(boxes_b), dtype=bool)
    pairs = []
    for index in np.argsort(-reference["scores"], kind="stable"):
        candidates = np.where(~taken, iou[index], -1.0)
        best = int(candidates.argmax())
        if candidates[best] > 0.9:
            taken[best] = True
            pairs.append((index, best))
    matched_a = {index for index, _ in pairs}
    report["unmatched_reference_scores"] = sorted(
        float(reference["scores"][i]) for i in range(len(boxes_a)) if i not in matched_a)
    report["unmatched_other_scores"] = sorted(
        float(other["scores"][i]) for i in range(len(boxes_b)) if not taken[i])
    if not pairs:
        return report
    a, b = (np.array(side) for side in zip(*pairs))
    report.update(
        matched=len(pairs),
        max_box_difference_px=float(np.abs(boxes_a[a] - boxes_b[b]).max()),
        max_score_difference=float(np.abs(reference["scores"][a] - other["scores"][b]).max()),
        classes_equal=bool(np.array_equal(reference["classes"][a], other["classes"][b])))
    if "masks" in reference and "masks" in other:
        masks_a = reference["masks"][a].reshape(len(a), -1) >= 0.5
        masks_b = other["masks"][b].reshape(len(b), -1) >= 0.5
        union = (masks_a | masks_b).sum(1)
        mask_iou = np.where(union > 0, (masks_a & masks_b).sum(1) / np.maximum(union, 1), 1.0)
        report["min_mask_iou"] = float(mask_iou.min())
        large = masks_a.sum(1) >= min(large_mask_pixels, masks_a.shape[1])
        report["min_large_mask_iou"] = float(mask_iou[large].min()) if large.any() else 1.0
    return report


def _versions() -> Dict[str, str]:
    import importlib.metadata

    versions = {"torch": torch.__version__}
    for package in ("detectron2", "resbackbones", "timm", "onnx"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _output_specs(output_names: Sequence[str], mask_size: int) -> List[Dict[str, Any]]:
    described = {
        "boxes": ("float32", ["N", 4], "x0, y0, x1, y1 in pixels of the model input (the "
                  "resized image); scale by original/input size"),
        "scores": ("float32", ["N"], "confidence of each detection, descending per class"),
        "classes": ("int64", ["N"], "contiguous class id, an index into class_names"),
        "masks": ("float32", ["N", 1, mask_size, mask_size], "mask probabilities in each box; "
                  "paste into the image and threshold at mask_threshold (see README)"),
    }
    return [{"name": name, "dtype": described[name][0], "shape": described[name][1],
             "meaning": described[name][2]} for name in output_names]


def _meta(cfg: CfgNode, model: nn.Module, fmt: str, method: str, model_file: str,
          output_names: Sequence[str], class_names: Sequence[str], class_source: str,
          folded: int, opset: Optional[int],
          dataset_ids: Optional[Dict[int, int]] = None) -> Dict[str, Any]:
    resbackbone = "RESBACKBONE" in cfg.MODEL
    mask_size = 2 * int(cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)
    score_threshold = (cfg.MODEL.RETINANET.SCORE_THRESH_TEST if isinstance(model, RetinaNet)
                       else cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    return {
        "schema_version": META_SCHEMA_VERSION,
        "format": fmt,
        "method": method,
        "model_file": model_file,
        "config_file": "config.yaml",
        "exported": datetime.datetime.now().isoformat(timespec="seconds"),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "backbone": cfg.MODEL.RESBACKBONE.ARCH if resbackbone else cfg.MODEL.BACKBONE.NAME,
        "weights": cfg.MODEL.WEIGHTS,
        "num_classes": _num_classes(model),
        "class_names": list(class_names),
        "class_names_source": class_source,
        # data set category id (a string: JSON keys) -> contiguous class id; null when unknown
        "thing_dataset_id_to_contiguous_id": None if dataset_ids is None else {
            str(k): int(v) for k, v in sorted(dataset_ids.items())},
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": [3, "height", "width"],
            "channel_order": cfg.INPUT.FORMAT,
            "value_range": "0-255, not normalised: the model subtracts pixel_mean, divides by "
                           "pixel_std and pads to size_divisibility itself",
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "size_divisibility": int(getattr(model.backbone, "size_divisibility", 0)),
            "resize": {"rule": "ResizeShortestEdge", "short_edge": int(cfg.INPUT.MIN_SIZE_TEST),
                       "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
                       "interpolation": "bilinear (Pillow, on uint8 pixels)"},
        },
        "outputs": _output_specs(output_names, mask_size),
        "mask_threshold": 0.5,
        "score_threshold": float(score_threshold),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "onnx_opset": opset,
        "speedups": {
            "baked_in": {"batchnorm_folded_into_convs": folded},
            "runtime_only_off_in_export": dict(RUNTIME_ONLY_SETTINGS) if resbackbone else {},
        },
        "versions": _versions(),
    }


_README = """\
# Exported detector: {name}

Exported by resbackbones' `tools/export_model.py` ({method}, {fmt}) on {exported}.

| file | content |
|---|---|
| `{model_file}` | the model ({fmt_long}) |
| `config.yaml` | the Detectron2 config it was built from (run-time speed-ups switched off) |
| `model_meta.json` | class names, input format and normalisation, outputs, sha256 of the files |

## Input

One image per call: `image`, float32, shape `(3, height, width)`, channel order
**{channel_order}**, values 0-255. Resize it first like Detectron2's test-time
`ResizeShortestEdge`: shorter side {short_edge}, longer side at most {max_size}, bilinear
(Pillow). Do not normalise or pad: the model subtracts the pixel mean {mean}, divides by the
pixel std {std} and pads to a multiple of {divisibility} itself.

## Outputs

{outputs}

Detections have score >= {score_threshold} (at most {detections_per_image}). Boxes are in the
pixels of the resized input: multiply x by original width / input width and y by original
height / input height, clip to the image and drop empty boxes.{mask_text}

## Classes

{num_classes} classes ({class_source}): {class_names}

## Running it without Detectron2

```python
from resbackbones.deploy.onnx_runner import OnnxDetector  # numpy, Pillow, onnxruntime only
detections = OnnxDetector("{folder}")("image.jpg")
print(detections.boxes, detections.scores, detections.labels, detections.masks)
```

or `python tools/demo.py --onnx {folder} --input image.jpg --output out/`.{torchscript_text}

## What is in the graph

BatchNorm folded into the convolutions ({folded} norms): part of the weights. Off in the export,
because they are CPU run-time choices of PyTorch rather than parts of the network: NNPACK
Winograd convolutions, ROIAlign split over threads, channels-last layouts, `torch.compile` and
mixed precision (the model is float32). Threads are the runtime's business (ONNX Runtime:
`SessionOptions.intra_op_num_threads`; libtorch: `at::set_num_threads`).
"""


def write_readme(output_dir: str, meta: Dict[str, Any]) -> str:
    """Write the export folder's README.md (inputs, outputs, classes) from its meta data."""
    spec = meta["input"]
    outputs = "\n".join(
        f"- `{o['name']}`: {o['dtype']} `({', '.join(str(s) for s in o['shape'])})`, "
        f"{o['meaning']}" for o in meta["outputs"])
    has_masks = any(o["name"] == "masks" for o in meta["outputs"])
    mask_text = (" Masks: stretch each map over its (rescaled) box by bilinear sampling at pixel "
                 f"centres and keep pixels >= {meta['mask_threshold']}, as Detectron2's "
                 "`paste_masks_in_image` does; the runner below does exactly that."
                 if has_masks else "")
    torchscript_text = ("\n\nTorchScript: `import torchvision` (it registers the NMS and "
                        "ROIAlign ops; in C++ link TorchVision), then "
                        "`torch.jit.load(\"model.ts\")(image)` under `torch.no_grad()` "
                        "returns the outputs above as a tuple, in that order; the runner is for "
                        "the ONNX export."
                        if meta["format"] == "torchscript" else "")
    if meta["format"] == "torchscript" and meta["method"] == "scripting":
        torchscript_text = ("\n\nTorchScript (scripted): call it with `[{\"image\": image}]`; "
                            "it returns Detectron2's `[{\"instances\": ...}]` with boxes and "
                            "masks already in the input's pixels.")
    text = _README.format(
        name=meta["backbone"] + " " + meta["meta_architecture"], method=meta["method"],
        fmt=meta["format"], exported=meta["exported"], model_file=meta["model_file"],
        fmt_long=("ONNX, opset %s" % meta["onnx_opset"]) if meta["format"] == "onnx"
        else "TorchScript, load with torch.jit.load",
        channel_order=spec["channel_order"], short_edge=spec["resize"]["short_edge"],
        max_size=spec["resize"]["max_size"], mean=spec["pixel_mean"], std=spec["pixel_std"],
        divisibility=spec["size_divisibility"], outputs=outputs,
        score_threshold=meta["score_threshold"],
        detections_per_image=meta["detections_per_image"], mask_text=mask_text,
        num_classes=meta["num_classes"], class_source=meta["class_names_source"],
        class_names=", ".join(meta["class_names"]), folder=os.path.basename(output_dir) or ".",
        torchscript_text=torchscript_text,
        folded=meta["speedups"]["baked_in"]["batchnorm_folded_into_convs"])
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as file:
        file.write(text)
    return path


def _run_exported(fmt: str, path: str, image: torch.Tensor) -> Sequence[Any]:
    if fmt == "onnx":
        onnxruntime = require_extra("export", "onnxruntime", "Checking the ONNX export")
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        return torch.jit.load(path)(image)


def export_detector(model: nn.Module, cfg: CfgNode, output_dir: str, fmt: str = "onnx",
                    method: str = "tracing", image: Optional[np.ndarray] = None,
                    class_names: Optional[Sequence[str]] = None, opset: int = DEFAULT_OPSET,
                    folded: int = 0) -> ExportResult:
    """Export a built model (eval mode, weights loaded) into ``output_dir``.

    Args:
        model: the detector, built from ``cfg`` (see :func:`load_export_model`).
        cfg: its config (written to ``config.yaml``).
        output_dir: the export folder (created).
        fmt: "onnx" or "torchscript".
        method: "tracing" or "scripting" (TorchScript only).
        image: RGB uint8 sample image for tracing (default: :func:`sample_image`).
        class_names: ``--class-names``; see :func:`resolve_class_names`.
        opset: ONNX opset (>= 16).
        folded: BatchNorms folded into the model (recorded in the meta file).

    Returns:
        What was written, with the parity of the exported model on the sample image.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r} is invalid; valid: {', '.join(EXPORT_FORMATS)}.")
    if method not in EXPORT_METHODS:
        raise ExportError(f"--method {method!r} is invalid; valid: {', '.join(EXPORT_METHODS)}.")
    if method == "scripting" and fmt != "torchscript":
        raise ExportError("--method scripting makes TorchScript only; use --format torchscript, "
                          "or --method tracing for ONNX.")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: ROIAlign keeps Detectron2's "
                          f"aligned=True only from opset {MIN_OPSET} on; use {MIN_OPSET} or "
                          f"higher (default {DEFAULT_OPSET}).")
    if fmt == "onnx":  # fail before tracing, not after it
        for module in ("onnx", "onnxruntime"):
            require_extra("export", module, "ONNX export")
    names, class_source = resolve_class_names(cfg, _num_classes(model), class_names)
    dataset_ids = resolve_dataset_id_mapping(cfg, names)
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, MODEL_FILES[fmt])
    rgb = sample_image(cfg) if image is None else image
    meta_input = {"input": {"channel_order": cfg.INPUT.FORMAT,
                            "resize": {"short_edge": int(cfg.INPUT.MIN_SIZE_TEST),
                                       "max_size": int(cfg.INPUT.MAX_SIZE_TEST)}}}
    tensor = torch.from_numpy(preprocess(rgb, meta_input))
    _, output_names = tracing_function(model)
    parity: Dict[str, Any] = {}
    if method == "scripting":
        _script(model).save(model_path)
        with torch.no_grad():
            sample_count = len(model([{"image": tensor}])[0]["instances"])
    else:
        adapter, eager_outputs, output_names = _adapter(model, tensor)
        if fmt == "onnx":
            _export_onnx(model, adapter, tensor, model_path, output_names, opset)
        else:
            _trace_torchscript(model, adapter, tensor).save(model_path)
        reference = raw_outputs(eager_outputs, output_names)
        sample_count = len(reference["scores"])
        exported = raw_outputs(_run_exported(fmt, model_path, tensor), output_names)
        parity = compare_detections(reference, exported)
        if sample_count == 0:
            logger.warning(
                "The sample image yields no detections. The traced graph does not depend on "
                "them (same operators either way), but the parity check compared empty "
                "outputs only: pass --sample-image with objects in it to check the export.")
        elif parity["matched"] < sample_count or not parity["classes_equal"]:
            logger.warning(f"The exported model differs from the eager one on the sample image: "
                           f"{parity}")
    config_path = os.path.join(output_dir, "config.yaml")
    with open(config_path, "w") as file:
        file.write(cfg.dump())
    meta = _meta(cfg, model, fmt, method, MODEL_FILES[fmt], output_names, names, class_source,
                 folded, opset if fmt == "onnx" else None, dataset_ids)
    meta["model_sha256"] = file_sha256(model_path)
    meta["config_sha256"] = file_sha256(config_path)
    meta["sample"] = {"image_size": list(rgb.shape[:2]), "input_size": list(tensor.shape[1:]),
                      "detections": sample_count, "parity_with_eager": parity}
    with open(os.path.join(output_dir, META_FILE), "w") as file:
        json.dump(meta, file, indent=2)
    write_readme(output_dir, meta)
    logger.info(f"Exported {model_path} ({sample_count} detections on the sample image; "
                f"parity {parity})")
    return ExportResult(output_dir, model_path, meta, sample_count, parity)


def export_model(config_file: str, output_dir: str, fmt: str = "onnx", method: str = "tracing",
                 opts: Sequence[str] = (), sample_image_path: Optional[str] = None,
                 class_names: Optional[Sequence[str]] = None,
                 opset: int = DEFAULT_OPSET) -> ExportResult:
    """Build the model of a config (with ``KEY VALUE`` overrides), load ``MODEL.WEIGHTS``, fold
    BN and export it: what ``tools/export_model.py`` runs.

    Returns:
        See :func:`export_detector`.
    """
    cfg = export_config(config_file, opts)
    model, _, folded = load_export_model(cfg)
    image = sample_image(cfg, sample_image_path)
    return export_detector(model, cfg, output_dir, fmt, method, image, class_names, opset,
                           folded)


def export_same_weights(model: nn.Module, cfg: CfgNode, output_dir: str,
                        image: Optional[np.ndarray] = None, fmt: str = "onnx") -> ExportResult:
    """Export the weights of an eager model (built from ``cfg``, any speed-ups) as the model
    of :func:`with_export_settings` of ``cfg``: for comparing an export with its source.

    Returns:
        See :func:`export_detector`.
    """
    export_cfg = with_export_settings(cfg)
    twin = build_model(export_cfg).eval()
    twin.load_state_dict(model.state_dict())
    folded = 0
    if "RESBACKBONE" in export_cfg.MODEL and export_cfg.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE:
        folded = bake_batchnorm_folding(twin)
    return export_detector(twin, export_cfg, output_dir, fmt, image=image, folded=folded)
