"""Per-machine choice between equivalent CPU kernels, measured once and cached.

Which kernel is fastest depends on the CPU, not on the model: on a 2-core AMD EPYC NNPACK's
Winograd 3x3 convolutions beat oneDNN's direct ones 2-2.7x on large maps, on a 2-core Intel
Xeon with AVX-512 and AMX the gain is small or negative. So a speed-up with an alternative
kernel (``WinogradConv2d``) asks :func:`choose_kernel` at inference; the first call for a
shape bucket times every candidate on the real input (interleaved, best of a few runs) and
the answer is stored, keyed by CPU model, ISA, PyTorch version and thread count, in
``~/.cache/resbackbones/cpu_kernels.json`` (``$RESBACKBONES_CACHE_DIR``, else
``$XDG_CACHE_HOME/resbackbones``). Later processes on the same machine read it and time
nothing.

The rule: the stock kernel (listed first) is kept unless another is at least
``MIN_GAIN`` faster, because an alternative kernel also rounds differently.

``RESBACKBONES_CPU_TUNING`` controls it:

* ``measure`` (default): as above;
* ``refresh``: measure again, ignoring (and then replacing) what the cache holds;
* ``off``: time nothing, read and write no file: every speed-up takes its fixed rule (its
  kernel wherever it is eligible), as before this module existed. Tests use it to be
  deterministic.

A cache file that cannot be read or parsed is ignored with a warning and replaced at the next
write; writes go to a temporary file renamed over the old one, so concurrent processes never
see half a file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from typing import Callable, Dict, Optional

import torch

from resbackbones.modeling.cpu_info import cpu_info

__all__ = ["TUNING_ENV", "CACHE_ENV", "TUNING_MODES", "KernelChoiceCache", "cache_file",
           "choose_kernel", "forget_choices", "machine_key", "shape_bucket", "time_candidates",
           "tuning_mode"]

logger = logging.getLogger(__name__)

TUNING_ENV = "RESBACKBONES_CPU_TUNING"
CACHE_ENV = "RESBACKBONES_CACHE_DIR"
TUNING_MODES = ("measure", "refresh", "off")
# An alternative kernel must be this much faster than the stock one to be chosen.
MIN_GAIN = 0.10
_FORMAT_VERSION = 1


def tuning_mode() -> str:
    """The value of ``$RESBACKBONES_CPU_TUNING`` ("measure" when unset)."""
    value = os.environ.get(TUNING_ENV, "").strip().lower() or "measure"
    if value not in TUNING_MODES:
        raise ValueError(f"${TUNING_ENV} {value!r} is invalid; valid: {', '.join(TUNING_MODES)}.")
    return value


def cache_file() -> str:
    """Where measured choices are stored (see the module docstring)."""
    directory = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "resbackbones")
    return os.path.join(directory, "cpu_kernels.json")


def machine_key() -> str:
    """What a measured choice depends on: CPU, ISA, PyTorch build and number of threads."""
    info = cpu_info()
    return (f"{info.model} | {'+'.join(info.isa) or 'no-avx2'} | {info.torch_capability} | "
            f"torch {torch.__version__} | {torch.get_num_threads()} threads")


def shape_bucket(tensor: torch.Tensor) -> str:
    """A coarse key for a 4-d input: batch and pixels per image rounded to powers of two, and
    the memory format. Kernels' relative speed changes slowly with size, so one measurement
    serves every image size in its bucket."""
    batch, _, height, width = tensor.shape
    layout = ("nhwc" if tensor.is_contiguous(memory_format=torch.channels_last)
              and not tensor.is_contiguous() else "nchw")
    return (f"n{2 ** round(math.log2(max(batch, 1)))}-"
            f"px{2 ** round(math.log2(max(height * width, 1)))}-{layout}")


class KernelChoiceCache:
    """The JSON file of measured choices: ``{"version", "machines": {machine: {key: entry}}}``
    where an entry is ``{"choice": name, "ms": {name: milliseconds}}``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: Optional[Dict[str, Dict[str, dict]]] = None

    def _read(self) -> Dict[str, Dict[str, dict]]:
        try:
            with open(self.path) as file:
                data = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("Ignoring the CPU kernel cache %s (%s); it is measured again.",
                           self.path, error)
            return {}
        machines = None
        if isinstance(data, dict) and data.get("version") == _FORMAT_VERSION:
            machines = data.get("machines")
        if not isinstance(machines, dict) or not all(
                isinstance(entries, dict) and all(isinstance(e, dict) and isinstance(
                    e.get("choice"), str) for e in entries.values())
                for entries in machines.values()):
            logger.warning("Ignoring the CPU kernel cache %s (not a version-%d cache file); it "
                           "is measured again.", self.path, _FORMAT_VERSION)
            return {}
        return machines

    def get(self, machine: str, key: str) -> Optional[str]:
        """The stored choice for ``key`` on ``machine``, or None."""
        if self._entries is None:
            self._entries = self._read()
        entry = self._entries.get(machine, {}).get(key)
        return entry["choice"] if entry else None

    def put(self, machine: str, key: str, choice: str, milliseconds: Dict[str, float]) -> None:
        """Store a choice, merged with what other processes wrote meanwhile; atomic rename.

        A read-only or full cache directory only costs a warning: the choice still holds for
        this process.
        """
        entries = self._read()  # the file's current content, not our possibly stale copy
        entries.setdefault(machine, {})[key] = {
            "choice": choice, "ms": {name: round(ms, 3) for name, ms in milliseconds.items()}}
        self._entries = entries
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".cpu_kernels-", dir=directory)
            with os.fdopen(handle, "w") as file:
                json.dump({"version": _FORMAT_VERSION, "machines": entries}, file, indent=1,
                          sort_keys=True)
            os.replace(temporary, self.path)
        except OSError as error:
            logger.warning("Could not write the CPU kernel cache %s (%s).", self.path, error)


