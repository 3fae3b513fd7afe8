"""``ResBackboneRCNN``: Detectron2's GeneralizedRCNN with faster CPU inference around the heads.

A profile of Mask R-CNN R50-FPN at 800x1333 on CPU (see BENCHMARKS.md) puts ~45% of the time
outside backbone + FPN: the RPN's 3x3 conv over P2-P6, the mask head's convs, and ROIAlign,
which torchvision runs on one thread. At CPU inference this meta-architecture:

* computes the RPN's and the mask head's 3x3 convs with NNPACK's Winograd kernels
  (:mod:`resbackbones.modeling.winograd`; float32, relative differences ~1e-5);
* runs the mask head's upsampling deconv and predictor channels-last (and, without Winograd, the
  RPN on the FPN's channels-last features and the whole mask head channels-last); the ROI heads
  get NCHW features, converted once (torchvision's CPU ROIAlign would re-layout them per call);
* splits ROIAlign's ROIs over all CPU threads (:class:`ParallelROIAlign`, bit-identical).

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

from resbackbones.modeling.fpn import ResBackboneFPN
from resbackbones.modeling.roi_align import parallelize_roi_align
from resbackbones.modeling.timm_backbone import CHANNELS_LAST_CHOICES
from resbackbones.modeling.winograd import nnpack_available, use_winograd_convolutions

__all__ = ["ResBackboneRCNN"]


@META_ARCH_REGISTRY.register()
class ResBackboneRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose inference runs the heads in the faster CPU layouts.

    Config: ``MODEL.META_ARCHITECTURE: "ResBackboneRCNN"`` (the default of this project's
    configs); ``MODEL.RESBACKBONE.CHANNELS_LAST`` ("auto": on CPU) and
    ``MODEL.RESBACKBONE.PARALLEL_ROI_ALIGN`` switch the speed-ups.
    """

    @configurable
    def __init__(self, *, heads_channels_last: str = "auto", parallel_roi_align: bool = True,
                 winograd: bool = True, **kwargs) -> None:
        """
        Args:
            heads_channels_last: "auto" (on for CPU inputs), "on" or "off": use channels-last
                layouts in the heads at inference.
            parallel_roi_align: split ROIAlign over all CPU threads at inference.
            winograd: NNPACK Winograd 3x3 convs in the RPN and ROI heads at CPU inference.
            kwargs: the arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        if heads_channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"MODEL.RESBACKBONE.CHANNELS_LAST {heads_channels_last!r} is "
                             f"invalid; valid: {', '.join(CHANNELS_LAST_CHOICES)}.")
        self.heads_channels_last = heads_channels_last
        if parallel_roi_align:
            parallelize_roi_align(self)
        winograd = winograd and nnpack_available()
        if winograd:
            use_winograd_convolutions(self.proposal_generator)
            use_winograd_convolutions(self.roi_heads)
        # Winograd convs take NCHW; the layers after them (deconv, 1x1 predictor) are ~1.8x
        # faster channels-last. Without Winograd the whole mask head is faster channels-last.
        for module in self.roi_heads.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.register_forward_pre_hook(self._channels_last_input)
        mask_head = getattr(self.roi_heads, "mask_head", None)
        if mask_head is not None and not winograd:
            mask_head.register_forward_pre_hook(self._channels_last_input)

    @classmethod
    def from_config(cls, cfg):
        arguments = super().from_config(cfg)
        if "RESBACKBONE" not in cfg.MODEL:  # a plain Detectron2 config: __init__'s defaults
            return arguments
        settings = cfg.MODEL.RESBACKBONE
        return {**arguments, "heads_channels_last": settings.CHANNELS_LAST,
                "parallel_roi_align": settings.PARALLEL_ROI_ALIGN, "winograd": settings.WINOGRAD}

    def _heads_use_channels_last(self, device: torch.device) -> bool:
        if self.training or torch.is_grad_enabled():
            return False
        if self.heads_channels_last == "auto":
            return device.type == "cpu"
        return self.heads_channels_last == "on"

    def _channels_last_input(self, module, args):
        features = args[0]
        if isinstance(features, torch.Tensor) and features.dim() == 4 and (
                self._heads_use_channels_last(features.device)):
            return (features.contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
        return None

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Same contract as :meth:`GeneralizedRCNN.inference`."""
        if not (isinstance(self.backbone, ResBackboneFPN) and detected_instances is None
                and self.proposal_generator is not None
                and self._heads_use_channels_last(self.device)):
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        features = self.backbone.forward_any_layout(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        nchw_features = {name: feature.contiguous() for name, feature in features.items()}
        results, _ = self.roi_heads(images, nchw_features, proposals, None)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results
