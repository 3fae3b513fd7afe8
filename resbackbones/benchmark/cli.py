"""Benchmark a resbackbones detector against Detectron2's built-in ResNet and torchvision.

    python -m resbackbones benchmark                            # Mask R-CNN R50-FPN, 800x1333
    python -m resbackbones benchmark --arch resnext101_32x8d --no-training
    python -m resbackbones benchmark --height 256 --width 320 --output /tmp/BENCH.md --no-scaling
    python -m resbackbones benchmark --bf16 --onnx  # + bf16 rows and an ONNX Runtime row
    python -m resbackbones benchmark --profile-training --bf16 --height 512 --width 768

Writes (or updates this device's section of) BENCHMARKS.md and a scaling plot next to it.
``tools/benchmark.py`` is the same command line.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from resbackbones._requirements import require_extra
from resbackbones.benchmark.harness import device_section
from resbackbones.benchmark.report import plot_scaling, section_body, write_section
from resbackbones.benchmark.run import BenchmarkSettings, run_comparison, run_scaling

__all__ = ["SCALING_ARCHS", "SCALING_SIZES", "build_parser", "main", "onnx_exporter"]

SCALING_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                 "resnext101_32x8d", "wide_resnet50_2"]
SCALING_SIZES = ["512x853", "800x1333", "1024x1707"]


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; trailing ``KEY VALUE`` pairs override the config."""
    defaults = BenchmarkSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=defaults.config_file,
                        help="a config path or a packaged name (python -m resbackbones configs)")
    parser.add_argument("--arch", default=None, help="override MODEL.RESBACKBONE.ARCH")
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--train-batch", type=int, default=defaults.train_batch,
                        help="images per training iteration (default 2; CPU-sized)")
    parser.add_argument("--train-repeats", type=int, default=defaults.train_repeats)
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="add rows: ours with INFERENCE_AMP bf16 and the built-in under bf16 "
                             "autocast (inference only, same weights)")
    parser.add_argument("--compile-serving", action="store_true",
                        help="add a row: ours with backbone + FPN compiled for the input's size "
                             "bucket (the demos' --compile on): warm-up seconds, s/img after "
                             "it and the ratio to the eager row (inference only, same weights)")
    parser.add_argument("--profile-training", action="store_true",
                        help="instead: profile training iterations of ours and the built-in "
                             "(CPU) and tabulate the time per part: backbone, FPN, RPN, ROI "
                             "heads, losses, backward, optimizer (section <device>-training-"
                             "profile); with --bf16 also both with bf16 autocast training")
    parser.add_argument("--profile-iterations", type=int, default=2,
                        help="profiled training iterations per model (after --warmup)")
    parser.add_argument("--scaling-archs", nargs="+", default=SCALING_ARCHS)
    parser.add_argument("--scaling-sizes", nargs="+", default=SCALING_SIZES,
                        help="HEIGHTxWIDTH input sizes for the size sweep")
    parser.add_argument("--scaling-size-arch", default="resnet50",
                        help="architecture of the size sweep")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--section", default=None,
                        help="section of the output to replace (default: cpu-<CPU model> or "
                             "cuda: one section per machine)")
    parser.add_argument("--onnx", action="store_true",
                        help="add a row: our detector exported to ONNX (python -m resbackbones "
                             "export) and run by ONNX Runtime on the CPU, same weights "
                             "(inference only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def onnx_exporter(model: nn.Module, cfg, image: np.ndarray, scratch: str
                  ) -> Tuple[str, str, Callable[[np.ndarray], np.ndarray]]:
    """The ``--onnx`` row: ``model``'s weights exported to ONNX and run by the Detectron2-free
    runner with as many threads as PyTorch uses (a
    :data:`~resbackbones.benchmark.contenders.Exporter`).

    Returns:
        The row's name, its description and a function from an RGB image to boxes.
    """
    from resbackbones.deploy.export import export_same_weights
    from resbackbones.deploy.onnx_runner import OnnxDetector

    folder = os.path.join(scratch, "onnx")
    # The eager rows get the image at its own size (no test-time resize), so the runner must
    # not resize it either: whole inference on the same pixels on both sides.
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(image.shape[:2]), max(image.shape[:2])
    result = export_same_weights(model, cfg, folder, image)
    detector = OnnxDetector(folder, num_threads=torch.get_num_threads())
    onnxruntime = require_extra("export", "onnxruntime", "The benchmark's --onnx row")
    description = (f"`tools/export_model.py --format onnx` (tracing, opset "
                   f"{result.meta['onnx_opset']}, BN folded) run by resbackbones.deploy."
                   f"onnx_runner on onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, "
                   f"{torch.get_num_threads()} intra-op threads; resize and mask pasting in "
                   "numpy/Pillow")
    return "ONNX Runtime (CPU)", description, lambda rgb: detector(rgb).boxes


def _training_profile_section(settings: BenchmarkSettings, output: str, iterations: int,
                              include_bf16: bool, section: Optional[str] = None) -> int:
    from resbackbones.benchmark.profile import run_training_profile, training_profile_markdown

    result = run_training_profile(settings, iterations, include_bf16)
    body = "\n".join([f"## CPU training profile: {result.device_name}", "",
                      training_profile_markdown(result)])
    write_section(output, section or f"{device_section(torch.device(settings.device))}"
                  "-training-profile", body)
    print(body)
    print(f"\nwrote {output}")
    return 0


def _parse_sizes(sizes: List[str]) -> List[Tuple[int, int]]:
    return [tuple(int(v) for v in size.lower().split("x")) for size in sizes]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark command line (``python -m resbackbones benchmark``); returns the exit
    status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        config_file=args.config_file, arch=args.arch, height=args.height, width=args.width,
        warmup=args.warmup, repeats=args.repeats, train_batch=args.train_batch,
        train_repeats=args.train_repeats, include_training=not args.no_training,
        device=args.device, opts=args.opts, include_bf16=args.bf16,
        include_compiled_serving=args.compile_serving)
    if args.profile_training:
        return _training_profile_section(settings, args.output, args.profile_iterations,
                                         args.bf16, args.section)
    result = run_comparison(settings, onnx_exporter if args.onnx else None)
    scaling = []
    plot_name = None
    section = args.section or device_section(torch.device(args.device))
    if not args.no_scaling:
        scaling = run_scaling(settings, args.scaling_archs, _parse_sizes(args.scaling_sizes),
                              args.scaling_size_arch)
        plot_name = f"benchmark_scaling_{section}.png"
        plot_scaling(scaling, os.path.join(os.path.dirname(os.path.abspath(args.output)),
                                           plot_name))
    body = section_body(result, scaling, plot_name)
    write_section(args.output, section, body)
    print(body)
    print(f"\nwrote {args.output}")
    return 0
