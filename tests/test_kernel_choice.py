"""Per-machine kernel choices: CPU identity, the measured Winograd choice and its cache file,
native-bf16 detection, and the fall-backs when a kernel is missing (no NNPACK, no bf16)."""
import json
import logging

import pytest
import torch
from torch import nn

from resbackbones.modeling import fpn, kernel_choice, winograd
from resbackbones.modeling.cpu_info import parse_cpuinfo
from helpers import count_nnpack_calls, needs_nnpack

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8580
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8580
"""
ZEN3 = """model name\t: AMD EPYC 7763 64-Core Processor
cpu MHz\t\t: 2445.406
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_identity_and_isa_from_cpuinfo():
    xeon = parse_cpuinfo(XEON_AMX, "AVX512")
    assert xeon.model == "Intel(R) Xeon(R) Platinum 8580" and xeon.mhz == 2100.0
    assert xeon.isa == ["AVX2", "AVX-512", "AVX512-BF16", "AMX-BF16"]
    assert xeon.native_bf16 and xeon.has_amx
    assert xeon.describe() == ("Intel(R) Xeon(R) Platinum 8580 (AVX2, AVX-512, AVX512-BF16, "
                               "AMX-BF16; PyTorch kernels AVX512)")
    epyc = parse_cpuinfo(ZEN3, "AVX2")
    assert epyc.isa == ["AVX2"] and not epyc.native_bf16 and not epyc.has_amx
    # No /proc/cpuinfo (macOS, Windows): a name, no flags, so nothing needing them is chosen.
    assert parse_cpuinfo("", "DEFAULT").flags == frozenset()


def test_benchmark_peak_flops_follow_the_isa(monkeypatch):
    from resbackbones.benchmark import harness

    monkeypatch.setattr(harness, "cpu_info", lambda: parse_cpuinfo(XEON_AMX, "AVX512"))
    peaks = {precision: (how, flops) for precision, how, flops in harness.cpu_peak_flops(2)}
    assert peaks["fp32"] == ("2 cores x 2.10 GHz x 64 FLOP/cycle (AVX-512 FMA)", 2 * 2.1e9 * 64)
    assert peaks["bf16"][1] == pytest.approx(2 * 2.1e9 * 1024) and "AMX" in peaks["bf16"][0]
    monkeypatch.setattr(harness, "cpu_info", lambda: parse_cpuinfo(ZEN3, "AVX2"))
    assert [p for p, _, _ in harness.cpu_peak_flops(2)] == ["fp32"]  # no native bf16


def test_auto_amp_needs_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(fpn, "cpu_info", lambda: parse_cpuinfo(ZEN3, "AVX2"))
    assert fpn.inference_autocast_dtype("auto", cpu) is None
    assert fpn.inference_autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for: given
    monkeypatch.setattr(fpn, "cpu_info", lambda: parse_cpuinfo(XEON_AMX, "AVX512"))
    expected = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    assert fpn.inference_autocast_dtype("auto", cpu) is expected


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Measured choices with a cache file under tmp_path; returns the cache file's path."""
    monkeypatch.setenv(kernel_choice.TUNING_ENV, "measure")
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(tmp_path / "cache"))
    kernel_choice.forget_choices()
    yield tmp_path / "cache" / "cpu_kernels.json"
    kernel_choice.forget_choices()


def _fixed_timings(monkeypatch, milliseconds):
    """Replace the stopwatch: each candidate 'takes' the given time; records the calls."""
    measured = []

    def fake(candidates, rounds=3):
        measured.append(list(candidates))
        return {name: milliseconds[name] for name in candidates}

    monkeypatch.setattr(kernel_choice, "time_candidates", fake)
    return measured


def _unused():
    raise AssertionError("a cached choice must not run the candidates")


