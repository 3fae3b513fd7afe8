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
from detectron2.modeling import Backbone
from timm.layers import freeze_batch_norm_2d
from torch import nn

from resbackbones.catalog import STAGE_NAMES, CatalogEntry, select_stride_indices
from resbackbones.errors import ConfigError, check_choice
from resbackbones.modeling.inference import FoldedInferenceCopy, is_compiling
from resbackbones.modeling.norms import convert_norm

__all__ = ["TimmBackbone", "CHANNELS_LAST_CHOICES", "check_channels_last", "check_drop_path_rate",
           "check_freeze_at", "check_out_features"]

logger = logging.getLogger(__name__)

# Values of MODEL.RESBACKBONE.CHANNELS_LAST.
CHANNELS_LAST_CHOICES = ("auto", "on", "off")


def check_channels_last(value: str) -> str:
    """The owner of ``MODEL.RESBACKBONE.CHANNELS_LAST``: returns it or raises ConfigError."""
    return check_choice("MODEL.RESBACKBONE.CHANNELS_LAST", value, CHANNELS_LAST_CHOICES)


def channels_last_applies(setting: str, device_type: str, training: bool, autocast: bool) -> bool:
    """The rule behind ``MODEL.RESBACKBONE.CHANNELS_LAST``.

    "auto": on the CPU always (measured gains in BENCHMARKS.md); on CUDA only at inference under
    autocast. CUDA training stays NCHW until a GPU measurement shows channels-last pays there
    (NHWC activations with NCHW weights re-layout the weights at every step; see
    ``tools/gpu_check.py``). "on" and "off" force it.
    """
    if setting == "auto":
        return device_type == "cpu" or (not training and autocast)
    return setting == "on"


def check_out_features(value: Sequence[str]) -> List[str]:
    """The owner of ``MODEL.RESBACKBONE.OUT_FEATURES``: returns them in stage order or raises."""
    if not value or any(name not in STAGE_NAMES for name in value):
        raise ConfigError(f"MODEL.RESBACKBONE.OUT_FEATURES {list(value)} is invalid: use a "
                          f"non-empty subset of {list(STAGE_NAMES)}.")
    return [name for name in STAGE_NAMES if name in value]


def check_freeze_at(value: int) -> int:
    """The owner of ``MODEL.BACKBONE.FREEZE_AT`` for resbackbones backbones."""
    if not 0 <= int(value) <= 5:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT {value} is invalid; valid: 0 (nothing) .. 5 "
                          "(everything): 1 freezes the stem, 2 the stem and res2, and so on.")
    return int(value)


def check_drop_path_rate(value: float) -> float:
    """The owner of ``MODEL.RESBACKBONE.DROP_PATH_RATE``: returns it as a float or raises.

    A rate of 1 would drop every residual branch of the last block on every step, so the valid
    range is [0, 1).
    """
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not 0.0 <= rate < 1.0:  # also refuses NaN
        raise ConfigError(f"MODEL.RESBACKBONE.DROP_PATH_RATE {value!r} is invalid; valid: a "
                          "number in [0, 1) (0 turns stochastic depth off; 0.1-0.3 is usual).")
    return rate


def _create_timm_model(timm_name: str, drop_path_rate: float = 0.0) -> nn.Module:
    """``timm.create_model`` with Detectron2's ResNet initialisation for training from scratch.

    ``drop_path_rate`` > 0 is passed to timm, which builds the stochastic-depth (DropPath)
    modules with a rate rising linearly over the blocks up to it; at 0 it is not passed at all,
    so the model is exactly the one built without the setting.

    timm zero-initialises the last BN of every residual block (``zero_init_last``); Detectron2's
    built-in ResNet does not, because that hurt training from scratch. Measured here (Mask R-CNN
    R18-FPN from scratch, 120 iterations on the synthetic set): box/mask AP 1.7/2.8 with timm's
    default, 3.8/5.0 without it (Detectron2's built-in R18: 7.6/8.9). Pretrained weights
    overwrite the initialisation, so this only matters from scratch.
    """
    options = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
    try:
        return timm.create_model(timm_name, pretrained=False, zero_init_last=False, **options)
    except TypeError:  # a timm family without that option
        pass
    try:
        return timm.create_model(timm_name, pretrained=False, **options)
    except TypeError as error:
        if not options:
            raise
        raise ConfigError(f"MODEL.RESBACKBONE.DROP_PATH_RATE {drop_path_rate} is set, but timm "
                          f"model '{timm_name}' takes no drop_path_rate ({error}); valid for "
                          "it: 0.") from error


