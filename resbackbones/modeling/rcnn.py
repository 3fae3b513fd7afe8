"""``ResBackboneRCNN``: Detectron2's GeneralizedRCNN with faster CPU inference around the heads.

A profile of Mask R-CNN R50-FPN at 800x1333 on CPU (see BENCHMARKS.md) puts ~45% of the time
outside backbone + FPN: the RPN's 3x3 conv over P2-P6, the mask head's convs, and ROIAlign,
which torchvision runs on one thread. At CPU inference this meta-architecture:

* computes the RPN's and the mask head's 3x3 convs with NNPACK's Winograd kernels
  (:mod:`resbackbones.modeling.winograd`; float32, relative differences ~1e-5);
* runs the mask head's upsampling deconv and predictor channels-last (and, without Winograd, the
  RPN on the FPN's channels-last features and the whole mask head channels-last); the ROI heads
  get NCHW features, converted once (torchvision's CPU ROIAlign would re-layout them per call);
* splits ROIAlign's ROIs over all CPU threads (:class:`ParallelROIAlign`, bit-identical);
* with ``MODEL.RESBACKBONE.INFERENCE_AMP`` (bf16 on CPUs with AVX512-BF16/AMX), runs the RPN
  and ROI heads under the same autocast as backbone + FPN: their convs and the box head's
  fully connected layers are most of the time left once backbone + FPN run in bf16. Box
  decoding, NMS and ROIAlign stay float32 (Detectron2 and torchvision cast), and the returned
  scores and masks are float32.

Weights, state-dict keys and training are those of GeneralizedRCNN, so checkpoints move freely
between the two meta-architectures.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances
from torch import nn

from resbackbones.modeling.fpn import (
    ResBackboneFPN,
    check_inference_amp,
    inference_autocast_dtype,
)
from resbackbones.modeling.kernel_choice import tuning_mode
from resbackbones.modeling.roi_align import with_parallel_roi_align
from resbackbones.modeling.serving import BucketedCompiledBackbone
from resbackbones.modeling.timm_backbone import check_channels_last
from resbackbones.modeling.winograd import nnpack_available, with_winograd_convolutions

__all__ = ["ResBackboneRCNN"]


class _ChannelsLastInput:
    """Forward pre-hook: hand a module its 4-d input channels-last at inference when the
    setting asks for it. Holds the setting by value, not the model (no reference cycle)."""

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __call__(self, module: nn.Module, args):
        features = args[0]
        if isinstance(features, torch.Tensor) and features.dim() == 4 and _heads_use_channels_last(
                self.setting, module.training, features.device):
            return (features.contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
        return None


def _heads_use_channels_last(setting: str, training: bool, device: torch.device) -> bool:
    if training or torch.is_grad_enabled():
        return False
    if setting == "auto":
        return device.type == "cpu"
    return setting == "on"


def _features_in_any_layout(backbone: nn.Module) -> bool:
    """Whether ``backbone`` has ``forward_any_layout``: a ResBackboneFPN, or compiled serving
    (``modeling/serving.py``) around one."""
    if isinstance(backbone, BucketedCompiledBackbone):
        backbone = backbone.eager
    return isinstance(backbone, ResBackboneFPN)


def _float_fields(instances: Instances) -> Instances:
    """``instances`` with its half-precision fields (scores, mask probabilities) in float32:
    what the heads return without autocast."""
    for name, value in instances.get_fields().items():
        if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
            instances.set(name, value.float())
    return instances


def _put_in_head_speedups(model: GeneralizedRCNN, winograd: bool,
                          parallel_roi_align: bool) -> bool:
    """Replace the layers of ``model``'s built heads by their speed-up twins, in place.

    The one place both config systems go through (YAML: ``from_config``; LazyConfig: the
    meta-architecture's keys), so that a config never has to wrap Detectron2's head nodes.

    Returns:
        Whether the heads' 3x3 convs are now Winograd convs (never without NNPACK).
    """
    winograd = bool(winograd) and nnpack_available()
    if winograd:
        if model.proposal_generator is not None:
            model.proposal_generator = with_winograd_convolutions(model.proposal_generator)
        model.roi_heads = with_winograd_convolutions(model.roi_heads)
    if parallel_roi_align:
        model.roi_heads = with_parallel_roi_align(model.roi_heads)
    return winograd


@META_ARCH_REGISTRY.register()
class ResBackboneRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose inference runs the heads in the faster CPU layouts.

    Config: ``MODEL.META_ARCHITECTURE: "ResBackboneRCNN"`` (the default of this project's
    configs); ``MODEL.RESBACKBONE.CHANNELS_LAST`` ("auto": on CPU),
    ``MODEL.RESBACKBONE.PARALLEL_ROI_ALIGN`` and ``MODEL.RESBACKBONE.WINOGRAD`` switch the
    speed-ups. In a LazyConfig the same switches are keys of the meta-architecture
    (``model.winograd_heads``, ``model.parallel_roi_align``, ``model.heads_channels_last``), so
    ``model.proposal_generator`` and ``model.roi_heads`` stay Detectron2's own nodes and
    Detectron2's overrides (``model.roi_heads.num_classes=3``) address them unchanged.

    Both paths hand over Detectron2's heads as built; ``__init__`` then puts the speed-up
    variants in (:class:`ParallelROIAlign`, the Winograd convs), constructed with the settings of
    the layers they replace and sharing their parameters, so state-dict keys are unchanged.
    """

    @configurable
    def __init__(self, *, heads_channels_last: str = "auto", winograd_heads: bool = False,
                 parallel_roi_align: bool = False, heads_inference_amp: str = "off",
                 **kwargs) -> None:
        """
        Args:
            heads_channels_last: "auto" (on for CPU inputs), "on" or "off": use channels-last
                layouts in the heads at inference.
            winograd_heads: replace the RPN's and ROI heads' 3x3 stride-1 convs by Winograd
                twins (where PyTorch has NNPACK; else the heads stay as given). Those take NCHW,
                so then only the mask head's deconv and predictor run channels-last.
            parallel_roi_align: replace the ROI heads' ROIAlign layers by
                :class:`ParallelROIAlign` (bit-identical, over all CPU threads at inference).
            heads_inference_amp: autocast of the RPN and ROI heads at inference, one of
                ``INFERENCE_AMP_CHOICES`` (as backbone + FPN: ``MODEL.RESBACKBONE.INFERENCE_AMP``);
                outputs are returned in float32.
            kwargs: the arguments of :class:`GeneralizedRCNN`, with Detectron2's heads as built.
        """
        super().__init__(**kwargs)
        self.winograd_heads = _put_in_head_speedups(self, winograd_heads, parallel_roi_align)
        self.parallel_roi_align = bool(parallel_roi_align)
        self.heads_channels_last = check_channels_last(heads_channels_last)
        self.heads_inference_amp = check_inference_amp(heads_inference_amp)
        # Winograd convs take NCHW; the layers after them (deconv, 1x1 predictor) are ~1.8x
        # faster channels-last. Without Winograd the whole mask head is faster channels-last.
        hook = _ChannelsLastInput(self.heads_channels_last)
        for module in self.roi_heads.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.register_forward_pre_hook(hook)
        mask_head = getattr(self.roi_heads, "mask_head", None)
        # Where Winograd is measured per shape (kernel_choice), the mask head's convs may stay
        # direct: give it channels-last input anyway (the measurement charges NNPACK the
        # conversion back to NCHW).
        if mask_head is not None and (not self.winograd_heads or tuning_mode() != "off"):
            mask_head.register_forward_pre_hook(hook)

    @classmethod
    def from_config(cls, cfg):
        arguments = super().from_config(cfg)
        if "RESBACKBONE" in cfg.MODEL:
            settings = cfg.MODEL.RESBACKBONE
            channels_last, parallel_roi_align, winograd, amp = (
                settings.CHANNELS_LAST, settings.PARALLEL_ROI_ALIGN, settings.WINOGRAD,
                settings.INFERENCE_AMP)
        else:  # a plain Detectron2 config: every speed-up with its default
            channels_last, parallel_roi_align, winograd, amp = "auto", True, True, "off"
        return {**arguments, "heads_channels_last": channels_last, "winograd_heads": winograd,
                "parallel_roi_align": parallel_roi_align, "heads_inference_amp": amp}

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Same contract as :meth:`GeneralizedRCNN.inference`."""
        channels_last = _heads_use_channels_last(self.heads_channels_last, self.training,
                                                 self.device)
        amp_dtype = None
        if not self.training and not torch.is_grad_enabled():
            amp_dtype = inference_autocast_dtype(self.heads_inference_amp, self.device)
        if not (_features_in_any_layout(self.backbone) and detected_instances is None
                and self.proposal_generator is not None and (channels_last or amp_dtype)):
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        # Under the heads' autocast the RPN takes the FPN's bf16 features as they are; the ROI
        # heads' ROIAlign computes in float32, so their NCHW float32 copy is made in one pass.
        features = (self.backbone.forward_any_layout(images.tensor,
                                                     keep_autocast_dtype=amp_dtype is not None)
                    if channels_last or amp_dtype else self.backbone(images.tensor))
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            proposals, _ = self.proposal_generator(images, features, None)
            nchw_features = {name: feature.to(torch.float32, memory_format=torch.contiguous_format)
                             for name, feature in features.items()}
            results, _ = self.roi_heads(images, nchw_features, proposals, None)
        if amp_dtype is not None:
            results = [_float_fields(instances) for instances in results]
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results
