"""The detectors compared by the benchmark, each wrapped as one inference and one training step.

All contenders see the same synthetic image(s) and targets. With random weights a detector scores
every class near 1/num_classes, below the test threshold, so it would return no detections and
skip its mask head; :func:`bias_towards_one_class` makes every contender detect like a trained
model in a busy image (up to ``DETECTIONS_PER_IMAGE`` boxes, masks pasted for each).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

# Profiler regions around the phases of a Detectron2 contender's training step.
FORWARD_REGION = "train: forward"
BACKWARD_REGION = "train: backward"
OPTIMIZER_REGION = "train: optimizer step"

# Logit added to one foreground class: softmax over 81 classes then gives it about 0.65.
_CLASS_BIAS = 5.0


@dataclass
class Contender:
    """A detector ready to benchmark: call ``infer()``/``train_step()`` for one unit of work."""

    name: str
    model: nn.Module
    infer: Callable[[], object]
    train_step: Callable[[], float]
    description: str
    test_inputs: Optional[list] = None  # Detectron2 contenders: the batched inputs of infer()
    warm_up_seconds: Optional[float] = None  # compiled contenders: start-up compilation
    exported_from: Optional[str] = None  # exported contenders: the eager row they come from


# How the benchmark gets an exported row without knowing how to export (resbackbones.deploy
# does; the two packages are independent siblings): (eager model, its config, the RGB image, a
# scratch folder) -> (row name, description, a callable running the export on an RGB image and
# returning its boxes as an (N, 4) array). tools/benchmark.py --onnx passes the ONNX one.
Exporter = Callable[[nn.Module, Any, np.ndarray, str],
                    Tuple[str, str, Callable[[np.ndarray], np.ndarray]]]


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with a few flat-coloured rectangles on a gradient (deterministic)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                      np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    for box in synthetic_boxes(height, width, seed):
        x0, y0, x1, y1 = box.astype(int)
        image[y0:y1, x0:x1] = rng.integers(0, 255, size=3, dtype=np.uint8)
    return image


def synthetic_boxes(height: int, width: int, seed: int = 0, count: int = 6) -> np.ndarray:
    """``count`` boxes (x0, y0, x1, y1) inside the image, each at least 1/8 of its sides."""
    rng = np.random.default_rng(seed + 1)
    x0 = rng.uniform(0, width * 0.6, count)
    y0 = rng.uniform(0, height * 0.6, count)
    box_w = rng.uniform(width / 8, width * 0.4, count)
    box_h = rng.uniform(height / 8, height * 0.4, count)
    return np.stack([x0, y0, np.minimum(x0 + box_w, width - 1),
                     np.minimum(y0 + box_h, height - 1)], axis=1).astype(np.float32)


def bias_towards_one_class(classifier: nn.Linear, class_index: int) -> None:
    """Make a randomly initialised box classifier score ``class_index`` high everywhere."""
    with torch.no_grad():
        classifier.bias.zero_()
        classifier.bias[class_index] = _CLASS_BIAS


def calibrate_frozen_batchnorm(model: nn.Module, run_forward: Callable[[], object]) -> int:
    """Give every frozen BatchNorm of a random model the statistics of its real input.

    A randomly initialised ResNet whose frozen BN is the identity lets activations grow block
    after block until the RPN regresses boxes off the image and nothing is detected. One forward
    pass in which each frozen BN first records the mean and variance of its own input (layer by
    layer, so each sees already-calibrated inputs) gives the activation scale of a trained
    network. Returns the number of layers calibrated.
    """
    frozen = [m for m in model.modules()
              if type(m).__name__ == "FrozenBatchNorm2d" and hasattr(m, "running_var")]

    def record_statistics(module, args):
        features = args[0].detach().float()
        with torch.no_grad():
            module.running_mean.copy_(features.mean(dim=(0, 2, 3)))
            module.running_var.copy_(features.var(dim=(0, 2, 3)) + 1e-5)
        handles[module].remove()

    handles = {m: m.register_forward_pre_hook(record_statistics) for m in frozen}
    # With grad enabled the backbone runs its own layers, not its BN-folded inference copy.
    with torch.enable_grad():
        run_forward()
    for handle in handles.values():
        handle.remove()
    return len(frozen)


def _detectron2_inputs(image_rgb: np.ndarray, input_format: str, device: torch.device,
                       batch: int, with_targets: bool) -> List[dict]:
    from detectron2.structures import Boxes, Instances, PolygonMasks

    height, width = image_rgb.shape[:2]
    array = image_rgb[:, :, ::-1] if input_format == "BGR" else image_rgb
    tensor = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1))).to(device)
    inputs = []
    for _ in range(batch):
        record = {"image": tensor, "height": height, "width": width}
        if with_targets:
            boxes = synthetic_boxes(height, width)
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(torch.as_tensor(boxes)).to(device)
            instances.gt_classes = torch.arange(len(boxes), device=device) % 3
            instances.gt_masks = PolygonMasks(
                [[np.array([x0, y0, x1, y0, x1, y1, x0, y1])] for x0, y0, x1, y1 in boxes]
            )
            record["instances"] = instances
        inputs.append(record)
    return inputs


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=1e-4, momentum=0.9)


def detectron2_contender(name: str, cfg, image_rgb: np.ndarray, train_batch: int,
                         description: str, state_dict: Optional[dict] = None,
                         train_autocast: Optional[torch.dtype] = None) -> Contender:
    """Any Detectron2 detector built from ``cfg`` (built-in backbone or ours).

    With ``state_dict`` the model loads it (strictly) instead of being calibrated, so that two
    contenders can run the very same network and weights. With ``train_autocast`` the training
    step's forward runs under ``torch.autocast`` of that dtype, as ``CPUAutocastTrainer`` does
    (backward and SGD step as they are; losses summed in float32).
    """
    from detectron2.modeling import build_model

    device = torch.device(cfg.MODEL.DEVICE)
    model = build_model(cfg)
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    elif predictor is not None:
        bias_towards_one_class(predictor.cls_score, 0)
    test_inputs = _detectron2_inputs(image_rgb, cfg.INPUT.FORMAT, device, 1, False)
    train_inputs = _detectron2_inputs(image_rgb, cfg.INPUT.FORMAT, device, train_batch, True)
    optimizer = _sgd(model)

    def infer():
        model.eval()
        with torch.inference_mode():
            return model(test_inputs)

    if state_dict is None:
        calibrate_frozen_batchnorm(model, lambda: model.eval()(test_inputs))

    def train_step() -> float:
        from detectron2.utils.events import EventStorage

        model.train()
        # The regions name the phases for the training profile (benchmark/profile.py); without
        # a profiler running they cost microseconds.
        with record_function(FORWARD_REGION), EventStorage(), torch.autocast(
                device.type, dtype=train_autocast or torch.bfloat16,
                enabled=train_autocast is not None):
            losses = model(train_inputs)  # EventStorage: Detectron2's losses log into it
        total = sum(loss.float() for loss in losses.values())
        optimizer.zero_grad(set_to_none=True)
        with record_function(BACKWARD_REGION):
            total.backward()
        with record_function(OPTIMIZER_REGION):
            optimizer.step()
        return float(total.detach())

    return Contender(name, model, infer, train_step, description, test_inputs)


def torchvision_contender(image_rgb: np.ndarray, device: torch.device, train_batch: int,
                          with_masks: bool = True) -> Contender:
    """torchvision's Mask/Faster R-CNN R50-FPN with FrozenBN, as its pretrained models have it."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, trainable_layers=3)
    detector_class = MaskRCNN if with_masks else FasterRCNN
    height, width = image_rgb.shape[:2]
    # Same test size as the Detectron2 contenders: no resizing inside torchvision.
    model = detector_class(backbone, num_classes=91, min_size=min(height, width),
                           max_size=max(height, width)).to(device)
    bias_towards_one_class(model.roi_heads.box_predictor.cls_score, 1)
    image = torch.as_tensor(image_rgb.transpose(2, 0, 1).copy()).float().div(255).to(device)
    boxes = torch.as_tensor(synthetic_boxes(height, width)).to(device)
    masks = torch.zeros((len(boxes), height, width), dtype=torch.uint8, device=device)
    for index, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[index, y0:y1, x0:x1] = 1
    target = {"boxes": boxes, "labels": torch.arange(len(boxes), device=device) % 3 + 1}
    if with_masks:
        target["masks"] = masks
    optimizer = _sgd(model)

    def infer():
        model.eval()
        with torch.inference_mode():
            return model([image])

    calibrate_frozen_batchnorm(model, lambda: model.eval()([image]))

    def train_step() -> float:
        model.train()
        losses = model([image] * train_batch, [target] * train_batch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return float(total.detach())

    name = "torchvision " + ("maskrcnn" if with_masks else "fasterrcnn") + "_resnet50_fpn"
    return Contender(name, model, infer, train_step,
                     "torchvision.models.detection, ResNet-50 with FrozenBatchNorm2d")


def exported_contender(source: Contender, cfg, image_rgb: np.ndarray, exporter: Exporter,
                       scratch: str) -> Contender:
    """``source``'s weights exported by ``exporter`` and run by its runtime on the same image.

    Inference only. The runtime's whole inference of one image (resize, network, masks pasted
    into the image) is timed, as the eager row's is, so the ratio is what a user of either sees.
    ``model`` is the source's, for the parameter count: the weights are the same.
    """
    name, description, run = exporter(source.model, cfg, image_rgb, scratch)

    def infer():
        return [{"boxes": torch.as_tensor(np.asarray(run(image_rgb), dtype=np.float32))}]

    def no_training() -> float:
        raise RuntimeError(f"{name} is an inference-only row")

    return Contender(name, source.model, infer, no_training, description,
                     exported_from=source.name)


def _boxes(outputs) -> torch.Tensor:
    first = outputs[0]
    if isinstance(first, dict) and "instances" in first:
        return first["instances"].pred_boxes.tensor
    return first["boxes"]


def detection_agreement(outputs, reference_outputs, iou_threshold: float = 0.99) -> float:
    """Fraction of the reference's detections that ``outputs`` reproduces (IoU > threshold)."""
    from torchvision.ops import box_iou

    boxes, reference = _boxes(outputs).float().cpu(), _boxes(reference_outputs).float().cpu()
    if len(reference) == 0:
        return 1.0 if len(boxes) == 0 else 0.0
    if len(boxes) == 0:
        return 0.0
    return float((box_iou(reference, boxes).max(dim=1).values > iou_threshold).float().mean())


def feature_difference(contender: Contender, reference: Contender) -> float:
    """Largest difference between two Detectron2 contenders' FPN features on the reference's
    input, relative to the largest feature magnitude of each level (both in eval mode)."""
    with torch.inference_mode():
        images = reference.model.preprocess_image(reference.test_inputs)
        expected = reference.model.backbone(images.tensor)
        actual = contender.model.backbone(images.tensor)
    return max(float((expected[name] - actual[name]).abs().max() / expected[name].abs().max())
               for name in expected)


def detection_counts(outputs) -> Dict[str, int]:
    """Number of detections in a contender's output (Detectron2 or torchvision format)."""
    first = outputs[0]
    if isinstance(first, dict) and "instances" in first:
        return {"detections": len(first["instances"])}
    return {"detections": int(first["boxes"].shape[0])}
