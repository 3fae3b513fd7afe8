#!/usr/bin/env python
"""One-shot GPU check: everything this project can only verify on a CUDA machine, in one run of
under 8 minutes on one GPU, ending in one summary table.

Checks (each row: what, result, pass/fail/info):
  environment     torch/CUDA/cuDNN/driver, GPU; torchvision's CUDA NMS and ROIAlign vs CPU
  device rule     MODEL.DEVICE cuda resolves to cuda; with CUDA_VISIBLE_DEVICES="" it fails
  tests           the GPU-readiness and scale-out unit tests (no test is CUDA-marked yet)
  train AMP       Mask R-CNN R50-FPN, 800x1333, batch 2, fp16 AMP, synthetic data, --iters
                  iterations for channels-last auto/off x FrozenBN/GN: s/iter, peak memory,
                  every loss finite
  BN folding      folded vs unfolded backbone features; memory after eval and after train()
  bf16 inference  INFERENCE_AMP bf16 vs fp32: detections agreement, s/image
  compile         MODEL.RESBACKBONE.COMPILE over 10 input sizes: first/next call, graphs built
  demo timing     DemoPredictor's model time vs CUDA events around the same calls
  DDP             NCCL world size 1: CUDA module (works) vs CPU module (the 19.3 crash), Gloo
  NCCL 2 procs    tools/train_net.py --num-gpus 2 (only with 2+ GPUs)
  train_net       tools/train_net.py, 20 iterations with SOLVER.AMP.ENABLED on synthetic data
  benchmark       tools/benchmark.py --device cuda (peak memory per contender), short repeats

Without CUDA it exits at once with status 2 and a message (``--smoke`` runs the same code on the
CPU with tiny sizes, to test the script itself).

How to run it on a lent GPU machine through the ``device`` tool (the machine has torch,
torchvision, timm, safetensors, psutil, pytest, tabulate, matplotlib, but no Detectron2 and some
of its dependencies; they travel as wheels):

  here, once:   echo /.whl/ >> .git/info/exclude && make gpu-check-wheels
                (tools/gpu_check.py --prepare-wheels .whl: this project's Detectron2 wheel
                and its pinned pure-Python and manylinux dependencies, about 2 MiB)
  device run:   command = "python3 -m pip install -q --no-index --no-deps --no-compile
                  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
                  && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit;
                  python3 tools/gpu_check.py --out $OUT"
                carry = [".whl"], timeout_s = 560

The table is printed and written to $OUT/gpu_check.md (+ gpu_check.json, benchmark_cuda.md and
the logs of the subprocesses), which come back with the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
R50_CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml"
QUICK_CONFIG = "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"
NO_CUDA_MESSAGE = ("gpu_check: CUDA is not available here (torch {torch}, CUDA build {cuda}); "
                   "this check needs a CUDA GPU. Run it on a GPU machine (see the docstring of "
                   "tools/gpu_check.py), or pass --smoke to exercise it on the CPU.")


@dataclass
class Row:
    check: str
    result: str
    status: str  # "pass", "FAIL", "info", "skip"
    seconds: float = 0.0


@dataclass
class Context:
    device: str
    smoke: bool
    iters: int
    out: Path
    work: Path
    height: int
    width: int
    deadline: float

    def opts(self, *extra: str) -> List[str]:
        return ["MODEL.DEVICE", self.device, "MODEL.WEIGHTS", "", *extra]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _memory_gib(device: str, peak: bool = False) -> float:
    import torch

    if not device.startswith("cuda"):
        return float("nan")
    value = torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(
        device)
    return value / 2 ** 30


def _random_weights(arch: str, directory: Path) -> str:
    """Random timm ImageNet-style weights: FrozenBN needs a weights file to load."""
    import timm
    from safetensors.torch import save_file

    from resbackbones.catalog import get_entry

    path = directory / f"{arch}_random.safetensors"
    if not path.exists():
        model = timm.create_model(get_entry(arch).timm_name, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _r50_cfg(ctx: Context, norm: str, *extra: str):
    from resbackbones.config import build_config

    weights = _random_weights("resnet50", ctx.work) if norm == "FrozenBN" else ""
    opts = ctx.opts("MODEL.RESBACKBONE.NORM", norm, "MODEL.RESBACKBONE.WEIGHTS", weights,
                    "INPUT.MIN_SIZE_TEST", str(ctx.height), "INPUT.MAX_SIZE_TEST",
                    str(ctx.width), *extra)
    if ctx.smoke:
        opts += ["MODEL.RESBACKBONE.ARCH", "resnet18"]
        opts[opts.index("MODEL.RESBACKBONE.WEIGHTS") + 1] = (
            _random_weights("resnet18", ctx.work) if norm == "FrozenBN" else "")
    return build_config(str(REPO / R50_CONFIG), opts)


def _inputs(ctx: Context, batch: int, with_targets: bool):
    import numpy as np
    import torch
    from detectron2.structures import Boxes, Instances, PolygonMasks

    from resbackbones.benchmark.contenders import synthetic_boxes, synthetic_image

    image = synthetic_image(ctx.height, ctx.width)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).to(ctx.device)
    records = []
    for _ in range(batch):
        record = {"image": tensor, "height": ctx.height, "width": ctx.width}
        if with_targets:
            boxes = synthetic_boxes(ctx.height, ctx.width)
            instances = Instances((ctx.height, ctx.width))
            instances.gt_boxes = Boxes(torch.as_tensor(boxes)).to(ctx.device)
            instances.gt_classes = torch.arange(len(boxes), device=ctx.device) % 3
            instances.gt_masks = PolygonMasks([[np.array([x0, y0, x1, y0, x1, y1, x0, y1])]
                                               for x0, y0, x1, y1 in boxes])
            record["instances"] = instances
        records.append(record)
    return records


def _detecting_model(cfg):
    """A random-weight detector that detects (calibrated frozen BN, biased classifier)."""
    from detectron2.modeling import build_model

    from resbackbones.benchmark.contenders import (
        bias_towards_one_class,
        calibrate_frozen_batchnorm,
    )

    model = build_model(cfg).eval()
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if predictor is not None:
        bias_towards_one_class(predictor.cls_score, 0)
    return model, calibrate_frozen_batchnorm


# --- the checks: each returns rows ------------------------------------------------------------

def check_environment(ctx: Context) -> List[Row]:
    import torch
    import torchvision
    from torchvision.ops import nms, roi_align

    rows = []
    if ctx.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(ctx.device)
        driver = "?"
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception as error:  # nvidia-smi missing: report, go on
            driver = f"nvidia-smi failed: {error}"
        rows.append(Row("GPU / driver / CUDA", f"{props.name}, {props.total_memory / 2**30:.0f} "
                        f"GiB, {torch.cuda.device_count()} GPU(s); driver {driver}; torch "
                        f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                        f"{torch.backends.cudnn.version()}), torchvision {torchvision.__version__}",
                        "info"))
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(2000, 4, generator=generator) * 500
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.rand(2000, generator=generator)
    features = torch.rand(2, 64, 50, 76, generator=generator)
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=generator).float(),
                      boxes[:300] / 10], dim=1)
    keep_cpu = nms(boxes, scores, 0.5)
    keep_dev = nms(boxes.to(ctx.device), scores.to(ctx.device), 0.5).cpu()
    pooled_cpu = roi_align(features, rois, (7, 7), 0.25, 2, aligned=True)
    pooled_dev = roi_align(features.to(ctx.device), rois.to(ctx.device), (7, 7), 0.25, 2,
                           aligned=True).cpu()
    difference = float((pooled_cpu - pooled_dev).abs().max())
    same = torch.equal(keep_cpu, keep_dev) and difference < 1e-4
    rows.append(Row(f"torchvision ops on {ctx.device}", f"NMS keeps the same {len(keep_cpu)} "
                    f"boxes: {torch.equal(keep_cpu, keep_dev)}; ROIAlign max |diff| vs CPU "
                    f"{difference:.1e}", "pass" if same else "FAIL"))
    return rows


def check_device_rule(ctx: Context) -> List[Row]:
    from resbackbones.engine.devices import nvidia_gpu_evidence, resolve_device

    if not ctx.device.startswith("cuda"):
        return [Row("device rule", "needs CUDA", "skip")]
    resolved = resolve_device("cuda", world_size=8)
    script = ("from resbackbones.engine.devices import resolve_device; "
              "print(resolve_device('cuda'))")
    hidden = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    evidence = nvidia_gpu_evidence()
    refused = hidden.returncode != 0 and "CUDA_VISIBLE_DEVICES" in hidden.stderr
    ok = resolved == "cuda" and (refused or evidence is None)
    detail = ("refused with the cause" if refused else
              f"fell back to {hidden.stdout.strip() or '?'} (no NVIDIA evidence path found)"
              if evidence is None else f"NOT refused: {hidden.stderr[-300:]}")
    return [Row("device rule", f"MODEL.DEVICE cuda -> {resolved}; GPU evidence {evidence}; "
                f"CUDA_VISIBLE_DEVICES='': {detail}", "pass" if ok else "FAIL")]


def check_tests(ctx: Context) -> List[Row]:
    if ctx.smoke:
        return [Row("unit tests", "skipped in --smoke (CI runs them)", "skip")]
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
               "tests/test_gpu_readiness.py", "tests/test_distributed.py"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    (ctx.out / "tests.log").write_text(result.stdout + result.stderr)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    return [Row("unit tests on the GPU machine", f"no test is CUDA-marked; GPU-readiness and "
                f"scale-out tests: {summary}", "pass" if result.returncode == 0 else "FAIL")]


def _train_steps(ctx: Context, cfg, iterations: int) -> Dict[str, float]:
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    model = build_model(cfg)
    model.train()
    inputs = _inputs(ctx, 2, True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002,
                                momentum=0.9)
    cuda = ctx.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    dtype = torch.float16 if cuda else torch.bfloat16
    losses, seconds = [], []
    warmup = 3
    with EventStorage():
        for step in range(warmup + iterations):
            if step == warmup and cuda:
                torch.cuda.reset_peak_memory_stats(ctx.device)
            _sync(ctx.device)
            start = time.perf_counter()
            with torch.autocast(ctx.device.split(":")[0], dtype=dtype):
                loss_dict = model(inputs)
            total = sum(loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            _sync(ctx.device)
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
            losses.append(float(total.detach()))
    peak = _memory_gib(ctx.device, peak=True)
    del model, optimizer
    return {"s_per_iter": statistics.median(seconds), "peak_gib": peak,
            "finite": all(math.isfinite(v) for v in losses), "last_loss": losses[-1]}


def check_train_amp(ctx: Context) -> List[Row]:
    from resbackbones.benchmark.harness import release_memory

    rows = []
    for norm in ("FrozenBN", "GN"):
        for channels_last in ("auto", "off"):
            start = time.perf_counter()
            cfg = _r50_cfg(ctx, norm, "MODEL.RESBACKBONE.CHANNELS_LAST", channels_last)
            result = _train_steps(ctx, cfg, ctx.iters)
            release_memory(__import__("torch").device(ctx.device))
            rows.append(Row(
                f"train AMP {cfg.MODEL.RESBACKBONE.ARCH} {norm}, channels-last {channels_last}",
                f"{ctx.iters} it at {ctx.height}x{ctx.width}, batch 2: "
                f"{result['s_per_iter']:.4f} s/iter, peak {result['peak_gib']:.2f} GiB, losses "
                f"finite: {result['finite']} (last {result['last_loss']:.3f})",
                "pass" if result["finite"] else "FAIL", time.perf_counter() - start))
    return rows


def check_bn_folding(ctx: Context) -> List[Row]:
    import torch
    from detectron2.modeling import build_model

    folded_cfg = _r50_cfg(ctx, "FrozenBN", "MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE", "True")
    plain_cfg = _r50_cfg(ctx, "FrozenBN", "MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE", "False")
    folded, calibrate = _detecting_model(folded_cfg)
    inputs = _inputs(ctx, 1, False)
    calibrate(folded, lambda: folded(inputs))
    plain = build_model(plain_cfg).eval()
    plain.load_state_dict(folded.state_dict())
    _sync(ctx.device)
    before = _memory_gib(ctx.device)
    with torch.no_grad():
        images = folded.preprocess_image(inputs).tensor
        expected = plain.backbone(images)
        actual = folded.backbone(images)
    _sync(ctx.device)
    after_eval = _memory_gib(ctx.device)
    folded.train()
    __import__("gc").collect()
    _sync(ctx.device)
    after_train = _memory_gib(ctx.device)
    difference = max(float((expected[k] - actual[k]).abs().max() / expected[k].abs().max())
                     for k in expected)
    return [Row("BN folding on vs off", f"FPN features max rel. diff {difference:.1e}; "
                f"allocated {before:.2f} GiB before eval, {after_eval:.2f} after eval, "
                f"{after_train:.2f} after train() (the folded copy should be freed)",
                "pass" if difference < 1e-3 else "FAIL")]


def _timed_calls(ctx: Context, model, inputs, calls: int):
    """The last outputs and the seconds of each of ``calls`` inference calls."""
    import torch

    outputs, seconds = None, []
    for _ in range(calls):
        _sync(ctx.device)
        start = time.perf_counter()
        with torch.no_grad():
            outputs = model(inputs)
        _sync(ctx.device)
        seconds.append(time.perf_counter() - start)
    return outputs, seconds


def _time_inference(ctx: Context, model, inputs, repeats: int = 5):
    """Outputs and the median seconds per call after one warm-up call."""
    outputs, seconds = _timed_calls(ctx, model, inputs, repeats + 1)
    return outputs, statistics.median(seconds[1:])


def check_bf16_inference(ctx: Context) -> List[Row]:
    from resbackbones.benchmark.contenders import detection_agreement

    fp32_cfg = _r50_cfg(ctx, "FrozenBN", "MODEL.RESBACKBONE.INFERENCE_AMP", "off")
    bf16_cfg = _r50_cfg(ctx, "FrozenBN", "MODEL.RESBACKBONE.INFERENCE_AMP", "bf16")
    fp32, calibrate = _detecting_model(fp32_cfg)
    inputs = _inputs(ctx, 1, False)
    calibrate(fp32, lambda: fp32(inputs))
    bf16, _ = _detecting_model(bf16_cfg)
    bf16.load_state_dict(fp32.state_dict())
    reference, fp32_s = _time_inference(ctx, fp32, inputs)
    outputs, bf16_s = _time_inference(ctx, bf16, inputs)
    agreement = detection_agreement(outputs, reference, iou_threshold=0.9)
    count = len(reference[0]["instances"])
    return [Row("bf16 vs fp32 inference", f"{count} detections, {agreement:.0%} matched at IoU "
                f"0.9; {fp32_s:.4f} s fp32, {bf16_s:.4f} s bf16 per image",
                "pass" if count and agreement >= 0.8 else "FAIL")]


def check_compile(ctx: Context) -> List[Row]:
    import torch

    cfg = _r50_cfg(ctx, "FrozenBN", "MODEL.RESBACKBONE.COMPILE", "True")
    model, calibrate = _detecting_model(cfg)
    calibrate(model, lambda: model(_inputs(ctx, 1, False)))
    base_h, base_w = ctx.height, ctx.width
    sizes = [(base_h - 32 * i, base_w - 48 * i) for i in range(10)]
    counters = torch._dynamo.utils.counters
    graphs_before = counters["stats"]["unique_graphs"]
    firsts, seconds_, done = [], [], 0
    limit = time.time() + (30 if ctx.smoke else 120)
    for height, width in sizes:
        if time.time() > limit:
            break
        ctx_size = Context(**{**asdict(ctx), "height": height, "width": width})
        inputs = _inputs(ctx_size, 1, False)
        _, seconds = _timed_calls(ctx_size, model, inputs, 3)
        firsts.append(seconds[0])
        seconds_.append(statistics.median(seconds[1:]))
        done += 1
    recompiles = sum(counters["recompiles"].values())
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    return [Row("compile over input sizes", f"{done}/{len(sizes)} sizes in the time cap; first "
                f"call {statistics.median(firsts):.2f} s (max {max(firsts):.2f}), next calls "
                f"{statistics.median(seconds_):.4f} s; graphs compiled {graphs}, recompiles "
                f"{recompiles}",
                "info" if done else "FAIL")]


def check_demo_timing(ctx: Context) -> List[Row]:
    import torch

    from resbackbones.benchmark.contenders import synthetic_image
    from resbackbones.demo.predictor import DemoPredictor

    predictor = DemoPredictor(_r50_cfg(ctx, "GN"))
    image = synthetic_image(ctx.height, ctx.width)
    predictor.predict(image)
    reported, measured = [], []
    for _ in range(5):
        if ctx.device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            start.record()
            prediction = predictor.predict(image)
            end.record()
            end.synchronize()
            measured.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            prediction = predictor.predict(image)
            measured.append(time.perf_counter() - began)
        reported.append(prediction.timings["model"])
    ratio = statistics.median(reported) / statistics.median(measured)
    return [Row("demo timing vs CUDA events", f"model {statistics.median(reported):.4f} s "
                f"reported, whole predict() {statistics.median(measured):.4f} s by events "
                f"(ratio {ratio:.2f}; must be <= 1 and near it)",
                "pass" if 0.5 < ratio <= 1.05 else "FAIL")]


# One process: its own store on a port the system picks; it leaves the group the project's one
# way (leave_process_group, in finally: a group left to interpreter shutdown can abort it).
DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from resbackbones.engine.distributed import leave_process_group
backend, module_device = sys.argv[1], sys.argv[2]
store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True)
dist.init_process_group(backend, store=store, rank=0, world_size=1)
finished = False
try:
    model = nn.Linear(8, 2).to(module_device)
    ddp = DDP(model, device_ids=[0] if module_device == "cuda" else None)
    ddp(torch.ones(4, 8, device=module_device)).sum().backward()
    finished = True
    print("OK")
finally:
    leave_process_group(wait_for_others=finished)
"""


