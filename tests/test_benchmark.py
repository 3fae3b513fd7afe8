"""The benchmark runs end to end at a tiny size and writes its tables; its helpers are right."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resbackbones.benchmark.contenders import calibrate_frozen_batchnorm, synthetic_boxes
from resbackbones.benchmark.harness import Timing, measure_interleaved
from resbackbones.benchmark.report import write_section

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_measure_interleaved_alternates_contenders():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = measure_interleaved(steps, torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert all(len(t.seconds) == 3 and t.peak_memory_bytes > 0 for t in timings.values())


def test_timing_summary():
    timing = Timing(seconds=[1.0, 2.0, 3.0, 4.0, 100.0])
    assert timing.median == 3.0
    assert 0 < timing.spread < 100


def test_calibrated_frozen_bn_normalises_its_input():
    from detectron2.layers import FrozenBatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8))
    inputs = torch.randn(4, 3, 16, 16) * 50 + 7
    with torch.no_grad():
        assert calibrate_frozen_batchnorm(model, lambda: model(inputs)) == 1
        output = model(inputs)
    assert output.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (output.var(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_synthetic_boxes_lie_inside_the_image():
    boxes = synthetic_boxes(100, 200)
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert boxes[:, [0, 2]].max() < 200 and boxes[:, [1, 3]].max() < 100 and boxes.min() >= 0


def test_write_section_keeps_other_devices(tmp_path):
    path = str(tmp_path / "BENCH.md")
    write_section(path, "cuda", "gpu figures")
    write_section(path, "cpu", "cpu figures v1")
    write_section(path, "cpu", "cpu figures v2")
    text = open(path).read()
    assert "gpu figures" in text and "cpu figures v2" in text and "v1" not in text
    assert text.count("<!-- BEGIN cpu -->") == 1


@pytest.mark.slow
def test_benchmark_tool_runs_and_writes_table(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "tools/benchmark.py", "--config-file",
               "configs/COCO-InstanceSegmentation/mask_rcnn_resnet18_FPN_1x.yaml",
               "--height", "96", "--width", "128", "--repeats", "1", "--warmup", "0",
               "--train-repeats", "1", "--train-batch", "1", "--scaling-archs", "resnet18",
               "--scaling-size-arch", "resnet18", "--scaling-sizes", "64x96", "96x128", "--bf16", "--onnx",
               "--output", str(output), "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
               "TEST.DETECTIONS_PER_IMAGE", "10"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert "| resbackbones" in text and "| detectron2 built-in" in text
    assert "vs built-in" in text and "### Scaling" in text
    # One section and plot per CPU model, named after it, with its ISA in the heading.
    plots = list(tmp_path.glob("benchmark_scaling_cpu-*.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 1000
    section = plots[0].name[len("benchmark_scaling_"):-len(".png")]
    assert f"<!-- BEGIN {section} -->" in text
    assert re.search(r"## CPU: CPU .+ \(.*PyTorch kernels \w+\), \d+ threads", text)
    row = next(line for line in text.splitlines() if line.startswith("| resbackbones "))
    detections = int(row.split("|")[9])
    assert 0 < detections <= 10
    stock_heads = next(line for line in text.splitlines()
                       if line.startswith("| resbackbones, stock GeneralizedRCNN"))
    assert "(as resbackbones)" in stock_heads  # training is the same code: not re-timed
    # --bf16: ours in bf16 and the built-in under the same autocast, inference only.
    for name in ("resbackbones bf16", "detectron2 built-in, bf16 autocast"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
        assert "(inference only)" in row and 0 < int(row.split("|")[9]) <= 10
    assert re.search(r"Same precision: resbackbones bf16 is \d+\.\d\dx detectron2 built-in, "
                     r"bf16 autocast\.", text)
    from resbackbones.modeling.cpu_info import cpu_info

    if cpu_info().mhz and "avx2" in cpu_info().flags:  # the peak needs the clock and the ISA
        assert "Peak fp32 of this CPU: " in text
    # --onnx: the same weights exported and run by ONNX Runtime, in the same run and table.
    row = next(line for line in text.splitlines() if line.startswith("| ONNX Runtime (CPU) "))
    assert "(inference only)" in row and 0 < int(row.split("|")[9]) <= 10
    assert float(row.split("|")[4].strip().rstrip("x")) > 0  # its ratio to the built-in
    agreement = re.search(r"Same weights, exported: (\d+)% of resbackbones' detections are "
                          r"reproduced by ONNX Runtime \(CPU\)", text)
    assert agreement and int(agreement.group(1)) >= 80  # same weights and pixels; near-ties
    assert "onnxruntime" in text and "opset" in text
    assert "resbackbones, stock GeneralizedRCNN (IoU > 0.99)" in text
    difference = re.search(r"FPN features of resbackbones differ from the built-in's by at most "
                           r"(\S+) of", text)
    assert difference and float(difference.group(1)) < 1e-3  # same weights, rounding only


@pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch build has no NNPACK")
def test_winograd_convolutions_count_as_the_direct_convolution():
    from resbackbones.benchmark.harness import count_flops
    from resbackbones.modeling.winograd import WinogradConv2d, with_winograd_convolutions

    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    images = torch.randn(1, 16, 64, 64)
    with torch.no_grad():
        direct = count_flops(lambda: conv(images))
        twin = with_winograd_convolutions(conv)
        assert type(twin) is WinogradConv2d and twin.weight is conv.weight
        winograd = count_flops(lambda: twin(images))
    assert direct == winograd == 2 * 16 * 8 * 9 * 64 * 64


def test_compiled_serving_row(caplog):
    """--compile-serving adds an inference-only row with its warm-up and its ratio to the eager
    row; dynamo's "eager" backend keeps it fast (tests/test_serving_compile.py runs inductor)."""
    from resbackbones.benchmark.report import comparison_markdown
    from resbackbones.benchmark.run import OURS_COMPILED, BenchmarkSettings, run_comparison

    torch._dynamo.reset()
    settings = BenchmarkSettings(
        config_file="configs/COCO-InstanceSegmentation/mask_rcnn_resnet18_FPN_1x.yaml",
        height=64, width=80, warmup=0, repeats=1, include_training=False,
        include_torchvision=False, include_compiled_serving=True, compile_backend="eager",
        device="cpu", opts=["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                            "TEST.DETECTIONS_PER_IMAGE", "10"])
    with caplog.at_level(logging.WARNING, logger="resbackbones.modeling.serving"):
        result = run_comparison(settings)
    assert not caplog.records  # compiled, and ran compiled (no fallback to eager)
    assert result.warm_up_seconds[OURS_COMPILED] > 0
    assert 0 < result.detections[OURS_COMPILED] <= 10
    assert result.flops[OURS_COMPILED] == result.flops["resbackbones"]
    text = comparison_markdown(result)
    row = next(line for line in text.splitlines() if line.startswith(f"| {OURS_COMPILED} "))
    assert float(row.split("|")[3].split("±")[0]) > 0  # s/img
    assert "bucket 64x96" in text and "FAILED" not in text
    assert re.search(r"Compiled serving: \d+\.\d s warm-up, then \d+\.\d{3} s/img: \d+\.\d\dx "
                     r"resbackbones \(eager\) in the same run\.", text)
    torch._dynamo.reset()


def test_benchmarks_md_header_is_the_generators():
    """BENCHMARKS.md starts with the header report.py writes into a new file (kept current)."""
    from resbackbones.benchmark.report import HEADER

    text = (REPO_ROOT / "BENCHMARKS.md").read_text()
    assert text.startswith(HEADER.strip()), "regenerate BENCHMARKS.md's header from report.HEADER"