def _top_level_name(module_name: str) -> str:
    return module_name.split(".")[0]


class TimmBackbone(Backbone):
    """Detectron2 bottom-up backbone around any timm model, built from a catalog entry.

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
        return_channels_last: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        """
        Args:
            entry: the catalog entry (``resbackbones.catalog.get_entry``).
            out_features: subset of ``("res2", "res3", "res4", "res5")`` to return; stages after
                the last one are not built.
            norm: one of ``resbackbones.modeling.norms.NORM_CHOICES``.
            channels_last: "on", "off" or "auto" (on for CPU inputs and under autocast).
            fold_bn_for_inference: in eval mode without grad, run a BN-folded copy of ``body``.
            compile_for_inference: ``torch.compile`` that copy (eager fallback on failure).
            return_channels_last: hand channels-last features on as they are (the FPN builders
                set it: the FPN converts its own outputs back to NCHW once).
            drop_path_rate: stochastic depth, timm's ``drop_path_rate``: in training, the
                residual branch of block ``i`` of ``N`` is dropped with probability
                ``rate * i / (N - 1)``; eval mode (and so the BN-folded copy and exports) never
                drops. 0 builds the model without DropPath modules.
        """
        super().__init__()
        self.channels_last = check_channels_last(channels_last)
        self.return_channels_last = return_channels_last
        self.fold_bn_for_inference = fold_bn_for_inference
        self._inference_body = FoldedInferenceCopy(compile_for_inference=compile_for_inference)
        self.entry = entry
        self._out_features = check_out_features(out_features)
        self.drop_path_rate = check_drop_path_rate(drop_path_rate)
        body = _create_timm_model(entry.timm_name, self.drop_path_rate)
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
            raise ValueError(f"TimmBackbone takes (N, C, H, W) input, got shape "
                             f"{tuple(x.shape)}.")
        channels_last = self.uses_channels_last(x)
        if channels_last:
            # Detectron2's ImageList makes the batch NCHW-contiguous; convert here, once.
            x = x.contiguous(memory_format=torch.channels_last)
        body = self.body
        # While torch.compile traces backbone + FPN (modeling/serving.py) the graph computes the
        # norms itself (fused with their activations): the folded copy's bookkeeping (tensor
        # versions, data pointers) cannot be traced.
        if (self.fold_bn_for_inference and not self.training and not torch.is_grad_enabled()
                and not is_compiling()):
            body = self._inference_body.get(self.body, channels_last)
        features = body.forward_intermediates(
            x, indices=self._indices, norm=True, stop_early=True, intermediates_only=True
        )
        if channels_last and not self.return_channels_last:
            features = [feature.contiguous() for feature in features]
        return dict(zip(self._out_features, features))

    def uses_channels_last(self, x: torch.Tensor) -> bool:
        """Whether this forward runs channels-last (see :func:`channels_last_applies`)."""
        device = x.device.type
        return channels_last_applies(
            self.channels_last, device, self.training,
            autocast=device != "cpu" and torch.is_autocast_enabled(device))

    def train(self, mode: bool = True) -> "TimmBackbone":
        """Also drops the BN-folded inference copy when training resumes (it would otherwise
        hold a second set of weights, on the GPU too, through the whole training phase)."""
        if mode:
            self._inference_body.clear()
        return super().train(mode)

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

    def freeze(self, freeze_at: int = 0) -> "TimmBackbone":
        """Freeze the stem and the first stages, with Detectron2's ``FREEZE_AT`` meaning.

        ``0``: nothing; ``1``: the stem; ``2``: stem and res2; ... ``5``: everything. Frozen parts
        get ``requires_grad=False`` and their BatchNorms become frozen (timm's
        ``freeze_batch_norm_2d``, which keeps BatchNormAct2d's activation).

        Returns:
            self
        """
        freeze_at = check_freeze_at(freeze_at)
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
