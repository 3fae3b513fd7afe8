"""Compiled serving: backbone + FPN compiled once per padded input-size bucket.

A long-running predictor (the Gradio demo, the batch CLI) sees many image sizes. A
``torch.compile`` with static shapes compiles again for every new size, and one with dynamic
shapes gives up the static-shape kernels. So each input is zero-padded (as Detectron2's
``ImageList`` pads) to the smallest of a few buckets that contains it, the bucket's graph runs,
and every feature map is cropped back to the size the eager backbone gives for the unpadded
input (``ceil(size / stride)``): the RPN and ROI heads see the same shapes as without it.

Every bucket is compiled at start-up (:meth:`BucketedCompiledBackbone.warm_up`, seconds logged
per bucket); in mode "auto" each bucket then keeps the compiled graph only where it ran faster
than eager in an interleaved timing. Inputs larger than every bucket, batches of more than one
image, training and grad-enabled calls run eagerly; any compile or run-time error logs a
warning and runs eagerly from then on.

Outputs: an input whose padded size is a bucket gives the eager features within compiler
rounding (tests/test_serving_compile.py). A smaller input is computed as Detectron2 computes it
inside a batch with a larger image: the padding changes the features within the receptive
field of the bottom and right edges, as batched inference does.

Weights stay the model's own (the compiled graphs take the parameters as inputs), so a
checkpoint loaded later is used without compiling again. While installed, the eager backbone
sits under ``backbone.eager`` in the model's ``state_dict``: a serving mode, not for training or
checkpoints (:func:`remove_compiled_serving` puts the eager backbone back).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import Backbone
from torch import nn

from resbackbones.errors import check_choice
from resbackbones.modeling.kernel_choice import time_candidates

__all__ = ["SERVING_COMPILE_CHOICES", "BucketReport", "BucketedCompiledBackbone",
           "check_serving_compile", "default_buckets", "enable_compiled_serving",
           "remove_compiled_serving", "synchronize"]

logger = logging.getLogger(__name__)

# Values of the demos' --compile: "off" (eager), "auto" (compiled where it wins after warm-up),
# "on" (compiled wherever it compiles).
SERVING_COMPILE_CHOICES = ("off", "auto", "on")

Bucket = Tuple[int, int]


def check_serving_compile(value: str) -> str:
    """The owner of the ``--compile`` setting: returns it or raises ConfigError."""
    return check_choice("--compile", value, SERVING_COMPILE_CHOICES)


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor) if divisor > 1 else int(value)


def default_buckets(min_size_test: int, max_size_test: int,
                    size_divisibility: int = 32) -> List[Bucket]:
    """The (height, width) buckets that hold every image Detectron2's test-time resize makes.

    ``ResizeShortestEdge(min_size_test, max_size_test)`` gives the short side ``min_size_test``
    unless the long side would pass ``max_size_test``; so every landscape image fits in
    (min, max) and every portrait one in (max, min), once padded to ``size_divisibility``.

    Args:
        min_size_test: ``INPUT.MIN_SIZE_TEST`` (> 0).
        max_size_test: ``INPUT.MAX_SIZE_TEST`` (0: no limit; then the buckets are square).
        size_divisibility: the backbone's; bucket sides are rounded up to it.

    Returns:
        The landscape bucket, then the portrait one (one bucket when they coincide).
    """
    if min_size_test <= 0:
        raise ValueError(f"INPUT.MIN_SIZE_TEST {min_size_test} does not resize test images, so "
                         "no bucket holds them all: pass the buckets explicitly.")
    long_side = max(max_size_test, min_size_test) if max_size_test > 0 else min_size_test
    short = _round_up(min_size_test, size_divisibility)
    long = _round_up(long_side, size_divisibility)
    return [(short, long)] if short == long else [(short, long), (long, short)]


@dataclass
class BucketReport:
    """What warm-up found for one bucket.

    Attributes:
        bucket: (height, width) of the padded input.
        compile_seconds: the first call, compilation included (None: it failed).
        eager_ms, compiled_ms: best-of-a-few times of one call after warm-up (None: not timed).
        use_compiled: whether inputs in this bucket run the compiled graph.
        error: why compilation failed ("" if it did not).
    """

    bucket: Bucket
    compile_seconds: Optional[float] = None
    eager_ms: Optional[float] = None
    compiled_ms: Optional[float] = None
    use_compiled: bool = False
    error: str = ""


def _describe(error: BaseException) -> str:
    """The error's type and first line; for dynamo's wrappers (BackendCompilerFailed, ...) the
    error that caused it, whose message says what went wrong."""
    root = error
    while getattr(root, "inner_exception", None) or root.__cause__ is not None:
        root = getattr(root, "inner_exception", None) or root.__cause__
    lines = str(root).strip().splitlines()
    name = type(root).__name__ if root is error else \
        f"{type(error).__name__} from {type(root).__name__}"
    return f"{name}: {lines[0]}" if lines else name


class BucketedCompiledBackbone(Backbone):
    """Backbone + FPN compiled once per input-size bucket, with an eager fallback.

    Same interface as the backbone it wraps (``forward``, ``output_shape``,
    ``size_divisibility``, ``padding_constraints``; ``forward_any_layout`` for
    ``ResBackboneRCNN``), so it can stand in for ``model.backbone``.
    """

    def __init__(self, backbone: Backbone, buckets: Sequence[Bucket], mode: str = "auto",
                 backend: Any = "inductor", options: Optional[Dict[str, Any]] = None,
                 in_channels: int = 3) -> None:
        """
        Args:
            backbone: the eager backbone + FPN (``model.backbone``), in eval mode.
            buckets: (height, width) sizes, each a multiple of the backbone's size
                divisibility.
            mode: "auto" (compiled only where faster after warm-up) or "on".
            backend: ``torch.compile``'s backend (a name or a callable).
            options: ``torch.compile``'s backend options.
            in_channels: channels of the input images (for the warm-up inputs).
        """
        super().__init__()
        if check_serving_compile(mode) == "off":
            raise ValueError("BucketedCompiledBackbone needs --compile 'auto' or 'on'; with "
                             "'off' keep the eager backbone.")
        self.mode = mode
        self.eager = backbone
        divisor = max(int(getattr(backbone, "size_divisibility", 0) or 0), 1)
        # Smallest first; among equal areas, the order given (dict: ordered, no duplicates).
        self.buckets = sorted(dict.fromkeys((int(h), int(w)) for h, w in buckets),
                              key=lambda b: b[0] * b[1])
        bad = [b for b in self.buckets if b[0] <= 0 or b[1] <= 0 or b[0] % divisor
               or b[1] % divisor]
        if not self.buckets or bad:
            raise ValueError(f"Serving buckets {bad or list(buckets)} are invalid: give at least "
                             f"one (height, width), each side a positive multiple of the "
                             f"backbone's size divisibility {divisor}.")
        config = torch._dynamo.config
        limit = getattr(config, "recompile_limit", None) or config.cache_size_limit  # torch<2.6
        if len(self.buckets) > limit:
            raise ValueError(f"{len(self.buckets)} serving buckets, but torch._dynamo compiles "
                             f"at most {limit} graphs per function (recompile_limit): give fewer "
                             "buckets or raise torch._dynamo.config.recompile_limit.")
        self.in_channels = in_channels
        self.reports: Dict[Bucket, BucketReport] = {b: BucketReport(b) for b in self.buckets}
        self._strides = {name: shape.stride for name, shape in backbone.output_shape().items()}
        # One graph per bucket: dynamic=False, float32 NCHW contiguous inputs only.
        self._compiled: Callable = torch.compile(self._eager_features, dynamic=False,
                                                 backend=backend, options=options)
        self._failed = False
        self._logged_eager_sizes: set = set()
        self.train(backbone.training)  # a new module starts in training mode

    # -- the Backbone interface -------------------------------------------------------------

    def output_shape(self):
        return self.eager.output_shape()

    @property
    def size_divisibility(self) -> int:
        return self.eager.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.eager.padding_constraints

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features as the eager backbone's ``forward`` returns them (NCHW)."""
        features = self._features(x)
        if features is None:
            return self.eager(x)
        return {name: feature.float().contiguous() for name, feature in features.items()}

    def forward_any_layout(self, x: torch.Tensor,
                           keep_autocast_dtype: bool = False) -> Dict[str, torch.Tensor]:
        """As ``ResBackboneFPN.forward_any_layout`` (the wrapped backbone must have it)."""
        features = self._features(x)
        if features is None:
            return self.eager.forward_any_layout(x, keep_autocast_dtype=keep_autocast_dtype)
        if keep_autocast_dtype:
            return features
        return {name: feature.float() for name, feature in features.items()}

    # -- compiled path ----------------------------------------------------------------------

    def _eager_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What is compiled: features in the layout and dtype they are computed in."""
        if hasattr(self.eager, "forward_any_layout"):
            return self.eager.forward_any_layout(x, keep_autocast_dtype=True)
        return self.eager(x)

    def bucket_for(self, height: int, width: int) -> Optional[Bucket]:
        """The smallest bucket holding a (height, width) input (ties: the first given), or
        None."""
        return next((b for b in self.buckets if height <= b[0] and width <= b[1]), None)

    def _padded(self, x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
        # A fresh, ordinary (non-inference) contiguous tensor: the graphs' guards were made for
        # one, and an inference-mode tensor or another layout would compile a new graph.
        with torch.inference_mode(False):
            padded = torch.zeros((x.shape[0], x.shape[1]) + bucket, dtype=x.dtype,
                                 device=x.device)
            padded[:, :, :x.shape[2], :x.shape[3]].copy_(x)
        return padded

    def _crop(self, features: Dict[str, torch.Tensor], height: int,
              width: int) -> Dict[str, torch.Tensor]:
        cropped = {}
        for name, feature in features.items():
            stride = self._strides[name]
            crop = feature[:, :, :math.ceil(height / stride), :math.ceil(width / stride)]
            layout = (torch.channels_last if feature.is_contiguous(
                memory_format=torch.channels_last) and not feature.is_contiguous()
                else torch.contiguous_format)
            cropped[name] = crop.contiguous(memory_format=layout)
        return cropped

    def _log_eager_once(self, key: Any, message: str) -> None:
        if key not in self._logged_eager_sizes:
            self._logged_eager_sizes.add(key)
            logger.info(message)

    def _features(self, x: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """The compiled features, or None where the eager backbone must run."""
        if self._failed or self.training or torch.is_grad_enabled() or x.dim() != 4:
            return None
        if x.shape[0] != 1 or x.dtype != torch.float32:
            self._log_eager_once(("batch", x.shape[0], x.dtype), (
                f"Compiled serving takes one float32 image per call; a batch of {x.shape[0]} "
                f"{x.dtype} runs eagerly."))
            return None
        height, width = int(x.shape[2]), int(x.shape[3])
        bucket = self.bucket_for(height, width)
        if bucket is None:
            self._log_eager_once(("size", height, width), (
                f"Input {height}x{width} is larger than every serving bucket {self.buckets}; "
                "it runs eagerly."))
            return None
        if not self.reports[bucket].use_compiled:
            return None
        try:
            with torch.inference_mode(False), torch.no_grad():
                features = self._compiled(self._padded(x, bucket))
        except Exception as error:  # never let the compiler take a serving process down
            self._fall_back(error)
            return None
        return self._crop(features, height, width)

    def _fall_back(self, error: BaseException) -> None:
        logger.warning("Compiled backbone + FPN failed (%s); running eagerly from now on.",
                       _describe(error))
        self._failed = True
        for report in self.reports.values():
            report.use_compiled = False
            report.error = report.error or _describe(error)

    # -- warm-up ------------------------------------------------------------------------------

    def warm_up(self, device: Optional[torch.device] = None) -> List[BucketReport]:
        """Compile every bucket now and decide, per bucket, compiled or eager.

        Mode "auto" times eager and compiled on the bucket's input (interleaved, best of a few)
        and keeps the compiled graph only where it is faster; "on" keeps it wherever it
        compiled. Each bucket's compile time and decision are logged.

        Args:
            device: where the inputs are made (default: the backbone's parameters' device).

        Returns:
            One report per bucket, smallest first (also in ``self.reports``).
        """
        if device is None:
            device = next(self.eager.parameters()).device
        # The mode of serving calls (see _features): a graph is compiled for one grad mode.
        with torch.inference_mode(False), torch.no_grad():
            self._warm_up(device)
        return list(self.reports.values())

    def _warm_up(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        for bucket, report in self.reports.items():
            if self._failed:
                break
            # Normalised images are roughly unit-variance; the values only matter for timing.
            image = torch.randn((1, self.in_channels) + bucket, generator=generator).to(device)
            start = time.perf_counter()
            try:
                self._compiled(image)
                synchronize(device)
            except Exception as error:
                report.error = _describe(error)
                self._fall_back(error)
                break
            report.compile_seconds = time.perf_counter() - start
            report.use_compiled = True
            if self.mode == "auto":
                milliseconds = time_candidates({
                    "eager": lambda: _synchronized(self._eager_features, image, device),
                    "compiled": lambda: _synchronized(self._compiled, image, device)})
                report.eager_ms, report.compiled_ms = milliseconds["eager"], \
                    milliseconds["compiled"]
                report.use_compiled = report.compiled_ms < report.eager_ms
            logger.info(_decision(report, self.mode))


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work, so that a clock read after it times the work itself.

    A bare ``torch.cuda.synchronize()`` waits on cuda:0 only; CPU work is already finished.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synchronized(run: Callable, image: torch.Tensor, device: torch.device) -> Any:
    result = run(image)
    synchronize(device)
    return result


def _decision(report: BucketReport, mode: str) -> str:
    height, width = report.bucket
    text = f"Compiled serving, bucket {height}x{width}: compiled in {report.compile_seconds:.1f} s"
    if report.eager_ms is None:
        return text + f"; compiled graph used (--compile {mode})."
    choice = "compiled graph used" if report.use_compiled else "eager kept (faster here)"
    return (text + f"; eager {report.eager_ms:.1f} ms, compiled {report.compiled_ms:.1f} ms per "
            f"image: {choice}.")


def enable_compiled_serving(model: nn.Module, buckets: Sequence[Bucket], mode: str = "auto",
                            backend: Any = "inductor", options: Optional[Dict[str, Any]] = None,
                            warm_up: bool = True) -> Optional[BucketedCompiledBackbone]:
    """Put a :class:`BucketedCompiledBackbone` in place of ``model.backbone`` and warm it up.

    Args:
        model: a Detectron2 meta-architecture (``model.backbone``), in eval mode.
        buckets: see :func:`default_buckets`.
        mode: one of ``SERVING_COMPILE_CHOICES``; "off" changes nothing.
        backend, options: passed to ``torch.compile``.
        warm_up: compile every bucket now (else nothing runs compiled until
            :meth:`BucketedCompiledBackbone.warm_up` is called).

    Returns:
        The installed wrapper (its ``reports`` say what warm-up found), or None for "off".
    """
    if check_serving_compile(mode) == "off":
        return None
    if isinstance(model.backbone, BucketedCompiledBackbone):
        model.backbone = model.backbone.eager
    channels = len(getattr(model, "pixel_mean", [0, 0, 0]))
    wrapper = BucketedCompiledBackbone(model.backbone, buckets, mode=mode, backend=backend,
                                       options=options, in_channels=channels)
    model.backbone = wrapper
    if warm_up:
        start = time.perf_counter()
        wrapper.warm_up()
        used = [f"{h}x{w}" for (h, w), r in wrapper.reports.items() if r.use_compiled]
        logger.info("Compiled serving warm-up: %.1f s for %d bucket(s); compiled graph used for "
                    "%s.", time.perf_counter() - start, len(wrapper.buckets),
                    ", ".join(used) or "none (eager everywhere)")
    return wrapper


def remove_compiled_serving(model: nn.Module) -> None:
    """Put the eager backbone back in ``model`` (no-op without compiled serving)."""
    if isinstance(model.backbone, BucketedCompiledBackbone):
        model.backbone = model.backbone.eager
