"""The benchmark: resbackbones vs Detectron2's built-in ResNet vs torchvision, in one process.

Every figure in a report comes from one run on one machine, and speed is reported as a ratio to
Detectron2's built-in backbone measured in the same run: absolute seconds on a shared machine
are noise, ratios are not (as much).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from safetensors.torch import save_file

from resbackbones.catalog import CATALOG, get_entry
from resbackbones.config import (
    apply_catalog_input_normalization,
    build_config,
    merge_config_checked,
    validate_config,
)
from resbackbones.modeling.serving import enable_compiled_serving
from resbackbones.weights.detectron2_names import resbackbones_to_detectron2
from resbackbones.benchmark.contenders import (
    Contender,
    Exporter,
    detection_agreement,
    detection_counts,
    detectron2_contender,
    exported_contender,
    feature_difference,
    synthetic_image,
    torchvision_contender,
)
from resbackbones.benchmark.harness import (
    Timing,
    count_flops,
    count_parameters,
    describe_device,
    measure_interleaved,
    release_memory,
)

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml"
REFERENCE = "detectron2 built-in"
# Our backbone under Detectron2's own GeneralizedRCNN: separates what the backbone gains from
# what ResBackboneRCNN's head speed-ups add. Training is the same code, so it is not re-timed.
STOCK_HEADS = "resbackbones, stock GeneralizedRCNN"
# With BenchmarkSettings.include_bf16: our detector with INFERENCE_AMP bf16, and the built-in
# twin under the same bf16 autocast (the same-precision reference). Inference only.
OURS_BF16 = "resbackbones bf16"
REFERENCE_BF16 = "detectron2 built-in, bf16 autocast"
# With BenchmarkSettings.include_compiled_serving: our detector with backbone + FPN compiled
# once for the input's padded size (modeling/serving.py, the demos' --compile on). Inference only.
OURS_COMPILED = "resbackbones compiled serving"
INFERENCE_ONLY = (STOCK_HEADS, OURS_BF16, REFERENCE_BF16, OURS_COMPILED)

@dataclass
class BenchmarkSettings:
    """What to measure. Defaults follow COCO's test size and a 2-image CPU training batch."""

    config_file: str = DEFAULT_CONFIG
    arch: Optional[str] = None
    height: int = 800
    width: int = 1333
    warmup: int = 1
    repeats: int = 5
    train_batch: int = 2
    train_repeats: int = 3
    include_training: bool = True
    include_torchvision: bool = True
    include_bf16: bool = False
    include_compiled_serving: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend for that row
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    opts: List[str] = field(default_factory=list)

    def model_description(self) -> str:
        """The config file, architecture and overrides, as every section's first line names them."""
        return (f"`{self.config_file}`"
                + (f", architecture `{self.arch}`" if self.arch else "")
                + (f", overrides `{' '.join(self.opts)}`" if self.opts else ""))


@dataclass
class ComparisonResult:
    settings: BenchmarkSettings
    device_name: str
    inference: Dict[str, Timing]
    training: Dict[str, Timing]
    flops: Dict[str, int]
    parameters: Dict[str, int]
    detections: Dict[str, int]
    descriptions: Dict[str, str]
    agreement_with_reference: Dict[str, float] = field(default_factory=dict)
    feature_difference: Dict[str, float] = field(default_factory=dict)
    warm_up_seconds: Dict[str, float] = field(default_factory=dict)
    # Exported rows: the fraction of resbackbones' (eager) detections each reproduces.
    agreement_with_eager: Dict[str, float] = field(default_factory=dict)


