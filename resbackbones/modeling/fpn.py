"""Detectron2's FPN with the speed-ups that must wrap backbone + FPN as a whole.

The bottom-up network may run channels-last and under autocast; the ROI heads must not
(torchvision's CPU ROIAlign makes every channels-last input contiguous again, on every call, and
Detectron2's heads expect the features in float32; ``ResBackboneRCNN`` puts them under its own
autocast where ``INFERENCE_AMP`` asks). So features leave here as float32 NCHW, once.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from detectron2.modeling import FPN

from resbackbones.errors import check_choice
from resbackbones.modeling.cpu_info import cpu_info
from resbackbones.modeling.winograd import with_winograd_convolutions

__all__ = ["ResBackboneFPN", "INFERENCE_AMP_CHOICES", "check_inference_amp",
           "inference_autocast_dtype"]

# Values of MODEL.RESBACKBONE.INFERENCE_AMP.
INFERENCE_AMP_CHOICES = ("off", "auto", "bf16", "fp16")


def check_inference_amp(value: str) -> str:
    """The owner of ``MODEL.RESBACKBONE.INFERENCE_AMP``: returns it or raises ConfigError."""
    return check_choice("MODEL.RESBACKBONE.INFERENCE_AMP", value, INFERENCE_AMP_CHOICES)


def inference_autocast_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``setting`` on ``device`` (None: full precision).

    "auto" picks bfloat16 where the device computes it natively (recent NVIDIA GPUs; CPUs with
    AVX512-BF16 or AMX, read from the CPU's flags: oneDNN also accepts bf16 on plain AVX-512,
    emulated and slower than float32), else float16 on CUDA and off on CPU.
    """
    check_inference_amp(setting)
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    mkldnn = getattr(torch.backends, "mkldnn", None)
    supports_bf16 = bool(mkldnn and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
                         and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.bfloat16 if supports_bf16 and cpu_info().native_bf16 else None


class ResBackboneFPN(FPN):
    """Detectron2's :class:`FPN`, plus inference autocast; ``forward`` returns NCHW float32."""

    def __init__(self, *args, inference_amp: str = "off", winograd: bool = False, **kwargs):
        """
        Args:
            inference_amp: one of ``INFERENCE_AMP_CHOICES``, for inference only.
            winograd: compute the 3x3 output convs with NNPACK's Winograd kernels at CPU
                inference (``resbackbones.modeling.winograd``).
            args, kwargs: those of Detectron2's :class:`FPN`.
        """
        super().__init__(*args, **kwargs)
        self.inference_amp = check_inference_amp(inference_amp)
        if winograd:
            # Detectron2's FPN registers each output conv twice: as attribute fpn_output<N>
            # and in the list output_convs. Both get the Winograd module (same parameters).
            for index, output_conv in enumerate(self.output_convs):
                replacement = with_winograd_convolutions(output_conv)
                for name, child in self.named_children():
                    if child is output_conv:
                        setattr(self, name, replacement)
                self.output_convs[index] = replacement

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: feature.contiguous() for name, feature in self.forward_any_layout(x).items()}

    def forward_any_layout(self, x: torch.Tensor,
                           keep_autocast_dtype: bool = False) -> Dict[str, torch.Tensor]:
        """Features in the memory format they were computed in (channels-last or not); float32
        unless the caller runs under autocast (training AMP).

        For callers that convert to NCHW themselves, only where it pays: ``ResBackboneRCNN``
        runs the RPN on channels-last features and hands NCHW copies to the ROI heads.

        Args:
            x: the padded image batch.
            keep_autocast_dtype: return the features of this FPN's inference autocast in its
                half-precision dtype (for heads that run under the same autocast: saves a
                float32 copy of every level, ~70 MB for P2 at 800x1333).
        """
        dtype = None
        if not self.training and not torch.is_grad_enabled():
            dtype = inference_autocast_dtype(self.inference_amp, x.device)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, dtype=dtype):
            outputs = super().forward(x)
        # Only where this FPN's own autocast ran: the heads are not meant to see half precision.
        # (Under training AMP, SOLVER.AMP, Detectron2's heads take what autocast gives them.)
        if keep_autocast_dtype:
            return outputs
        return {name: feature.float() for name, feature in outputs.items()}