def test_choice_is_measured_once_then_read_from_the_cache(measuring, monkeypatch):
    measured = _fixed_timings(monkeypatch, {"direct": 10.0, "winograd": 4.0})
    candidates = {"direct": _unused, "winograd": _unused}
    assert kernel_choice.choose_kernel("conv", "n1-px4096-nchw", candidates, "winograd") == (
        "winograd")
    assert len(measured) == 1
    stored = json.loads(measuring.read_text())
    machine = kernel_choice.machine_key()
    assert stored["version"] == 1 and torch.__version__ in machine
    assert stored["machines"][machine]["conv @ n1-px4096-nchw"] == {
        "choice": "winograd", "ms": {"direct": 10.0, "winograd": 4.0}}
    # Another process on this machine: nothing is timed again.
    kernel_choice.forget_choices()
    assert kernel_choice.choose_kernel("conv", "n1-px4096-nchw", candidates, "direct") == (
        "winograd")
    assert len(measured) == 1
    # Another bucket is measured and merged into the same file.
    kernel_choice.choose_kernel("conv", "n1-px1024-nchw", candidates, "winograd")
    assert len(measured) == 2
    assert len(json.loads(measuring.read_text())["machines"][machine]) == 2


def test_the_stock_kernel_stays_unless_the_other_is_clearly_faster(measuring, monkeypatch):
    _fixed_timings(monkeypatch, {"direct": 10.0, "winograd": 9.5})  # 5%: within noise
    assert kernel_choice.choose_kernel("conv", "a", {"direct": _unused, "winograd": _unused},
                                       "winograd") == "direct"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 99, "machines": {}}),
                                     json.dumps({"version": 1, "machines": {"m": {"k": 3}}}),
                                     json.dumps([1, 2])])
def test_a_corrupt_cache_file_is_ignored_and_replaced(measuring, monkeypatch, caplog, content):
    measuring.parent.mkdir(parents=True)
    measuring.write_text(content)
    measured = _fixed_timings(monkeypatch, {"direct": 1.0, "winograd": 5.0})
    with caplog.at_level(logging.WARNING, logger=kernel_choice.__name__):
        choice = kernel_choice.choose_kernel("conv", "a", {"direct": _unused,
                                                           "winograd": _unused}, "winograd")
    assert choice == "direct" and len(measured) == 1
    assert "Ignoring the CPU kernel cache" in caplog.text and str(measuring) in caplog.text
    stored = json.loads(measuring.read_text())
    assert stored["machines"][kernel_choice.machine_key()]["conv @ a"]["choice"] == "direct"
    assert not list(measuring.parent.glob(".cpu_kernels-*"))  # no temporary file left


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(kernel_choice.TUNING_ENV, "measure")
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(blocker / "cache"))  # under a file
    kernel_choice.forget_choices()
    _fixed_timings(monkeypatch, {"direct": 10.0, "winograd": 1.0})
    try:
        with caplog.at_level(logging.WARNING, logger=kernel_choice.__name__):
            assert kernel_choice.choose_kernel("conv", "a", {"direct": _unused,
                                                             "winograd": _unused}, "x") == (
                "winograd")
        assert "Could not write the CPU kernel cache" in caplog.text
    finally:
        kernel_choice.forget_choices()


def test_tuning_modes_off_and_refresh(measuring, monkeypatch):
    measured = _fixed_timings(monkeypatch, {"direct": 10.0, "winograd": 1.0})
    candidates = {"direct": _unused, "winograd": _unused}
    kernel_choice.choose_kernel("conv", "a", candidates, "direct")
    monkeypatch.setenv(kernel_choice.TUNING_ENV, "off")
    assert kernel_choice.choose_kernel("conv", "a", candidates, "direct") == "direct"
    monkeypatch.setenv(kernel_choice.TUNING_ENV, "refresh")
    kernel_choice.forget_choices()
    _fixed_timings(monkeypatch, {"direct": 1.0, "winograd": 10.0})
    assert kernel_choice.choose_kernel("conv", "a", candidates, "winograd") == "direct"
    assert len(measured) == 1  # the first stopwatch; the second measured once more
    stored = json.loads(measuring.read_text())
    assert stored["machines"][kernel_choice.machine_key()]["conv @ a"]["choice"] == "direct"
    monkeypatch.setenv(kernel_choice.TUNING_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$RESBACKBONES_CPU_TUNING 'fast' is invalid; "
                                         r"valid: measure, refresh, off"):
        kernel_choice.tuning_mode()


