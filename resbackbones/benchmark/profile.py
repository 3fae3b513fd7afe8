"""Where a CPU training iteration spends its time, by part of the detector.

``tools/benchmark.py --profile-training`` runs a few training iterations (forward, backward, SGD
step; the benchmark's batch and synthetic targets) of our detector and of Detectron2's built-in
twin on the same weights under ``torch.profiler``, after warm-up, and splits each iteration into
the parts of Mask R-CNN.

How the split works, kept simple on purpose:

* **Forward.** Profiler regions (``record_function``) are opened around the forward of the
  modules that make up each part (by module forward hooks) and around the methods that compute
  losses and training targets (wrapped on the instance for the profile only). A part's time is
  its regions' wall time minus that of the regions nested in them, so nothing counts twice and
  the parts add up to the iteration.
* **Backward.** Each backward node the autograd engine runs carries the sequence number of the
  forward op that created it; the forward op lies in one of the regions above, so the node's
  time is charged to ``backward: <that part>``. Gradient accumulation into ``.grad`` and engine
  bookkeeping are ``backward: other``.
* **Optimizer step** is the SGD step; **data/other** is what is left of the iteration:
  image normalisation and padding, proposal bookkeeping between the heads, ``zero_grad``.

Profiled times include the profiler's own cost (a few microseconds per op), so each column also
gives the iteration's median time measured without the profiler, in the same process.
"""
from __future__ import annotations

import datetime
import functools
import logging
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from tabulate import tabulate
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from resbackbones.benchmark.contenders import (
    BACKWARD_REGION,
    FORWARD_REGION,
    OPTIMIZER_REGION,
    Contender,
    detectron2_contender,
    synthetic_image,
)
from resbackbones.benchmark.harness import Timing, describe_device, measure_interleaved
from resbackbones.benchmark.run import (
    REFERENCE,
    BenchmarkSettings,
    _save_random_timm_weights,
    builtin_twin_config,
    resbackbones_config,
)
from resbackbones.weights.detectron2_names import resbackbones_to_detectron2

__all__ = ["PARTS", "TrainingProfile", "TrainingProfileResult", "run_training_profile",
           "profile_training_step", "training_profile_markdown"]

logger = logging.getLogger(__name__)

OURS = "resbackbones"
OURS_BF16 = "resbackbones, bf16 autocast"
REFERENCE_BF16 = "detectron2 built-in, bf16 autocast"

BACKBONE, FPN, RPN, ROI_ALIGN, BOX_HEAD, MASK_HEAD, LOSSES = (
    "backbone forward", "FPN", "RPN", "ROIAlign", "ROI box head", "mask head", "losses")
FORWARD_PARTS = (BACKBONE, FPN, RPN, ROI_ALIGN, BOX_HEAD, MASK_HEAD, LOSSES)
BACKWARD_OTHER, OPTIMIZER, OTHER = "backward: other", "optimizer step", "data/other"
# Every part of an iteration, in the order of the report; their times add up to the iteration.
PARTS = (FORWARD_PARTS + tuple(f"backward: {part}" for part in FORWARD_PARTS)
         + (BACKWARD_OTHER, OPTIMIZER, OTHER))

_STEP_REGION = "train: step"
_PREFIX = "part: "  # profiler regions of this module are named "part: <part>"


@dataclass
class TrainingProfile:
    """One contender's iteration split into :data:`PARTS` (seconds per iteration)."""

    parts: Dict[str, float]
    profiled_step_seconds: float  # one iteration under the profiler (the parts add up to it)
    step: Optional[Timing] = None  # iterations timed without the profiler
    first_loss: float = float("nan")  # total loss of the first profiled iteration


@dataclass
class TrainingProfileResult:
    settings: BenchmarkSettings
    device_name: str
    iterations: int
    profiles: Dict[str, TrainingProfile]
    descriptions: Dict[str, str] = field(default_factory=dict)


