"""Run an exported resbackbones detector with ONNX Runtime, without Detectron2 or PyTorch.

Needs only numpy, Pillow and onnxruntime. The pre- and post-processing reproduce what
Detectron2 does around the model at test time, so that the detections equal those of the eager
model (``tests/test_export.py`` checks it):

* resize like ``ResizeShortestEdge([MIN_SIZE_TEST] * 2, MAX_SIZE_TEST)`` in Detectron2's
  ``DefaultPredictor``: the same size rule and Pillow's bilinear interpolation on uint8 pixels;
  channel order ``INPUT.FORMAT``; values 0-255 (the model normalises and pads itself);
* rescale boxes to the original image, clip, drop empty boxes (``detector_postprocess``);
* paste each 28x28 mask probability map into the image like ``paste_masks_in_image`` on the
  CPU (bilinear sampling with ``grid_sample``'s ``align_corners=False`` rule, zeros outside the
  map, only within one pixel around the box) and threshold it at 0.5.

The folder written by ``tools/export_model.py`` holds ``model.onnx`` and ``model_meta.json``;
:class:`OnnxDetector` refuses a model file that is not the one the meta file describes. The meta
file's ``thing_dataset_id_to_contiguous_id`` (present when the export knew the data set's category
ids) gives the ``category_id`` of :mod:`resbackbones.results_format`'s records, so that this
runner's JSON equals the eager demo's.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from resbackbones._requirements import require_extra
from resbackbones.results_format import check_dataset_id_mapping, class_name

__all__ = [
    "META_FILE",
    "Detections",
    "ModelMismatchError",
    "OnnxDetector",
    "file_sha256",
    "load_rgb",
    "read_meta",
    "check_model_matches_meta",
    "dataset_id_mapping",
    "paste_masks",
    "postprocess",
    "preprocess",
    "resize_shortest_edge_shape",
]

# Name of the meta file written next to the exported model.
META_FILE = "model_meta.json"
# Version of the meta file's layout; the runner refuses layouts it does not know.
META_SCHEMA_VERSION = 1

ImageSource = Union[np.ndarray, Image.Image, str, "os.PathLike[str]"]


class ModelMismatchError(ValueError):
    """The model file does not match its meta file (another export, an edited meta file)."""


@dataclass
class Detections:
    """Detections in the pixel coordinates of the image given to the runner.

    Attributes:
        boxes: (N, 4) float32, ``x0, y0, x1, y1``.
        scores: (N,) float32.
        classes: (N,) int64 contiguous class ids, indices into ``class_names``.
        masks: (N, H, W) bool instance masks, or None for box-only detectors.
        class_names: the name of every class id of the model.
        image_size: (height, width) of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: Optional[np.ndarray]
    class_names: List[str]
    image_size: Tuple[int, int]
    timings: Dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labels(self) -> List[str]:
        """The class name of each detection."""
        return [class_name(self.class_names, c) for c in self.classes.tolist()]

    def select(self, keep: np.ndarray) -> "Detections":
        """A copy with only the detections where ``keep`` (a bool mask or indices) is set."""
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          None if self.masks is None else self.masks[keep],
                          self.class_names, self.image_size, dict(self.timings))


def file_sha256(path: str) -> str:
    """sha256 of a file, read in blocks (models are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resize_shortest_edge_shape(height: int, width: int, short_edge: int,
                               max_size: int) -> Tuple[int, int]:
    """The (height, width) Detectron2's ``ResizeShortestEdge`` resizes an image to.

    The shorter side becomes ``short_edge`` unless the longer side would exceed ``max_size``,
    then the longer side becomes ``max_size``; each side is rounded half up, as Detectron2 does.
    """
    scale = short_edge * 1.0 / min(height, width)
    if height < width:
        new_height, new_width = short_edge * 1.0, scale * width
    else:
        new_height, new_width = scale * height, short_edge * 1.0
    if max(new_height, new_width) > max_size:
        scale = max_size * 1.0 / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def load_rgb(source: ImageSource) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from an array, a Pillow image or an image file.

    Files are turned upright by their EXIF orientation, as Detectron2's ``read_image`` does.
    """
    if isinstance(source, np.ndarray):
        image = source
    else:
        if not isinstance(source, Image.Image):
            with Image.open(source) as opened:
                source = ImageOps.exif_transpose(opened)
                source.load()
        image = np.asarray(source.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} "
                         f"{image.shape}.")
    return image


