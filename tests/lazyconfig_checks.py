"""What the new-baselines LazyConfigs turn into, read off the objects; runs on either flavour.

tests/test_lazyconfig_baselines.py calls these functions in its own process (Detectron2 v0.6)
and, through ``python -c``, in a process with upstream main first on PYTHONPATH, and compares
the two. Everything returned is plain JSON (names, numbers, shapes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(path.relative_to(REPO))
                 for path in (REPO / "configs" / "new_baselines").glob("*.py"))
DETECTRON2_CONFIG = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"

# Overrides as Detectron2's documentation and its users write them, for its own config tree.
HEAD_OVERRIDES = [
    "model.roi_heads.num_classes=3",
    "model.roi_heads.box_head.conv_dims=[32]",
    "model.roi_heads.box_head.fc_dims=[64]",
    "model.roi_heads.box_predictor.input_shape.channels=64",
    "model.roi_heads.mask_head.conv_dims=[32,32]",
    "model.proposal_generator.post_nms_topk=[64,32]",
]
# The backbone's own keys: norm and architecture of the bottom-up network, norm of the FPN.
BACKBONE_OVERRIDES = [
    "model.backbone.bottom_up.norm=BN",
    "model.backbone.norm=BN",
    "model.backbone.bottom_up.entry.name=resnet18",
]
OVERRIDES = HEAD_OVERRIDES + BACKBONE_OVERRIDES


def _load(config_file: str, overrides: Sequence[str]) -> Any:
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(REPO / config_file))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def _instantiate_on_meta(model_cfg: Any) -> Any:
    """The model with shapes only: every architecture in seconds, no memory."""
    import torch
    from detectron2.config import instantiate

    with torch.device("meta"):
        return instantiate(model_cfg)


def _shapes(module: Any) -> Dict[str, List[int]]:
    return {name: list(value.shape) for name, value in module.state_dict().items()}


def _type_names(module: Any, base: type) -> List[str]:
    return sorted({type(child).__name__ for child in module.modules() if isinstance(child, base)})


def model_facts(config_file: str, overrides: Sequence[str] = OVERRIDES) -> Dict[str, Any]:
    """The parts of the instantiated model that ``OVERRIDES`` and the speed-up keys decide."""
    import torch
    from detectron2.layers import ROIAlign
    from torch import nn

    from resbackbones.compat import detectron2_flavour

    model = _instantiate_on_meta(_load(config_file, overrides).model)
    heads = model.roi_heads
    predictor = heads.box_predictor
    box_head_fcs = [m.out_features for m in heads.box_head.modules() if isinstance(m, nn.Linear)]
    box_head_convs = [m.out_channels for m in heads.box_head.modules()
                      if isinstance(m, nn.Conv2d)]
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm)
    return {
        "flavour": detectron2_flavour().name,
        "meta_architecture": type(model).__name__,
        "roi_heads": type(heads).__name__,
        "proposal_generator": type(model.proposal_generator).__name__,
        "arch": model.backbone.bottom_up.entry.name,
        "num_classes": heads.num_classes,
        "cls_score": [predictor.cls_score.in_features, predictor.cls_score.out_features],
        "bbox_pred": [predictor.bbox_pred.in_features, predictor.bbox_pred.out_features],
        "mask_predictor_channels": heads.mask_head.predictor.out_channels,
        "box_head_convs": box_head_convs,
        "box_head_fcs": box_head_fcs,
        "post_nms_topk": [model.proposal_generator.post_nms_topk[True],
                          model.proposal_generator.post_nms_topk[False]],
        "bottom_up_norms": _type_names(model.backbone.bottom_up, norms),
        "fpn_norms": sorted({type(conv.norm).__name__ for conv in
                             [*model.backbone.lateral_convs, *model.backbone.output_convs]}),
        "roi_aligns": _type_names(heads, ROIAlign),
        "head_convs": sorted({type(m).__name__ for part in (model.proposal_generator, heads)
                              for m in part.modules()
                              if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}),
        "input_format": model.input_format,
        "head_shapes": {**{f"roi_heads.{k}": v for k, v in _shapes(heads).items()},
                        **{f"proposal_generator.{k}": v
                           for k, v in _shapes(model.proposal_generator).items()}},
        "nnpack": bool(getattr(torch, "_nnpack_available", lambda: False)()),
    }


def detectron2_head_shapes(overrides: Sequence[str] = HEAD_OVERRIDES) -> Dict[str, List[int]]:
    """State-dict shapes of the RPN and ROI heads of Detectron2's own new-baselines config with
    the same overrides: the reference that ours must equal."""
    from detectron2.config import LazyConfig

    from resbackbones.compat import detectron2_config

    cfg = LazyConfig.apply_overrides(detectron2_config(DETECTRON2_CONFIG), list(overrides))
    model = _instantiate_on_meta(cfg.model)
    return {**{f"roi_heads.{k}": v for k, v in _shapes(model.roi_heads).items()},
            **{f"proposal_generator.{k}": v
               for k, v in _shapes(model.proposal_generator).items()}}


def config_tree(node: Any, prefix: str = "") -> Dict[str, str]:
    """Every leaf path of a LazyConfig with its value as text (objects by qualified name,
    lambdas by their place): two configs with the same tree give the same dict."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        items = [(str(key), key) for key in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(str(index), index) for index in range(len(node))]
    else:
        return {prefix: _text(node)}
    tree: Dict[str, str] = {}
    for name, key in items:
        path = f"{prefix}.{name}" if prefix else name
        if OmegaConf.is_interpolation(node, key):
            tree[path] = str(node._get_node(key)._value())
        else:
            tree.update(config_tree(node[key], path))
    return tree


def _text(value: Any) -> str:
    if callable(value) and hasattr(value, "__qualname__"):
        name = value.__qualname__
        if name == "<lambda>":  # one per config load: compare where it was written
            return f"<lambda {Path(value.__code__.co_filename).name}>"
        return f"{getattr(value, '__module__', '')}.{name}"
    return repr(value)


def config_trees(config_file: str) -> Dict[str, Dict[str, str]]:
    """``config_tree`` of ours (``config_file``) and of Detectron2's new-baselines config."""
    from detectron2.config import LazyConfig

    from resbackbones.compat import detectron2_config

    return {"ours": config_tree(LazyConfig.load(str(REPO / config_file))),
            "detectron2": config_tree(detectron2_config(DETECTRON2_CONFIG))}


def main_flavour_report() -> str:
    """JSON of :func:`model_facts` and :func:`config_trees` for every config, and
    :func:`detectron2_head_shapes`: what the test reads from its main-flavour subprocess."""
    return json.dumps({
        "facts": {config: model_facts(config) for config in CONFIGS},
        "trees": {config: config_trees(config) for config in CONFIGS},
        "detectron2_head_shapes": detectron2_head_shapes(),
    })