def _module_parts(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    """(module, part) for a Detectron2 R-CNN (GeneralizedRCNN or ResBackboneRCNN): the modules
    whose forward makes up each forward part. Nested ones are charged to the innermost."""
    pairs: List[Tuple[nn.Module, str]] = []
    backbone = model.backbone
    if hasattr(backbone, "bottom_up"):
        pairs += [(backbone, FPN), (backbone.bottom_up, BACKBONE)]
    else:
        pairs.append((backbone, BACKBONE))
    if getattr(model, "proposal_generator", None) is not None:
        pairs.append((model.proposal_generator, RPN))
    heads = model.roi_heads
    pairs.append((heads, OTHER))
    for name, part in (("box_pooler", ROI_ALIGN), ("mask_pooler", ROI_ALIGN),
                       ("box_head", BOX_HEAD), ("box_predictor", BOX_HEAD)):
        if getattr(heads, name, None) is not None:
            pairs.append((getattr(heads, name), part))
    mask_head = getattr(heads, "mask_head", None)
    if mask_head is not None:
        # In training the mask head's forward runs its layers, then mask_rcnn_loss (which
        # rasterises the ground-truth masks): what is outside its layers is the loss.
        pairs.append((mask_head, LOSSES))
        pairs += [(layer, MASK_HEAD) for layer in mask_head.children()]
    return pairs


def _method_parts(model: nn.Module) -> List[Tuple[object, str, str]]:
    """(object, method name, part): training targets and losses computed outside the heads'
    layers (anchor and proposal matching and sampling, the RPN and box losses)."""
    candidates = [(model.proposal_generator, "label_and_sample_anchors"),
                  (model.proposal_generator, "losses"),
                  (model.roi_heads, "label_and_sample_proposals"),
                  (getattr(model.roi_heads, "box_predictor", None), "losses")]
    return [(owner, name, LOSSES) for owner, name in candidates
            if owner is not None and hasattr(owner, name)]


@contextmanager
def part_regions(model: nn.Module) -> Iterator[None]:
    """Within the block, the forward of ``model``'s parts runs inside profiler regions named
    ``"part: <part>"``; hooks and method wrappers are removed on exit."""
    open_regions: List[record_function] = []

    def enter(part: str) -> Callable:
        def hook(module, args):
            region = record_function(_PREFIX + part)
            region.__enter__()
            open_regions.append(region)
        return hook

    def leave(module, args, output):
        open_regions.pop().__exit__(None, None, None)

    def wrapped(method: Callable, part: str) -> Callable:
        @functools.wraps(method)
        def run(*args, **kwargs):
            with record_function(_PREFIX + part):
                return method(*args, **kwargs)
        return run

    with ExitStack() as cleanup:
        for module, part in _module_parts(model):
            cleanup.callback(module.register_forward_pre_hook(enter(part)).remove)
            cleanup.callback(module.register_forward_hook(leave).remove)
        for owner, name, part in _method_parts(model):
            setattr(owner, name, wrapped(getattr(owner, name), part))
            cleanup.callback(delattr, owner, name)  # the class's method shows through again
        yield


def _region_part(event) -> Optional[str]:
    if event.name.startswith(_PREFIX):
        return event.name[len(_PREFIX):]
    return {FORWARD_REGION: OTHER, BACKWARD_REGION: BACKWARD_OTHER, OPTIMIZER_REGION: OPTIMIZER,
            _STEP_REGION: OTHER}.get(event.name)


def _enclosing_part(event) -> Optional[str]:
    parent = event.cpu_parent
    while parent is not None:
        part = _region_part(parent)
        if part is not None:
            return part
        parent = parent.cpu_parent
    return None


def split_into_parts(events) -> Tuple[Dict[str, float], float]:
    """Split profiled iterations into :data:`PARTS`: (part -> seconds, seconds of the step
    regions). Exclusive times of regions plus the backward nodes charged to their forward part.
    """
    seconds = {part: 0.0 for part in PARTS}
    step_seconds = 0.0
    forward_part: Dict[int, str] = {}  # sequence number of a forward op -> its part
    backward_nodes = []
    for event in events:
        duration = (event.time_range.end - event.time_range.start) / 1e6
        if event.name == _STEP_REGION:
            step_seconds += duration
        part = _region_part(event)
        if part is not None:
            seconds[part] += duration
            outer = _enclosing_part(event)
            if outer is not None:
                seconds[outer] -= duration
        elif event.name.startswith("autograd::engine::evaluate_function"):
            backward_nodes.append((event, duration))
        elif event.sequence_nr >= 0 and _enclosing_part(event) in FORWARD_PARTS:
            forward_part.setdefault(event.sequence_nr, _enclosing_part(event))
    for event, duration in backward_nodes:
        part = forward_part.get(event.sequence_nr)
        if part is not None and _enclosing_part(event) == BACKWARD_OTHER:
            seconds[f"backward: {part}"] += duration
            seconds[BACKWARD_OTHER] -= duration
    return seconds, step_seconds


def profile_training_step(contender: Contender, iterations: int = 2,
                          seed: int = 0) -> TrainingProfile:
    """Profile ``iterations`` training steps of a warmed-up Detectron2 contender.

    Returns seconds per iteration of each part (each >= 0, adding up to the profiled
    iteration) and the first iteration's loss. The random sampling of anchors and proposals is
    seeded, so contenders on the same weights train on the same samples.
    """
    torch.manual_seed(seed)
    losses = []
    with part_regions(contender.model), profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(iterations):
            with record_function(_STEP_REGION):
                losses.append(contender.train_step())
    seconds, step_seconds = split_into_parts(profiler.events())
    # Rounding of microsecond timestamps can leave -1e-6 where a region has no time of its own.
    parts = {part: max(value, 0.0) / iterations for part, value in seconds.items()}
    return TrainingProfile(parts, step_seconds / iterations, first_loss=losses[0])


def build_training_contenders(settings: BenchmarkSettings, weights_dir: str,
                              include_bf16: bool = False) -> List[Contender]:
    """Ours and the built-in twin on the same weights (and, with ``include_bf16``, both again
    with their training forward under bf16 autocast), before any training step."""
    image = synthetic_image(settings.height, settings.width)
    arch = resbackbones_config(settings, "").MODEL.RESBACKBONE.ARCH
    ours_cfg = resbackbones_config(settings, _save_random_timm_weights(arch, weights_dir))
    ours = detectron2_contender(OURS, ours_cfg, image, settings.train_batch,
                                f"{arch} from timm, {ours_cfg.MODEL.RESBACKBONE.NORM}, channels-"
                                f"last {ours_cfg.MODEL.RESBACKBONE.CHANNELS_LAST}; float32")
    our_state = {k: v.clone() for k, v in ours.model.state_dict().items()}
    twin_state, unconverted = resbackbones_to_detectron2(our_state)
    if unconverted:
        raise RuntimeError(f"{arch}: no Detectron2 name for {unconverted[:3]}")
    twin_cfg = builtin_twin_config(ours_cfg)
    contenders = [ours, detectron2_contender(
        REFERENCE, twin_cfg, image, settings.train_batch,
        "build_resnet_fpn_backbone, same weights; float32", state_dict=twin_state)]
    if include_bf16:
        contenders += [
            detectron2_contender(OURS_BF16, ours_cfg, image, settings.train_batch,
                                 "resbackbones, forward under bf16 autocast (CPUAutocastTrainer, "
                                 "SOLVER.AMP.ENABLED); same weights", state_dict=our_state,
                                 train_autocast=torch.bfloat16),
            detectron2_contender(REFERENCE_BF16, twin_cfg, image, settings.train_batch,
                                 "the built-in twin, forward under the same autocast; same "
                                 "weights", state_dict=twin_state, train_autocast=torch.bfloat16),
        ]
    return contenders


def run_training_profile(settings: BenchmarkSettings, iterations: int = 2,
                         include_bf16: bool = False) -> TrainingProfileResult:
    """Time the training step of each contender without the profiler (interleaved, after
    ``settings.warmup`` warm-up steps), then profile ``iterations`` more of each. CPU only:
    on CUDA the profiler's CPU times would be kernel launches."""
    device = torch.device(settings.device)
    if device.type != "cpu":
        raise ValueError(f"The training profile measures CPU time; got device "
                         f"'{settings.device}'. Use --device cpu.")
    with tempfile.TemporaryDirectory(prefix="resbackbones-profile-") as weights_dir:
        contenders = build_training_contenders(settings, weights_dir, include_bf16)
    # Warm-up (seeded like the profile: contenders on the same weights take the same steps and
    # their first profiled losses compare), the profile, then timing without the profiler.
    profiles = {}
    for contender in contenders:
        logger.info("training profile: warm-up of %s", contender.name)
        torch.manual_seed(0)
        for _ in range(settings.warmup):
            contender.train_step()
    for contender in contenders:
        logger.info("training profile: profiling %s", contender.name)
        profiles[contender.name] = profile_training_step(contender, iterations)
    logger.info("training profile: timing without the profiler")
    timings = measure_interleaved({c.name: c.train_step for c in contenders}, device, 0,
                                  settings.train_repeats)
    for name, timing in timings.items():
        profiles[name].step = timing
    return TrainingProfileResult(settings, describe_device(device), iterations, profiles,
                                 {c.name: c.description for c in contenders})


def training_profile_markdown(result: TrainingProfileResult) -> str:
    """The table of one training profile: ms per iteration and share of each part."""
    settings = result.settings
    names = list(result.profiles)
    rows = []
    for part in PARTS:
        cells = []
        for name in names:
            profile_ = result.profiles[name]
            value = profile_.parts[part]
            cells.append(f"{value * 1e3:.1f} ({value / profile_.profiled_step_seconds:.0%})")
        rows.append([part] + cells)
    rows.append(["**iteration, profiled (sum)**"]
                + [f"{result.profiles[n].profiled_step_seconds * 1e3:.1f}" for n in names])
    if all(result.profiles[n].step for n in names):
        rows.append(["iteration without profiler (median)"]
                    + [f"{result.profiles[n].step.median * 1e3:.1f}" for n in names])
    table = tabulate(rows, headers=["part: ms/iteration (share)"] + names, tablefmt="github")
    lines = [
        f"Training profile: config {settings.model_description()}; input {settings.height}x{settings.width}, batch {settings.train_batch}, "
        f"{result.iterations} profiled iterations per model after {settings.warmup} warm-up "
        f"(forward, backward, SGD step; random weights, synthetic targets); "
        f"{result.device_name}; measured {datetime.date.today().isoformat()}.",
        "", table, ""]
    lines += [f"- **{name}**: {text}" for name, text in result.descriptions.items()]
    reference = result.profiles.get(REFERENCE)
    for name, profile_ in result.profiles.items():
        top = sorted(PARTS, key=lambda part: -profile_.parts[part])[:3]
        text = ", ".join(f"{part} {profile_.parts[part] / profile_.profiled_step_seconds:.0%}"
                         for part in top)
        line = f"- {name}: largest parts {text}; first-iteration loss {profile_.first_loss:.4f}"
        if reference is not None and reference.step and profile_.step and name != REFERENCE:
            line += (f"; {reference.step.median / profile_.step.median:.2f}x the built-in's "
                     "speed (unprofiled medians)")
        lines.append(line + ".")
    return "\n".join(lines)
