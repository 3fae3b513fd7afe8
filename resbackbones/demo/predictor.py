"""Load a detector once from a config and weights, and run it on single images with timings.

Why not Detectron2's ``DefaultPredictor`` as is: a demo must say where the time goes
(pre-processing, model, drawing are reported separately), must refuse a checkpoint that does not
fit the model instead of logging the mismatch and showing a half-random model, must know the
class names even when the training dataset is not registered, and must not crash on the default
``MODEL.DEVICE: cuda`` of a CPU-only machine. The pre-processing is the same as
``DefaultPredictor``'s (test-time ``ResizeShortestEdge``, ``INPUT.FORMAT`` channel order), so the
detections are identical; a test checks it.

Pixels: the web page decodes an upload at most at the model's test size (memory on huge uploads;
it draws on that copy), the CLI decodes at full size. Either way :attr:`Prediction.input_size`
is the input's size and the results (``results.coco_results``, ``results.detection_rows``) are
in the input's pixels, as ``DefaultPredictor``'s (``tests/test_results_in_input_pixels.py``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import GeneralizedRCNN, PanopticFPN, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from resbackbones.checkpoint import ResBackboneCheckpointer
from resbackbones.config import build_config
from resbackbones.engine.class_names import read_class_names
from resbackbones.engine.devices import resolve_device
from resbackbones.model_zoo_files import resolve_config_file
from resbackbones.results_format import generic_class_names
from resbackbones.modeling.serving import (
    check_serving_compile,
    default_buckets,
    enable_compiled_serving,
    synchronize,
)

from .images import DecodedImage, decode_image

__all__ = [
    "DemoPredictor",
    "Prediction",
    "SERVING_COMPILE_HELP",
    "model_name_from_config",
    "build_inference_config",
]

logger = logging.getLogger(__name__)

# The --compile option of both demo command lines (tools/gradio_demo.py, tools/demo.py).
SERVING_COMPILE_HELP = (
    "torch.compile backbone + FPN at start-up for a landscape and a portrait input-size bucket "
    "(INPUT.MIN_SIZE_TEST x MAX_SIZE_TEST; inputs are zero-padded to their bucket, so no image "
    "compiles again); the compile seconds per bucket are logged. 'auto': keep the compiled "
    "graph only for buckets where it beat eager in a timing after warm-up; 'on': wherever it "
    "compiles. Any compiler error falls back to eager with a warning. Default 'off': compiling "
    "costs tens of seconds to minutes per bucket on a CPU, which only pays over many images, "
    "and padding to a bucket shifts detections near the bottom/right edges slightly, as "
    "batched inference does.")

def build_inference_config(
    config_file: str,
    opts: Sequence[str] = (),
    device: Optional[str] = None,
    score_threshold: Optional[float] = None,
) -> CfgNode:
    """Build a frozen inference config from a Detectron2 YAML file and command-line overrides.

    Args:
        config_file: a Detectron2 config (any meta-architecture; resbackbones keys allowed): a
            path or a packaged config name (``python -m resbackbones configs``).
        opts: ``KEY VALUE`` overrides, e.g. ``["MODEL.WEIGHTS", "model_final.pth"]``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None`` keeps ``MODEL.DEVICE`` but falls back
            to the CPU (with a warning) when it asks for CUDA on a machine without a GPU; on a
            GPU machine whose CUDA cannot start it raises instead (``resolve_device``).
        score_threshold: if given, the minimum score the model returns (set for ROI heads,
            RetinaNet and panoptic FPN, as in Detectron2's demo).

    Returns:
        The frozen config.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ValueError: ``opts`` has an odd length.
    """
    try:
        config_file = resolve_config_file(config_file)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} Pass a Detectron2 YAML config with --config-file (after `make "
            "quickstart`: output/quickstart/config.yaml).") from None
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd number of items: {list(opts)}")
    cfg = build_config(config_file, opts)
    if device is not None:
        cfg.MODEL.DEVICE = device
    else:  # CPU without a GPU (warning); a GPU whose CUDA cannot start is an error
        cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    if score_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = score_threshold
    cfg.freeze()
    return cfg


def model_name_from_config(config_file: str) -> str:
    """A short display name: the config's file stem, or its folder for a generic ``config.yaml``."""
    stem = os.path.splitext(os.path.basename(config_file))[0]
    if stem == "config":
        parent = os.path.basename(os.path.dirname(os.path.abspath(config_file)))
        return parent or stem
    return stem


@dataclass
class Prediction:
    """The model's output on one image, kept on the CPU.

    Attributes:
        image: the RGB ``uint8`` image the model ran on: the input, or the copy decoding
            downscaled to the test size (:meth:`DemoPredictor.decode`); drawings go on it.
        instances: Detectron2 ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``,
            optionally ``pred_masks``) on the CPU, in the pixels of ``image``. When ``image``
            is a downscaled copy, R-CNN masks also keep the mask head's (N, 1, M, M)
            probabilities as ``pred_roi_masks``, so that the results paste each mask at the
            input's size as ``DefaultPredictor`` does (``results.input_masks``).
        timings: seconds spent per stage (``"preprocess"``, ``"model"``).
        notes: remarks from decoding (downscaled, 16-bit scaled, ...).
        input_size: (height, width) of the input image (default: ``image``'s); results map
            the instances to it (``results.coco_results``, ``results.detection_rows``).
    """

    image: np.ndarray
    instances: Instances
    timings: Dict[str, float] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()
    input_size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.input_size is None:
            self.input_size = (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def downscaled(self) -> bool:
        """Whether ``image`` (and the instances) are smaller than the input image."""
        return tuple(self.image.shape[:2]) != tuple(self.input_size)


class _ReportingCheckpointer(ResBackboneCheckpointer):
    """Keeps the incompatible keys Detectron2 would only log; reads weight files safely and
    accepts Detectron2's own checkpoints and ``detectron2://`` names."""

    incompatible: Any = None

    def _load_model(self, checkpoint: Any) -> Any:
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


class DemoPredictor:
    """Build a model from a config once, load its weights, and predict on single RGB images.

    Args:
        cfg: a config from :func:`build_inference_config`.
        name: display name of the model.
        class_names: overrides the class names (else: the ``class_names.json`` saved by
            training next to ``MODEL.WEIGHTS``, then a ``thing_classes`` list stored in the
            checkpoint, then metadata of ``DATASETS.TEST[0]`` if registered, then
            ``"class_N"``).
        allow_partial_weights: load a checkpoint that misses some of the model's parameters
            (they stay randomly initialised). Off by default: such a model shows garbage.
        dataset_id_to_contiguous_id: the dataset's category ids, for COCO results JSON (else:
            from ``class_names.json`` or the registered ``DATASETS.TEST[0]``).
        compile_serving: "off", "auto" or "on" (``resbackbones.modeling.serving``): compile
            backbone + FPN at start-up for padded input-size buckets; "auto" keeps the compiled
            graph only where it beat eager after warm-up.
        serving_buckets: (height, width) buckets for ``compile_serving`` (default: the
            landscape and portrait shapes of ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``).
    """

    def __init__(
        self,
        cfg: CfgNode,
        name: str = "model",
        class_names: Optional[Sequence[str]] = None,
        allow_partial_weights: bool = False,
        dataset_id_to_contiguous_id: Optional[Mapping[int, int]] = None,
        compile_serving: str = "off",
        serving_buckets: Optional[Sequence[Tuple[int, int]]] = None,
    ):
        check_serving_compile(compile_serving)  # a typo fails before the model is built
        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.name = name
        self.model = build_model(self.cfg)
        self.model.eval()
        checkpoint_extra = self._load_weights(cfg.MODEL.WEIGHTS, allow_partial_weights)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT is {self.input_format!r}; the demo supports RGB, BGR.")
        self.test_size = (int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
        self.resize = T.ResizeShortestEdge([self.test_size[0]] * 2, self.test_size[1])
        self.serving = None  # the BucketedCompiledBackbone with compile_serving on
        if compile_serving != "off":
            buckets = serving_buckets or default_buckets(
                *self.test_size, int(getattr(self.model.backbone, "size_divisibility", 0) or 0))
            logger.info(f"{self.name}: compiling backbone + FPN for input buckets {buckets} "
                        f"(--compile {compile_serving}) ...")
            self.serving = enable_compiled_serving(self.model, buckets, mode=compile_serving)
        weights = cfg.MODEL.WEIGHTS
        self._saved = read_class_names(os.path.dirname(os.path.abspath(weights))) \
            if weights and "://" not in weights else None
        self.class_names = self._resolve_class_names(class_names, checkpoint_extra)
        self.metadata = self._build_metadata(dataset_id_to_contiguous_id)

    @property
    def device(self) -> str:
        """The device the model runs on, with the GPU's name when there is one."""
        device = torch.device(self.cfg.MODEL.DEVICE)
        if device.type == "cuda":
            return f"{device} ({torch.cuda.get_device_name(device)})"
        return str(device)

    def _load_weights(self, weights: str, allow_partial: bool) -> Dict[str, Any]:
        if not weights:
            logger.warning(f"{self.name}: MODEL.WEIGHTS is empty, the model has random weights "
                           "and its detections are meaningless.")
            return {}
        if "://" not in weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"MODEL.WEIGHTS file {weights!r} does not exist. Train a model first "
                    "(`make quickstart` writes output/quickstart/model_final.pth) or pass "
                    "--opts MODEL.WEIGHTS /path/to/model_final.pth."
                )
            if os.path.getsize(weights) < 1024:
                raise ValueError(f"MODEL.WEIGHTS file {weights!r} is only "
                                 f"{os.path.getsize(weights)} bytes: not a checkpoint (an "
                                 "interrupted download or an LFS pointer?).")
        checkpointer = _ReportingCheckpointer(self.model, allow_partial_weights=allow_partial)
        extra = checkpointer.load(weights) or {}
        incompatible = checkpointer.incompatible
        problems = []
        if incompatible is not None:
            if incompatible.missing_keys:
                problems.append(f"{len(incompatible.missing_keys)} parameters missing "
                                f"(e.g. {', '.join(incompatible.missing_keys[:3])})")
            if incompatible.incorrect_shapes:
                problems.append(f"{len(incompatible.incorrect_shapes)} with a different shape "
                                f"(e.g. {incompatible.incorrect_shapes[0][0]})")
        if problems:
            message = (f"MODEL.WEIGHTS {weights!r} does not fit the model built from the config: "
                       f"{'; '.join(problems)}. Use the config the checkpoint was trained with.")
            if not allow_partial:
                raise ValueError(message)
            logger.warning(message)
        return extra

    def _resolve_class_names(self, explicit: Optional[Sequence[str]],
                             checkpoint_extra: Dict[str, Any]) -> List[str]:
        num_classes = _num_classes(self.cfg)
        candidates = []
        if explicit:
            candidates.append(("--class-names", list(explicit)))
        if self._saved is not None:
            candidates.append((self._saved.path, list(self._saved.thing_classes)))
        stored = checkpoint_extra.get("thing_classes")
        if stored is None and isinstance(checkpoint_extra.get("metadata"), dict):
            stored = checkpoint_extra["metadata"].get("thing_classes")
        if stored:
            candidates.append(("the checkpoint", [str(n) for n in stored]))
        # Last resort, for models trained before class_names.json: a registered dataset.
        if len(self.cfg.DATASETS.TEST):
            names = MetadataCatalog.get(self.cfg.DATASETS.TEST[0]).get("thing_classes", None)
            if names:
                candidates.append((f"metadata of {self.cfg.DATASETS.TEST[0]!r}", list(names)))
        for source, names in candidates:
            if num_classes is None or len(names) == num_classes:
                return names
            logger.warning(f"{self.name}: {len(names)} class names from {source} but the model "
                           f"has {num_classes} classes; ignoring them.")
        return generic_class_names(num_classes or 0)

    def _build_metadata(self, mapping: Optional[Mapping[int, int]]) -> Metadata:
        metadata = Metadata(name=f"resbackbones_demo_{self.name}")
        metadata.thing_classes = list(self.class_names)
        if mapping is None and self._saved is not None and \
                self._saved.thing_classes == self.class_names:
            mapping = self._saved.thing_dataset_id_to_contiguous_id or None
        if mapping is not None:
            if len(mapping) != len(self.class_names):
                raise ValueError(f"{self.name}: {len(mapping)} dataset category ids for "
                                 f"{len(self.class_names)} class names.")
            metadata.thing_dataset_id_to_contiguous_id = dict(mapping)
        elif len(self.cfg.DATASETS.TEST):
            source = MetadataCatalog.get(self.cfg.DATASETS.TEST[0])
            mapping = source.get("thing_dataset_id_to_contiguous_id", None)
            if mapping and len(mapping) == len(self.class_names):
                metadata.thing_dataset_id_to_contiguous_id = dict(mapping)
        return metadata

    def decode(self, source: Any, name: str = "The file", full_size: bool = False) -> DecodedImage:
        """Decode an upload or file for this model.

        Args:
            source: bytes, a path or a Pillow image.
            name: how error messages call it.
            full_size: keep the input's size (the CLI: drawings in the input's pixels, the
                model's input exactly ``DefaultPredictor``'s). By default anything larger than
                the test size is downscaled to it while decoding (the web page: a huge upload
                never becomes a huge array); the model sees the same size either way, and
                ``original_size`` lets the results report in the input's pixels.
        """
        if full_size:
            return decode_image(source, name=name)
        min_size, max_size = self.test_size
        return decode_image(source, max_size=(min_size, max_size or 1333), name=name)

    @torch.no_grad()
    def predict(self, image: Union[np.ndarray, DecodedImage]) -> Prediction:
        """Run the model on one RGB image.

        Args:
            image: an RGB ``uint8`` array (H, W, 3) or a :class:`DecodedImage`.

        Returns:
            The prediction, with instances on the CPU in the pixels of the array given (for a
            downscaled :class:`DecodedImage`: of its ``rgb``; ``input_size`` is then its
            ``original_size``).
        """
        start = time.perf_counter()
        notes: Tuple[str, ...] = ()
        input_size = None
        if isinstance(image, DecodedImage):
            width, height = image.original_size
            notes, image, input_size = image.notes, image.rgb, (int(height), int(width))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected an RGB uint8 array (H, W, 3), got {image.dtype} "
                             f"{image.shape}.")
        height, width = image.shape[:2]
        model_input = image[:, :, ::-1] if self.input_format == "BGR" else image
        model_input = self.resize.get_transform(model_input).apply_image(model_input)
        tensor = torch.as_tensor(model_input.astype("float32").transpose(2, 0, 1))
        tensor = tensor.to(self.cfg.MODEL.DEVICE)
        synchronize(torch.device(self.cfg.MODEL.DEVICE))
        preprocess = time.perf_counter() - start
        start = time.perf_counter()
        outputs = self._run_model(tensor, height, width,
                                  downscaled=input_size not in (None, (height, width)))
        synchronize(torch.device(self.cfg.MODEL.DEVICE))
        model_time = time.perf_counter() - start
        if "instances" not in outputs:
            raise ValueError(f"{self.name}: the model returned {sorted(outputs)}, not instances; "
                             "the demo draws instance detections only.")
        instances = outputs["instances"].to("cpu")
        return Prediction(image=image, instances=instances, notes=notes,
                          timings={"preprocess": preprocess, "model": model_time},
                          input_size=input_size)

    def _run_model(self, tensor: torch.Tensor, height: int, width: int,
                   downscaled: bool) -> Dict[str, Any]:
        """The model's outputs in (height, width) pixels. On a downscaled copy an R-CNN's mask
        probabilities are kept before Detectron2's postprocess pastes them at the copy's size:
        pasted at the input's size later they are ``DefaultPredictor``'s masks, where a pasted
        copy-size mask scaled up would move every outline by up to the scale factor."""
        inputs = [{"image": tensor, "height": height, "width": width}]
        if not downscaled or not isinstance(self.model, GeneralizedRCNN) or isinstance(
                self.model, PanopticFPN):
            return self.model(inputs)[0]
        raw = self.model.inference(inputs, do_postprocess=False)[0]
        if raw.has("pred_masks"):
            raw.pred_roi_masks = raw.pred_masks
        return {"instances": detector_postprocess(raw, height, width)}

    def __call__(self, source: Any, name: str = "The file", full_size: bool = False
                 ) -> Prediction:
        """Decode ``source`` (bytes, path or Pillow image; ``full_size``: see :meth:`decode`)
        and predict, timing both."""
        start = time.perf_counter()
        decoded = self.decode(source, name=name, full_size=full_size)
        decode_time = time.perf_counter() - start
        prediction = self.predict(decoded)
        prediction.timings["preprocess"] += decode_time
        return prediction


def _is_retinanet(meta_architecture: str) -> bool:
    """True for RetinaNet and any subclass registered in ``META_ARCH_REGISTRY``
    (``ResBackboneRetinaNet``): their class count is ``MODEL.RETINANET.NUM_CLASSES``."""
    from detectron2.modeling import META_ARCH_REGISTRY
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    if meta_architecture not in META_ARCH_REGISTRY:
        return False
    registered = META_ARCH_REGISTRY.get(meta_architecture)
    return isinstance(registered, type) and issubclass(registered, RetinaNet)


def _num_classes(cfg: CfgNode) -> Optional[int]:
    if _is_retinanet(cfg.MODEL.META_ARCHITECTURE):
        return int(cfg.MODEL.RETINANET.NUM_CLASSES)
    if "ROI_HEADS" in cfg.MODEL:
        return int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    return None