_lock = threading.Lock()
_caches: Dict[str, KernelChoiceCache] = {}
_session: Dict[tuple, str] = {}  # choices of this process (also those of mode "refresh")


def time_candidates(candidates: Dict[str, Callable[[], object]], rounds: int = 3
                     ) -> Dict[str, float]:
    """Best-of-``rounds`` milliseconds of each candidate, run round-robin after one warm-up
    call each (allocation, packing); fewer rounds for slow calls. Also used by compiled serving
    (``modeling/serving.py``) to time eager against compiled."""
    best = {}
    for name, run in candidates.items():
        start = time.perf_counter()
        run()
        best[name] = time.perf_counter() - start
    if max(best.values()) > 0.25:
        rounds = 1
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def choose_kernel(kind: str, key: str, candidates: Dict[str, Callable[[], object]],
                  fixed_rule: str) -> str:
    """The name of the kernel to use for ``kind`` (e.g. "conv3x3 256->256") at ``key`` (e.g.
    :func:`shape_bucket` of the input).

    Args:
        kind: what is computed; part of the cache key.
        key: the shape bucket; part of the cache key.
        candidates: name -> a call computing the result with that kernel, the stock kernel
            first. Called only when a measurement is needed.
        fixed_rule: the name to return with ``RESBACKBONES_CPU_TUNING=off``.

    Returns:
        One of ``candidates``' names.
    """
    mode = tuning_mode()
    if mode == "off":
        return fixed_rule
    machine = machine_key()
    full_key = f"{kind} @ {key}"
    session_key = (machine, full_key)
    choice = _session.get(session_key)
    if choice is not None:
        return choice
    with _lock:
        path = cache_file()
        cache = _caches.setdefault(path, KernelChoiceCache(path))
        choice = _session.get(session_key) or (
            cache.get(machine, full_key) if mode == "measure" else None)
        if choice not in candidates:
            milliseconds = time_candidates(candidates)
            stock = next(iter(candidates))
            fastest = min(milliseconds, key=milliseconds.get)
            choice = (fastest if milliseconds[fastest] < (1 - MIN_GAIN) * milliseconds[stock]
                      else stock)
            logger.info("CPU kernel for %s: %s (%s ms; stored in %s)", full_key, choice,
                        ", ".join(f"{n} {ms:.1f}" for n, ms in milliseconds.items()), path)
            cache.put(machine, full_key, choice, milliseconds)
        _session[session_key] = choice
    return choice


def forget_choices() -> None:
    """Forget this process's choices and cached file contents: the next call reads the cache
    file again (e.g. after ``$RESBACKBONES_CACHE_DIR`` changed)."""
    with _lock:
        _session.clear()
        _caches.clear()