def check_ddp(ctx: Context) -> List[Row]:
    cases = [("gloo", "cpu")]
    if ctx.device.startswith("cuda"):
        cases = [("nccl", "cuda"), ("nccl", "cpu"), ("gloo", "cpu")]
    parts, ok = [], True
    for backend, module_device in cases:
        result = subprocess.run([sys.executable, "-c", DDP_SCRIPT, backend, module_device],
                                capture_output=True, text=True, timeout=120)
        works = result.returncode == 0 and "OK" in result.stdout
        error = (result.stderr.strip().splitlines() or ["?"])[-1][:80]
        parts.append(f"{backend}+{module_device}: {'ok' if works else 'fails (' + error + ')'}")
        # What the project relies on: NCCL for CUDA modules, Gloo for CPU modules.
        if (backend, module_device) != ("nccl", "cpu"):
            ok = ok and works
    return [Row("DDP world size 1", "; ".join(parts), "pass" if ok else "FAIL")]


def _synthetic_flags(ctx: Context) -> List[str]:
    from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths

    root = str(ctx.work / "synthetic")
    generate_synthetic_coco(root, SyntheticSpec(num_train=16, num_val=4, seed=0))
    flags = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(root, split)
        flags += ["--dataset", f"gpu_check_{split}={json_file}:{image_root}"]
    return flags