def preprocess(rgb: np.ndarray, meta: Dict[str, Any]) -> np.ndarray:
    """The model input for an RGB uint8 image: resized, in the model's channel order, CHW
    float32 with values 0-255 (normalisation and padding happen inside the model)."""
    spec = meta["input"]
    height, width = rgb.shape[:2]
    new_height, new_width = resize_shortest_edge_shape(
        height, width, spec["resize"]["short_edge"], spec["resize"]["max_size"])
    pixels = rgb[:, :, ::-1] if spec["channel_order"] == "BGR" else rgb
    if (new_height, new_width) != (height, width):
        resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
            (new_width, new_height), Image.BILINEAR)
        pixels = np.asarray(resized)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def _interpolation_matrix(coords: np.ndarray, size: int) -> np.ndarray:
    """(len(coords), size) weights of bilinear sampling at ``coords`` in [-1, 1] (normalised as
    ``grid_sample`` with ``align_corners=False``), zero outside the ``size`` samples."""
    position = ((coords + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)
    low = np.floor(position)
    frac = (position - low).astype(np.float32)
    low = low.astype(np.int64)
    weights = np.zeros((coords.shape[0], size), dtype=np.float32)
    rows = np.arange(coords.shape[0])
    for index, weight in ((low, np.float32(1) - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < size)
        weights[rows[inside], index[inside]] += weight[inside]
    return weights


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int],
                threshold: float = 0.5) -> np.ndarray:
    """Paste (N, M, M) mask probabilities into (N, H, W) boolean masks of the image.

    Each map is stretched over its box (``boxes`` in image pixels, float32) by bilinear
    sampling at pixel centres, as Detectron2's ``paste_masks_in_image`` does on the CPU: only
    pixels within one pixel around the box are computed, everything else is False.
    """
    height, width = image_size
    pasted = np.zeros((masks.shape[0], height, width), dtype=bool)
    boxes = boxes.astype(np.float32)
    for index, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks.astype(np.float32), boxes)):
        left = int(max(math.floor(x0) - 1, 0))
        top = int(max(math.floor(y0) - 1, 0))
        right = int(min(math.ceil(x1) + 1, width))
        bottom = int(min(math.ceil(y1) + 1, height))
        if right <= left or bottom <= top:
            continue
        ys = np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)
        xs = np.arange(left, right, dtype=np.float32) + np.float32(0.5)
        ys = (ys - y0) / (y1 - y0) * np.float32(2) - np.float32(1)
        xs = (xs - x0) / (x1 - x0) * np.float32(2) - np.float32(1)
        rows = _interpolation_matrix(ys, mask.shape[0])
        columns = _interpolation_matrix(xs, mask.shape[1])
        pasted[index, top:bottom, left:right] = (rows @ mask @ columns.T) >= threshold
    return pasted


def postprocess(outputs: Dict[str, np.ndarray], input_size: Tuple[int, int],
                image_size: Tuple[int, int], class_names: Sequence[str],
                mask_threshold: float = 0.5) -> Detections:
    """Detections in image pixels from the raw outputs on the resized input.

    Like Detectron2's ``detector_postprocess``: boxes scaled by output/input size, clipped to the
    image, empty boxes dropped, masks pasted.
    """
    height, width = image_size
    scale_x, scale_y = width / input_size[1], height / input_size[0]
    boxes = outputs["boxes"].astype(np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    masks = None
    if "masks" in outputs:
        probabilities = outputs["masks"][keep]
        probabilities = probabilities.reshape(probabilities.shape[0], *probabilities.shape[-2:])
        masks = paste_masks(probabilities, boxes[keep], image_size, mask_threshold)
    return Detections(boxes[keep], outputs["scores"][keep].astype(np.float32),
                      outputs["classes"][keep].astype(np.int64), masks, list(class_names),
                      (height, width))


def read_meta(model_dir: str) -> Dict[str, Any]:
    """The meta file of an export folder, with a clear error when it is missing or foreign."""
    path = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: pass a folder written by "
                                "tools/export_model.py --format onnx.")
    with open(path) as file:
        meta = json.load(file)
    if meta.get("schema_version") != META_SCHEMA_VERSION:
        raise ModelMismatchError(f"{path}: schema_version {meta.get('schema_version')!r}, this "
                                 f"runner reads {META_SCHEMA_VERSION}; re-export the model.")
    return meta


def dataset_id_mapping(meta: Dict[str, Any], source: str = META_FILE) -> Optional[Dict[int, int]]:
    """The data set id → contiguous class id mapping of an export (``None`` when the export did
    not know one: the records then carry the contiguous class indices).

    Raises:
        ModelMismatchError: the mapping does not give each class exactly one id.
    """
    raw = meta.get("thing_dataset_id_to_contiguous_id")
    if not raw:
        return None
    try:
        return check_dataset_id_mapping(raw, int(meta["num_classes"]), source)
    except ValueError as error:
        raise ModelMismatchError(f"{error} Re-export the model.") from None


