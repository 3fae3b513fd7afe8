"""A Detectron2 ``Backbone`` around a timm model: res2..res5 at strides 4, 8, 16, 32.

The timm model is kept whole (minus its classifier and any stage after the last requested
output) under the attribute ``body`` and run with timm's ``forward_intermediates``. So the
state-dict keys of this module are timm's own names with a ``body.`` prefix::

    body.conv1.weight, body.layer1.0.conv1.weight, ...         (ResNet, ResNeXt, SE, -D, -RS)
    body.stem.conv.weight, body.stages.0.blocks.0.conv1.weight  (ResNetV2)

and, inside Detectron2's FPN, ``backbone.bottom_up.body.<timm name>``. These names are a public
interface (released checkpoints use them): a timm or torchvision ImageNet checkpoint loads with
only the ``body.`` prefix added.

Pre-activation ResNetV2: stage outputs are the un-normalised residual stream (timm keeps one
norm, after the last stage). ``res5`` is returned after that final norm + ReLU, as timm's
classifier sees it; ``res2``..``res4`` are the raw stage outputs, as timm's ``features_only``
returns them.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import timm
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from timm.layers import freeze_batch_norm_2d
from torch import nn

from resbackbones.catalog import STAGE_NAMES, CatalogEntry
from resbackbones.modeling.inference import FoldedInferenceCopy
from resbackbones.modeling.norms import convert_norm

__all__ = ["TimmResNetBackbone", "select_stride_indices", "STAGE_STRIDES",
           "CHANNELS_LAST_CHOICES"]

logger = logging.getLogger(__name__)

# Values of MODEL.RESBACKBONE.CHANNELS_LAST.
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
# Stride of each Detectron2 stage name.
STAGE_STRIDES: Dict[str, int] = dict(zip(STAGE_NAMES, (4, 8, 16, 32)))


def select_stride_indices(feature_info, name: str = "") -> List[int]:
    """Pick the timm ``feature_info`` indices that give strides 4, 8, 16 and 32.

    For each stride the last feature with that reduction is taken (the end of the stage).

    Args:
        feature_info: a timm model's ``feature_info`` (list of dicts or ``FeatureInfo``).
        name: architecture name, for the error message.

    Returns:
        Four indices, for res2..res5.
    """
    info = list(feature_info.info if hasattr(feature_info, "info") else feature_info)
    indices = []
    for stride in STAGE_STRIDES.values():
        matches = [i for i, item in enumerate(info) if int(item["reduction"]) == stride]
        if not matches:
            available = [int(item["reduction"]) for item in info]
            raise ValueError(f"Architecture '{name}' has no feature at stride {stride} (its "
                             f"features have strides {available}); resbackbones needs 4, 8, 16 "
                             "and 32.")
        indices.append(matches[-1])
    return indices


def _create_timm_model(timm_name: str) -> nn.Module:
    """``timm.create_model`` with Detectron2's ResNet initialisation for training from scratch.

    timm zero-initialises the last BN of every residual block (``zero_init_last``); Detectron2's
    built-in ResNet does not, because that hurt training from scratch. Measured here (Mask R-CNN
    R18-FPN from scratch, 120 iterations on the synthetic set): box/mask AP 1.7/2.8 with timm's
    default, 3.8/5.0 without it (Detectron2's built-in R18: 7.6/8.9). Pretrained weights
    overwrite the initialisation, so this only matters from scratch.
    """
    try:
        return timm.create_model(timm_name, pretrained=False, zero_init_last=False)
    except TypeError:  # a timm family without that option
        return timm.create_model(timm_name, pretrained=False)


def _top_level_name(module_name: str) -> str:
    return module_name.split(".")[0]


class TimmResNetBackbone(Backbone):
    """Detectron2 bottom-up backbone built from a catalog entry.

    Outputs ``{"res2": ..., "res5": ...}`` (those in ``out_features``); ``output_shape()`` gives
    their channels and strides from the catalog entry.
    """

    def __init__(
        self,
        entry: CatalogEntry,
        out_features: Sequence[str] = STAGE_NAMES,
        norm: str = "BN",
        channels_last: str = "off",
        fold_bn_for_inference: bool = False,
        compile_for_inference: bool = False,
    ) -> None:
        """
        Args:
            entry: the catalog entry (``resbackbones.catalog.get_entry``).
            out_features: subset of ``("res2", "res3", "res4", "res5")`` to return; stages after
                the last one are not built.
            norm: one of ``resbackbones.config.VALID_NORMS``.
            channels_last: "on", "off" or "auto" (on for CPU inputs and under autocast).
            fold_bn_for_inference: in eval mode without grad, run a BN-folded copy of ``body``.
            compile_for_inference: ``torch.compile`` that copy (eager fallback on failure).
        """
        super().__init__()
        if channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"MODEL.RESBACKBONE.CHANNELS_LAST {channels_last!r} is invalid; "
                             f"valid: {', '.join(CHANNELS_LAST_CHOICES)}.")
        self.channels_last = channels_last
        # FPN builders set this: the FPN converts its own outputs back to NCHW once.
        self.return_channels_last = False
        self.fold_bn_for_inference = fold_bn_for_inference
        self._inference_body = FoldedInferenceCopy(compile_for_inference=compile_for_inference)
        unknown = [name for name in out_features if name not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"MODEL.RESBACKBONE.OUT_FEATURES {list(out_features)} is invalid: "
                             f"use a non-empty subset of {list(STAGE_NAMES)}.")
        self.entry = entry
        self._out_features = [name for name in STAGE_NAMES if name in out_features]
        body = _create_timm_model(entry.timm_name)
        if not hasattr(body, "forward_intermediates"):
            raise ValueError(f"timm model '{entry.timm_name}' has no forward_intermediates(); "
                             "it cannot be used as a resbackbones backbone.")
        stage_indices = select_stride_indices(body.feature_info, entry.name)
        self._stage_index = dict(zip(STAGE_NAMES, stage_indices))
        # feature_info describes the unpruned model: keep what freezing and weights need.
        self._stage_module_names = {
            stage: body.feature_info[index]["module"] for stage, index in self._stage_index.items()
        }
        self._classifier = body.pretrained_cfg.get("classifier") or ""
        self._indices = [self._stage_index[name] for name in self._out_features]
        body.prune_intermediate_layers(self._indices, prune_norm=False, prune_head=True)
        self.body = convert_norm(body, norm)
        self.norm = norm
        self._out_feature_channels = {
            name: int(c) for name, c in zip(STAGE_NAMES, entry.channels) if name in out_features
        }
        self._out_feature_strides = {
            name: int(s) for name, s in zip(STAGE_NAMES, entry.strides) if name in out_features
        }

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    @property
    def classifier_name(self) -> str:
        """Module name of the timm classifier (``fc`` or ``head.fc``), dropped from this model."""
        return self._classifier

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, shape (N, 3, H, W), already normalised.

        Returns:
            ``{name: tensor}`` for each name in ``out_features``.
        """
        if x.dim() != 4:
            raise ValueError(f"TimmResNetBackbone takes (N, C, H, W) input, got shape "
                             f"{tuple(x.shape)}.")
        channels_last = self.uses_channels_last(x)
        if channels_last:
            # Detectron2's ImageList makes the batch NCHW-contiguous; convert here, once.
            x = x.contiguous(memory_format=torch.channels_last)
        body = self.body
        if self.fold_bn_for_inference and not self.training and not torch.is_grad_enabled():
            body = self._inference_body.get(self.body, channels_last)
        features = body.forward_intermediates(
            x, indices=self._indices, norm=True, stop_early=True, intermediates_only=True
        )
        if channels_last and not self.return_channels_last:
            features = [feature.contiguous() for feature in features]
        return dict(zip(self._out_features, features))

    def uses_channels_last(self, x: torch.Tensor) -> bool:
        """Whether this forward runs channels-last (see ``channels_last`` in ``__init__``)."""
        if self.channels_last == "auto":
            return x.device.type == "cpu" or torch.is_autocast_enabled(x.device.type)
        return self.channels_last == "on"

    def stage_module_names(self) -> Dict[str, List[str]]:
        """Return the ``body`` submodule names of each freezable part, in forward order.

        Keys are ``"stem"`` and ``"res2"``..``"res5"`` (stages that were built). The stem is every
        top-level module before the first stage; top-level modules after the last stage (the
        final norm of ResNetV2) belong to the last stage.
        """
        children = [name for name, _ in self.body.named_children()]
        first_top = _top_level_name(self._stage_module_names["res2"])
        stem = children[: children.index(first_top)]
        groups: Dict[str, List[str]] = {"stem": stem}
        built = STAGE_NAMES[: STAGE_NAMES.index(self._out_features[-1]) + 1]
        for stage in built:
            groups[stage] = [self._stage_module_names[stage]]
        last_top = _top_level_name(self._stage_module_names[built[-1]])
        trailing = [
            name for name in children[children.index(last_top) + 1:]
            if any(True for _ in self.body.get_submodule(name).parameters())
            or any(True for _ in self.body.get_submodule(name).buffers())
        ]
        groups[built[-1]] = groups[built[-1]] + trailing
        return groups

    def freeze(self, freeze_at: int = 0) -> "TimmResNetBackbone":
        """Freeze the stem and the first stages, with Detectron2's ``FREEZE_AT`` meaning.

        ``0``: nothing; ``1``: the stem; ``2``: stem and res2; ... ``5``: everything. Frozen parts
        get ``requires_grad=False`` and their BatchNorms become frozen (timm's
        ``freeze_batch_norm_2d``, which keeps BatchNormAct2d's activation).

        Returns:
            self
        """
        if not 0 <= int(freeze_at) <= 5:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be 0..5 (0 nothing, 1 stem, 2 stem "
                             f"and res2, ..., 5 all), got {freeze_at}.")
        for level, (group, names) in enumerate(self.stage_module_names().items(), start=1):
            if level > freeze_at:
                break
            for name in names:
                module = self.body.get_submodule(name)
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
                frozen = freeze_batch_norm_2d(module)
                if frozen is not module:
                    _set_submodule(self.body, name, frozen)
        return self


def _set_submodule(root: nn.Module, dotted_name: str, module: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent: Optional[nn.Module] = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