def _save_random_timm_weights(arch: str, directory: str) -> str:
    """A randomly initialised ImageNet-style checkpoint of ``arch`` in timm's naming.

    The benchmark loads it through ``MODEL.RESBACKBONE.WEIGHTS`` exactly as a user loads
    downloaded weights, which is also what allows FrozenBN (frozen BN needs weights).
    """
    model = timm.create_model(get_entry(arch).timm_name, pretrained=False)
    path = os.path.join(directory, f"{arch}_random.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def resbackbones_config(settings: BenchmarkSettings, weights_file: str):
    """The config of our contender: the config file, ``arch`` and ``opts`` applied."""
    arch = ["MODEL.RESBACKBONE.ARCH", settings.arch] if settings.arch else []
    cfg = build_config(settings.config_file, arch)
    if settings.arch:
        apply_catalog_input_normalization(cfg)
    validate_config(merge_config_checked(cfg, "", settings.opts))
    cfg.MODEL.RESBACKBONE.WEIGHTS = weights_file
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = settings.device
    return cfg


def stock_heads_config(ours):
    """``ours`` under Detectron2's own GeneralizedRCNN instead of ResBackboneRCNN."""
    cfg = ours.clone()
    cfg.defrost()
    if cfg.MODEL.META_ARCHITECTURE == "ResBackboneRCNN":
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    return cfg


def builtin_twin_config(ours):
    """Detectron2's built-in R-CNN FPN config with the same network, heads and thresholds."""
    arch = ours.MODEL.RESBACKBONE.ARCH
    twin = get_entry(arch).detectron2_twin
    if twin is None:
        with_twins = [name for name, entry in CATALOG.items() if entry.detectron2_twin]
        raise ValueError(f"Detectron2's built-in ResNet has no twin of '{arch}'; choose one of "
                         f"{with_twins} for a comparison.")
    depth, groups, width_per_group, res2_channels = twin
    cfg = stock_heads_config(ours)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2_channels
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def build_contenders(settings: BenchmarkSettings, weights_dir: str,
                     exporter: Optional[Exporter] = None) -> List[Contender]:
    """Ours, Detectron2's built-in twin and (for R50) torchvision, on the same image; with
    ``exporter``, also ours exported (e.g. ONNX Runtime), same weights."""
    image = synthetic_image(settings.height, settings.width)
    arch_cfg = resbackbones_config(settings, "")
    arch = arch_cfg.MODEL.RESBACKBONE.ARCH
    weights = _save_random_timm_weights(arch, weights_dir)
    ours = resbackbones_config(settings, weights)
    ours_contender = detectron2_contender(
        "resbackbones", ours, image, settings.train_batch,
        f"{arch} from timm, {ours.MODEL.RESBACKBONE.NORM}, speed-ups: channels-last "
        f"{ours.MODEL.RESBACKBONE.CHANNELS_LAST}, BN folding "
        f"{ours.MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE}, inference AMP "
        f"{ours.MODEL.RESBACKBONE.INFERENCE_AMP}; config {settings.config_file}")
    # The built-in twin runs the very same weights, renamed to Detectron2's ResNet names.
    twin_state, unconverted = resbackbones_to_detectron2(ours_contender.model.state_dict())
    if unconverted:
        raise RuntimeError(f"{arch}: no Detectron2 name for {unconverted[:3]}")
    contenders = [
        ours_contender,
        detectron2_contender(
            REFERENCE, builtin_twin_config(ours), image, settings.train_batch,
            "detectron2.modeling.build_resnet_fpn_backbone, same depth/width (stride in 3x3), "
            "same weights as resbackbones", state_dict=twin_state),
    ]
    if ours.MODEL.META_ARCHITECTURE == "ResBackboneRCNN":
        contenders.append(detectron2_contender(
            STOCK_HEADS, stock_heads_config(ours), image, settings.train_batch,
            "the same backbone and weights as resbackbones under Detectron2's GeneralizedRCNN "
            "(without ResBackboneRCNN's head speed-ups)",
            state_dict=ours_contender.model.state_dict()))
    if settings.include_bf16:
        contenders += bf16_contenders(settings, ours, image, twin_state,
                                      ours_contender.model.state_dict())
    if settings.include_compiled_serving:
        contenders.append(compiled_serving_contender(settings, ours, image,
                                                     ours_contender.model.state_dict()))
    if exporter is not None:
        contenders.append(exported_contender(ours_contender, ours, image, exporter,
                                             os.path.join(weights_dir, "exported")))
    if settings.include_torchvision and arch == "resnet50":
        contenders.append(torchvision_contender(image, torch.device(settings.device),
                                                settings.train_batch, ours.MODEL.MASK_ON))
    return contenders


def bf16_contenders(settings: BenchmarkSettings, ours, image, twin_state: dict,
                    our_state: dict) -> List[Contender]:
    """Ours with ``INFERENCE_AMP bf16`` (whole detector) and the built-in twin with its whole
    inference under ``torch.autocast(bf16)``, both on the same weights as the float32 rows."""
    device = torch.device(settings.device)
    bf16 = ours.clone()
    bf16.defrost()
    bf16.MODEL.RESBACKBONE.INFERENCE_AMP = "bf16"
    ours_bf16 = detectron2_contender(
        OURS_BF16, bf16, image, settings.train_batch,
        "resbackbones with INFERENCE_AMP bf16: backbone, FPN, RPN and ROI heads under bf16 "
        "autocast, float32 outputs; same weights", state_dict=our_state)
    reference = detectron2_contender(
        REFERENCE_BF16, builtin_twin_config(ours), image, settings.train_batch,
        "the built-in twin, whole inference under torch.autocast(bfloat16); same weights",
        state_dict=twin_state)
    float32_infer = reference.infer

    def infer_bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return float32_infer()

    reference.infer = infer_bf16
    return [ours_bf16, reference]


def compiled_serving_contender(settings: BenchmarkSettings, ours, image,
                               our_state: dict) -> Contender:
    """Ours with compiled serving for the one bucket the benchmark image needs (warm-up timed);
    same weights as the eager row, so the ratio between the two is the compiler's gain."""
    contender = detectron2_contender(
        OURS_COMPILED, ours, image, settings.train_batch, "", state_dict=our_state)
    divisibility = max(int(contender.model.backbone.size_divisibility), 1)
    bucket = tuple(-(-side // divisibility) * divisibility for side in image.shape[:2])
    start = time.perf_counter()
    wrapper = enable_compiled_serving(contender.model.eval(), [bucket], mode="on",
                                      backend=settings.compile_backend)
    contender.warm_up_seconds = time.perf_counter() - start
    failed = wrapper.reports[bucket].error
    contender.description = (
        f"resbackbones with backbone + FPN compiled by torch.compile (backend "
        f"{settings.compile_backend}, static shapes, bucket {bucket[0]}x{bucket[1]}: "
        "modeling/serving.py, the demos' --compile on); same weights; "
        + (f"compilation FAILED ({failed}), so this row ran eagerly" if failed else
           f"warm-up (compilation) {contender.warm_up_seconds:.1f} s, not in s/img"))
    return contender


def run_comparison(settings: BenchmarkSettings,
                   exporter: Optional[Exporter] = None) -> ComparisonResult:
    """Measure inference (and training) of every contender, interleaved, in this process.

    ``exporter`` adds an inference-only row: ours exported and run by its runtime (see
    :data:`~resbackbones.benchmark.contenders.Exporter`), same weights.
    """
    from tqdm import tqdm

    device = torch.device(settings.device)
    release_memory(device)  # what an earlier comparison in this process left
    with tempfile.TemporaryDirectory(prefix="resbackbones-bench-") as weights_dir:
        contenders = build_contenders(settings, weights_dir, exporter)
    exported = {c.name: c.exported_from for c in contenders if c.exported_from}
    names = [c.name for c in contenders]
    logger.info("benchmarking %s at %dx%d on %s", names, settings.height, settings.width,
                describe_device(device))
    outputs = {c.name: c.infer() for c in contenders}
    detections = {name: detection_counts(out)["detections"] for name, out in outputs.items()}
    same_weights = ("resbackbones", STOCK_HEADS)
    agreement = {name: detection_agreement(out, outputs[REFERENCE])
                 for name, out in outputs.items() if name in same_weights}
    by_name = {c.name: c for c in contenders}
    differences = {name: feature_difference(by_name[name], by_name[REFERENCE])
                   for name in same_weights if name in by_name}
    # The compiled and exported rows compute the same network as their source: FLOP counting
    # would trace it again (compiled) or cannot see inside the runtime (exported).
    flops = {c.name: count_flops(c.infer) for c in contenders
             if c.name != OURS_COMPILED and c.name not in exported}
    if OURS_COMPILED in by_name:
        flops[OURS_COMPILED] = flops["resbackbones"]
    flops.update({name: flops[source] for name, source in exported.items()})
    total = len(contenders) * (settings.warmup + settings.repeats)
    with tqdm(total=total, desc="inference", leave=False) as bar:
        inference = measure_interleaved({c.name: c.infer for c in contenders}, device,
                                        settings.warmup, settings.repeats,
                                        progress=lambda _: bar.update())
    training: Dict[str, Timing] = {}
    if settings.include_training:
        trained = [c for c in contenders
                   if c.name not in INFERENCE_ONLY and c.name not in exported]
        total = len(trained) * (settings.warmup + settings.train_repeats)
        with tqdm(total=total, desc="training", leave=False) as bar:
            training = measure_interleaved({c.name: c.train_step for c in trained}, device,
                                           settings.warmup, settings.train_repeats,
                                           progress=lambda _: bar.update())
    return ComparisonResult(
        settings=settings,
        device_name=describe_device(device),
        inference=inference,
        training=training,
        flops=flops,
        parameters={c.name: count_parameters(c.model) for c in contenders},
        detections=detections,
        descriptions={c.name: c.description for c in contenders},
        agreement_with_reference=agreement,
        feature_difference=differences,
        warm_up_seconds={c.name: c.warm_up_seconds for c in contenders
                         if c.warm_up_seconds is not None},
        agreement_with_eager={name: detection_agreement(outputs[name], outputs[source])
                              for name, source in exported.items()},
    )


@dataclass
class ScalingRow:
    arch: str
    height: int
    width: int
    seconds: float
    spread: float
    peak_memory_bytes: int
    gflops: float


def run_scaling(settings: BenchmarkSettings, archs: Sequence[str],
                sizes: Sequence[Tuple[int, int]], size_arch: str = "resnet50") -> List[ScalingRow]:
    """Inference latency and memory of our detector across architectures and input sizes."""
    from tqdm import tqdm

    device = torch.device(settings.device)
    plan = [(arch, settings.height, settings.width) for arch in archs]
    plan += [(size_arch, h, w) for h, w in sizes if (h, w) != (settings.height, settings.width)]
    rows = []
    for arch, height, width in tqdm(plan, desc="scaling", leave=False):
        with tempfile.TemporaryDirectory(prefix="resbackbones-bench-") as weights_dir:
            one = BenchmarkSettings(**{**settings.__dict__, "arch": arch,
                                       "height": height, "width": width})
            cfg = resbackbones_config(one, _save_random_timm_weights(arch, weights_dir))
            contender = detectron2_contender(arch, cfg, synthetic_image(height, width), 1, "")
        timing = measure_interleaved({arch: contender.infer}, device, settings.warmup,
                                     settings.repeats)[arch]
        rows.append(ScalingRow(arch, height, width, timing.median, timing.spread,
                               timing.peak_memory_bytes, count_flops(contender.infer) / 1e9))
        del contender
        release_memory(device)  # the next size/arch starts from an empty allocator
    return rows