def check_model_matches_meta(model_dir: str, meta: Dict[str, Any]) -> str:
    """Check the folder's model file against its meta file; returns the model's path.

    Refuses a model file whose sha256 differs from the one recorded at export (a model from
    another export, whose classes and normalisation may differ) and class names whose number
    differs from the model's number of classes.
    """
    meta_path = os.path.join(model_dir, META_FILE)
    if meta.get("format") != "onnx":
        raise ModelMismatchError(f"{meta_path} describes a {meta.get('format')!r} export; the "
                                 "ONNX runner needs one made with --format onnx.")
    model_path = os.path.join(model_dir, meta["model_file"])
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{model_path} (named in {meta_path}) does not exist.")
    actual = file_sha256(model_path)
    if actual != meta["model_sha256"]:
        raise ModelMismatchError(
            f"{model_path} has sha256 {actual[:12]}..., but {meta_path} was written for a model "
            f"with sha256 {meta['model_sha256'][:12]}...: the model and its class names/input "
            "settings come from different exports. Copy an export folder as a whole, or "
            "re-export with tools/export_model.py.")
    names = meta.get("class_names") or []
    if len(names) != meta["num_classes"]:
        raise ModelMismatchError(
            f"{meta_path}: {len(names)} class names for a model with {meta['num_classes']} "
            "classes; give one name per class (or re-export with --class-names).")
    dataset_id_mapping(meta, meta_path)
    config_name = meta.get("config_file")
    config_path = os.path.join(model_dir, config_name) if config_name else ""
    if config_path and os.path.isfile(config_path) and (
            file_sha256(config_path) != meta.get("config_sha256")):
        raise ModelMismatchError(
            f"{config_path} is not the config {meta['model_file']} was exported with (its "
            f"sha256 differs from the one in {META_FILE}); re-export instead of editing it.")
    return model_path


class OnnxDetector:
    """An exported detector run by ONNX Runtime on the CPU (or the providers given).

    Args:
        model_dir: a folder written by ``tools/export_model.py --format onnx``.
        providers: ONNX Runtime execution providers (default: the CPU).
        num_threads: intra-op threads (default: ONNX Runtime's choice, all cores).
        score_threshold: drop detections below this score (default: keep what the model
            returns, i.e. its config's test threshold).
    """

    def __init__(self, model_dir: str, providers: Optional[Sequence[str]] = None,
                 num_threads: Optional[int] = None, score_threshold: Optional[float] = None):
        onnxruntime = require_extra("export", "onnxruntime", "The ONNX runner")
        self.model_dir = model_dir
        self.meta = read_meta(model_dir)
        model_path = check_model_matches_meta(model_dir, self.meta)
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            model_path, options, providers=list(providers or ["CPUExecutionProvider"]))
        graph_inputs = [i.name for i in self.session.get_inputs()]
        graph_outputs = [o.name for o in self.session.get_outputs()]
        expected_outputs = [o["name"] for o in self.meta["outputs"]]
        if graph_inputs != [self.meta["input"]["name"]] or graph_outputs != expected_outputs:
            raise ModelMismatchError(
                f"{model_path} has inputs {graph_inputs} and outputs {graph_outputs}; "
                f"{META_FILE} describes {[self.meta['input']['name']]} and {expected_outputs}.")
        self.class_names: List[str] = list(self.meta["class_names"])
        # The data set's category ids (results_format's category_id), when the export knew them.
        self.dataset_id_to_contiguous_id = dataset_id_mapping(self.meta)
        self.score_threshold = score_threshold

    def run_model(self, model_input: np.ndarray) -> Dict[str, np.ndarray]:
        """The raw outputs (boxes in input pixels, 28x28 mask probabilities) for a CHW input."""
        values = self.session.run(None, {self.meta["input"]["name"]: model_input})
        return {spec["name"]: value for spec, value in zip(self.meta["outputs"], values)}

    def __call__(self, image: ImageSource) -> Detections:
        """Detect objects in an RGB image (array, Pillow image or file path)."""
        import time

        start = time.perf_counter()
        rgb = load_rgb(image)
        model_input = preprocess(rgb, self.meta)
        after_preprocess = time.perf_counter()
        outputs = self.run_model(model_input)
        after_model = time.perf_counter()
        detections = postprocess(outputs, tuple(model_input.shape[1:]), tuple(rgb.shape[:2]),
                                 self.class_names, self.meta.get("mask_threshold", 0.5))
        if self.score_threshold is not None:
            detections = detections.select(detections.scores >= self.score_threshold)
        detections.timings = {"preprocess": after_preprocess - start,
                              "model": after_model - after_preprocess,
                              "postprocess": time.perf_counter() - after_model}
        return detections
