"""Timing and memory measurement shared by every contender of the benchmark.

Contenders are measured round-robin ("interleaved") so that a slow phase of a noisy machine hits
all of them alike; results are medians with the inter-quartile spread.
"""
from __future__ import annotations

import functools
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from resbackbones._requirements import require_extra
from resbackbones.modeling.cpu_info import cpu_info
from resbackbones.modeling.serving import synchronize


@dataclass
class Timing:
    """Seconds per call of one contender for one measurement."""

    seconds: List[float] = field(default_factory=list)
    peak_memory_bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Inter-quartile range in seconds (0 with fewer than 4 samples: max - min instead)."""
        if len(self.seconds) < 4:
            return max(self.seconds) - min(self.seconds)
        quartiles = statistics.quantiles(self.seconds, n=4)
        return quartiles[2] - quartiles[0]


class PeakMemory:
    """Peak memory during a block: on CUDA the allocator's peak above what was allocated on
    entry, on CPU sampled RSS.

    On CUDA the memory already held on entry (other contenders' weights, cached inputs) is
    subtracted, so each contender is charged only for what its own step allocates. RSS is
    sampled every few milliseconds by a thread, because the process-wide high-water mark
    (``ru_maxrss``) cannot be reset between contenders that share a process.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.allocated_on_entry = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        process = self._process
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.allocated_on_entry = torch.cuda.memory_allocated(self.device)
        else:
            psutil = require_extra("benchmark", "psutil", "The benchmark's CPU memory peak")
            self._process = psutil.Process()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = (torch.cuda.max_memory_allocated(self.device)
                               - self.allocated_on_entry)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


def release_memory(device: torch.device) -> None:
    """Free what dropped contenders left behind before the next one is measured: collect
    reference cycles now rather than at some later step, and return cached CUDA blocks."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_interleaved(
    steps: Dict[str, Callable[[], None]],
    device: torch.device,
    warmup: int,
    repeats: int,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Timing]:
    """Run every step ``warmup`` times, then ``repeats`` rounds of one call each, round-robin.

    Args:
        steps: name -> a callable doing one full unit of work (one iteration).
        device: where the work runs (for synchronisation and memory).
        warmup: untimed calls per step before measuring (allocator, autotuning, caches).
        repeats: timed calls per step.
        progress: called with a short text after each call, for a progress display.

    Returns:
        name -> :class:`Timing` with one duration per repeat and the peak memory.
    """
    results = {name: Timing() for name in steps}
    for name, step in steps.items():
        for index in range(warmup):
            step()
            if progress:
                progress(f"warm-up {name} {index + 1}/{warmup}")
    synchronize(device)
    for round_index in range(repeats):
        for name, step in steps.items():
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                step()
                synchronize(device)
                results[name].seconds.append(time.perf_counter() - start)
            results[name].peak_memory_bytes = max(results[name].peak_memory_bytes,
                                                  memory.peak_bytes)
            if progress:
                progress(f"round {round_index + 1}/{repeats} {name}")
    return results


@functools.lru_cache(maxsize=None)
def _register_nnpack_flop_formula() -> None:
    """Count NNPACK (Winograd) convolutions at the FLOPs of the direct convolution.

    FlopCounterMode has no formula for ``aten._nnpack_spatial_convolution`` and would count it
    as zero; the nominal count keeps GFLOPs and TFLOP/s comparable between contenders.
    """
    if not hasattr(torch.ops.aten, "_nnpack_spatial_convolution"):
        return
    from torch.utils.flop_counter import conv_flop_count, register_flop_formula

    @register_flop_formula(torch.ops.aten._nnpack_spatial_convolution)
    def _nnpack_flops(x_shape, w_shape, bias_shape, padding, stride=None, *, out_shape=None,
                      **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def count_flops(run_once: Callable[[], None]) -> int:
    """FLOPs of one call, counted by PyTorch's ``FlopCounterMode`` (2 per multiply-add).

    Counting happens in eager mode on the real inputs, so data-dependent parts (the number of
    proposals and detections) are counted as they run; torchvision models need no tracing.
    Winograd convolutions count as the direct convolution they replace.
    """
    from torch.utils.flop_counter import FlopCounterMode

    _register_nnpack_flop_formula()
    counter = FlopCounterMode(display=False)
    with counter:
        run_once()
    return int(counter.get_total_flops())


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe_device(device: torch.device) -> str:
    """A human-readable name of the device the figures come from; for a CPU its model, the ISA
    extensions that decide which kernels run (AVX2, AVX-512, AVX512-BF16, AMX) and threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return (f"CPU {cpu_info().describe()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def device_section(device: torch.device) -> str:
    """The BENCHMARKS.md section a run on ``device`` writes: one per CPU model (figures of
    one CPU family say little about another), e.g. ``cpu-intel-xeon-processor``;
    ``cuda`` for GPUs."""
    if device.type == "cuda":
        return "cuda"
    model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*", " ", cpu_info().model.lower())
    return "cpu-" + (re.sub(r"[^a-z0-9]+", "-", model).strip("-") or "unknown")


# FLOP per cycle and core: FMA = 2 FLOP per lane. AVX-512: 16 fp32 lanes x 2 FMA units (server
# cores; some have one); AVX2: 8 lanes x 2 units; AVX512-BF16: VDPBF16PS, 32 bf16 products per
# unit; AMX: one TMUL does a 16x32 by 32x16 bf16 tile product (16384 FLOP) every 16 cycles.
_FP32_FLOP_PER_CYCLE = (("avx512f", "AVX-512 FMA", 64), ("avx2", "AVX2 FMA", 32))
_BF16_FLOP_PER_CYCLE = (("amx_bf16", "AMX", 1024), ("avx512_bf16", "AVX512-BF16", 128))


def cpu_peak_flops(threads: Optional[int] = None) -> List[Tuple[str, str, float]]:
    """This CPU's peak FLOP/s per precision: (precision, how it is computed, FLOP/s).

    cores (threads used, at most the CPUs) x GHz (the nominal clock of /proc/cpuinfo; turbo
    may run faster) x FLOP/cycle of the widest unit present. Empty when the clock is unknown.
    """
    info = cpu_info()
    if not info.mhz:
        return []
    cores = min(threads or torch.get_num_threads(), os.cpu_count() or 1)
    ghz = info.mhz / 1000
    peaks = []
    for precision, table in (("fp32", _FP32_FLOP_PER_CYCLE), ("bf16", _BF16_FLOP_PER_CYCLE)):
        for flag, unit, per_cycle in table:
            if flag in info.flags:
                peaks.append((precision, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle "
                              f"({unit})", cores * ghz * 1e9 * per_cycle))
                break
    return peaks


def ratio_table(timings: Dict[str, Timing], reference: str) -> List[Sequence]:
    """Rows (name, median s, spread s, speed-up vs reference) for a report."""
    reference_median = timings[reference].median
    return [
        (name, timing.median, timing.spread, reference_median / timing.median)
        for name, timing in timings.items()
    ]
