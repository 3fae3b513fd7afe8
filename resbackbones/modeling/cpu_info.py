"""Which CPU this is and which vector/matrix units it has.

Speed-ups that pay on one CPU family can cost on another (NNPACK's Winograd convolutions gain
2-2.7x on an AMD EPYC and little on an Intel Xeon, whose oneDNN direct convolutions are already
fast), and bf16 is only worth it where the CPU computes it natively (AVX512-BF16 or AMX). So the
automatic choices (:mod:`resbackbones.modeling.kernel_choice`, ``INFERENCE_AMP auto``) and every
benchmark figure are tied to the identity read here: the model name and ISA flags of
``/proc/cpuinfo`` plus the kernel level PyTorch dispatches to (``torch.backends.cpu``).
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from typing import FrozenSet, List, Optional

import torch

__all__ = ["CpuInfo", "cpu_info", "parse_cpuinfo"]

# (/proc/cpuinfo flag, how reports name it), in the order reports list them.
ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX-BF16"),
)


@dataclass(frozen=True)
class CpuInfo:
    """Model name, the ISA flags that matter for PyTorch's CPU kernels, and PyTorch's own view."""

    model: str
    flags: FrozenSet[str]
    torch_capability: str
    mhz: Optional[float] = None

    @property
    def isa(self) -> List[str]:
        """The report names of the vector/matrix extensions present, e.g. ["AVX2", "AVX-512"]."""
        return [name for flag, name in ISA_FLAGS if flag in self.flags]

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix products run natively (AVX512-BF16 dot products or AMX tiles).

        oneDNN also accepts bf16 on plain AVX-512 by emulating it, which is slower than fp32.
        """
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def has_amx(self) -> bool:
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    def describe(self) -> str:
        """One line for reports: ``<model> (AVX2, AVX-512, ...; PyTorch kernels AVX512)``."""
        isa = ", ".join(self.isa) or "no AVX2"
        return f"{self.model} ({isa}; PyTorch kernels {self.torch_capability})"


def parse_cpuinfo(text: str, torch_capability: str = "") -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (the first processor's entry)."""
    model, flags, mhz = "", frozenset(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    return CpuInfo(model or platform.processor() or platform.machine(), flags, torch_capability,
                   mhz)


def _torch_capability() -> str:
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get else "unknown"


@functools.lru_cache(maxsize=None)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once). Without ``/proc/cpuinfo`` (macOS, Windows) the flags are
    empty, so nothing that needs them (native bf16) is chosen automatically."""
    try:
        with open("/proc/cpuinfo") as file:
            text = file.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, _torch_capability())