def _train_net(ctx: Context, name: str, extra_flags: List[str], iterations: int) -> Row:
    output = ctx.work / name
    command = [sys.executable, "tools/train_net.py", *extra_flags, "--config-file", QUICK_CONFIG,
               *_synthetic_flags(ctx), "DATASETS.TRAIN", "('gpu_check_train',)",
               "DATASETS.TEST", "('gpu_check_val',)", "SOLVER.MAX_ITER", str(iterations),
               "SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", ctx.device,
               "OUTPUT_DIR", str(output)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    (ctx.out / f"{name}.log").write_text(result.stdout + result.stderr)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return Row(name, f"exit {result.returncode}: "
                   f"{(result.stderr.strip().splitlines() or ['?'])[-1][:150]}", "FAIL", wall)
    records = [json.loads(line) for line in open(output / "metrics.json")]
    losses = [r for r in records if "total_loss" in r]
    evaluation = next((r for r in reversed(records) if "bbox/AP" in r), {})
    finite = all(math.isfinite(r["total_loss"]) for r in losses)
    return Row(name, f"{iterations} it, {losses[-1].get('time', float('nan')):.3f} s/iter, "
               f"last loss {losses[-1]['total_loss']:.3f}, box AP "
               f"{evaluation.get('bbox/AP', float('nan')):.1f}, {wall:.0f} s wall",
               "pass" if finite else "FAIL", wall)


def check_train_net(ctx: Context) -> List[Row]:
    return [_train_net(ctx, "train_net_amp", [], 2 if ctx.smoke else 20)]


def check_two_gpus(ctx: Context) -> List[Row]:
    import torch

    if not ctx.device.startswith("cuda") or torch.cuda.device_count() < 2:
        return [Row("NCCL, 2 processes", "needs 2+ GPUs", "skip")]
    return [_train_net(ctx, "train_net_2gpus", ["--num-gpus", "2"], 10)]


def check_benchmark(ctx: Context) -> List[Row]:
    if ctx.smoke:
        return [Row("tools/benchmark.py", "skipped in --smoke", "skip")]
    report = ctx.out / "benchmark_cuda.md"
    command = [sys.executable, "tools/benchmark.py", "--device", ctx.device, "--repeats", "3",
               "--train-repeats", "2", "--no-scaling", "--output", str(report)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    (ctx.out / "benchmark.log").write_text(result.stdout + result.stderr)
    tail = (result.stderr.strip().splitlines() or ["?"])[-1][:150]
    if result.returncode != 0:
        return [Row("tools/benchmark.py --device cuda", f"exit {result.returncode}: {tail}",
                    "FAIL")]
    return [Row("tools/benchmark.py --device cuda",
                "tables with peak memory per contender in benchmark_cuda.md", "pass")]


# What the lent GPU machine lacks (its image has torch, torchvision, timm, safetensors, psutil,
# pytest, tabulate, matplotlib, Pillow, tqdm, tensorboard, cloudpickle, portalocker): Detectron2's
# own dependencies, pinned to the versions of this environment. pycocotools is compiled.
PURE_PYTHON_WHEELS = ("yacs", "fvcore", "iopath", "omegaconf", "hydra-core",
                      "antlr4-python3-runtime", "termcolor")
BINARY_WHEELS = ("pycocotools",)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64")


def prepare_wheels(directory: str) -> List[str]:
    """Put into ``directory`` every wheel the GPU machine needs: this project's Detectron2 build
    (made by tools/install_detectron2.py) and the pinned dependencies above.

    Returns:
        The wheel files in ``directory``.
    """
    from importlib.metadata import version

    import importlib.util

    # The installer is a stdlib-only script (it runs before the package exists): load it by path.
    spec = importlib.util.spec_from_file_location("install_detectron2",
                                                  REPO / "tools" / "install_detectron2.py")
    install_detectron2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install_detectron2)

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    built = install_detectron2.DEFAULT_CACHE / "wheels" / (
        f"detectron2-{install_detectron2.WHEEL_VERSION}-py3-none-any.whl")
    if not built.is_file():
        raise FileNotFoundError(f"{built} is missing: run `make setup` (tools/install_detectron2.py"
                                ") first, it builds the wheel.")
    for old in target.glob("detectron2-*.whl"):
        old.unlink()
    (target / built.name).write_bytes(built.read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(target),
                    *[f"{name}=={version(name)}" for name in PURE_PYTHON_WHEELS]], check=True)
    platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms,
                    "-d", str(target), *[f"{name}=={version(name)}" for name in BINARY_WHEELS]],
                   check=True)
    return sorted(str(path) for path in target.glob("*.whl"))