def test_real_stopwatch_picks_the_faster_candidate(measuring):
    import time

    choice = kernel_choice.choose_kernel(
        "sleep", "a", {"slow": lambda: time.sleep(0.02), "fast": lambda: None}, "slow")
    assert choice == "fast"


def test_shape_buckets():
    assert kernel_choice.shape_bucket(torch.empty(1, 8, 200, 336)) == "n1-px65536-nchw"
    assert kernel_choice.shape_bucket(torch.empty(1, 8, 190, 320)) == "n1-px65536-nchw"
    nhwc = torch.empty(100, 8, 14, 14).contiguous(memory_format=torch.channels_last)
    assert kernel_choice.shape_bucket(nhwc) == "n128-px256-nhwc"


@needs_nnpack
@pytest.mark.parametrize("timings, uses_nnpack", [({"direct": 10.0, "winograd": 3.0}, True),
                                                  ({"direct": 3.0, "winograd": 10.0}, False)])
def test_winograd_conv_follows_the_measured_choice(measuring, monkeypatch, timings,
                                                   uses_nnpack):
    _fixed_timings(monkeypatch, timings)
    conv = nn.Conv2d(16, 16, 3, padding=1).eval()
    twin = winograd.with_winograd_convolutions(conv)
    calls = count_nnpack_calls(monkeypatch)
    images = torch.randn(1, 16, 64, 64)
    with torch.no_grad():
        expected, output = conv(images), twin(images)
    assert (len(calls) == 1) is uses_nnpack
    if uses_nnpack:
        assert (expected - output).abs().max() / expected.abs().max() < 1e-4
    else:
        assert torch.equal(expected, output)
    key = "conv3x3 16->16 @ n1-px4096-nchw"
    stored = json.loads(measuring.read_text())["machines"][kernel_choice.machine_key()]
    assert stored[key]["choice"] == ("winograd" if uses_nnpack else "direct")


@needs_nnpack
def test_winograd_real_measurement_gives_the_direct_result_or_nnpack_within_tolerance(
        measuring):
    conv = nn.Conv2d(32, 32, 3, padding=1).eval()
    twin = winograd.with_winograd_convolutions(conv)
    images = torch.randn(1, 32, 48, 48)
    with torch.no_grad():
        expected, output = conv(images), twin(images)
    assert (expected - output).abs().max() / expected.abs().max() < 1e-4
    entries = json.loads(measuring.read_text())["machines"][kernel_choice.machine_key()]
    (entry,) = entries.values()
    assert entry["choice"] in ("direct", "winograd") and set(entry["ms"]) == {"direct",
                                                                              "winograd"}


def test_without_nnpack_everything_runs_direct_and_nothing_is_measured(measuring, monkeypatch):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from resbackbones.config import add_resbackbone_config
    from resbackbones.modeling import rcnn

    monkeypatch.setattr(winograd, "nnpack_available", lambda: False)
    monkeypatch.setattr(rcnn, "nnpack_available", lambda: False)
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    twin = winograd.with_winograd_convolutions(conv)
    images = torch.randn(1, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(conv(images), twin(images))
    # The meta-architecture builds no Winograd twins in its heads.
    cfg = add_resbackbone_config(get_cfg())
    cfg.merge_from_file("configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
    cfg.MODEL.RESBACKBONE.WEIGHTS = ""
    cfg.MODEL.RESBACKBONE.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert model.__class__.__name__ == "ResBackboneRCNN"
    heads = list(model.proposal_generator.modules()) + list(model.roi_heads.modules())
    assert not any(isinstance(m, (winograd.WinogradConv2d, winograd.WinogradDetectron2Conv2d))
                   for m in heads)
    assert not measuring.exists()


@needs_nnpack
def test_no_winograd_under_bf16_autocast(measuring, monkeypatch):
    _fixed_timings(monkeypatch, {"direct": 10.0, "winograd": 1.0})
    twin = winograd.with_winograd_convolutions(nn.Conv2d(8, 8, 3, padding=1).eval())
    calls = count_nnpack_calls(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = twin(torch.randn(1, 8, 64, 64))
    assert output.dtype == torch.bfloat16 and not calls