CHECKS: List[Callable[[Context], List[Row]]] = [
    check_environment, check_device_rule, check_ddp, check_train_amp, check_bn_folding,
    check_bf16_inference, check_demo_timing, check_train_net, check_two_gpus, check_benchmark,
    check_compile, check_tests,
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="folder for the table and logs")
    parser.add_argument("--iters", type=int, default=100, help="timed AMP training iterations")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="checks that would start after this many seconds are skipped")
    parser.add_argument("--only", nargs="+", default=None, help="run these checks (names "
                        "without check_)")
    parser.add_argument("--smoke", action="store_true",
                        help="run on the CPU with tiny sizes (tests the script, not the GPU)")
    parser.add_argument("--prepare-wheels", metavar="DIR", default=None,
                        help="only write the wheels the GPU machine needs into DIR (run here)")
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        wheels = prepare_wheels(args.prepare_wheels)
        size = sum(os.path.getsize(w) for w in wheels) / 2 ** 20
        print("\n".join(wheels) + f"\n{len(wheels)} wheels, {size:.1f} MiB")
        return 0

    import torch  # after argument parsing: --help needs no torch

    if not args.smoke and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE.format(torch=torch.__version__, cuda=torch.version.cuda),
              file=sys.stderr)
        return 2
    import resbackbones  # noqa: F401  (registers the backbones)
    from tabulate import tabulate

    begin = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    ctx = Context(device="cpu" if args.smoke else "cuda", smoke=args.smoke,
                  iters=2 if args.smoke else args.iters, out=out, work=work,
                  height=160 if args.smoke else 800, width=224 if args.smoke else 1333,
                  deadline=begin + args.budget_s)
    rows: List[Row] = []
    for check in CHECKS:
        name = check.__name__[len("check_"):]
        if args.only and name not in args.only:
            continue
        if time.time() > ctx.deadline:
            rows.append(Row(name, f"not started: past the {args.budget_s:.0f} s budget", "skip"))
            continue
        start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            found = check(ctx)
        except Exception as error:  # one broken check must not hide the others
            (out / f"{name}.error.txt").write_text(traceback.format_exc())
            found = [Row(name, f"{type(error).__name__}: {str(error)[:200]}", "FAIL")]
        for row in found:
            row.seconds = row.seconds or time.perf_counter() - start
        rows.extend(found)
        print(tabulate([[r.check, r.status, r.result] for r in found], tablefmt="plain"),
              flush=True)
    table = tabulate([[r.check, r.status, f"{r.seconds:.0f}", r.result] for r in rows],
                     headers=["check", "status", "s", "result"], tablefmt="github")
    summary = (f"# GPU check ({'CPU smoke run' if args.smoke else torch.cuda.get_device_name()}"
               f", {time.time() - begin:.0f} s)\n\n{table}\n")
    print("\n" + summary)
    (out / "gpu_check.md").write_text(summary)
    (out / "gpu_check.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
