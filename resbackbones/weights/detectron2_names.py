"""Key names of Detectron2's built-in ResNets and of Caffe2 (MSRA/FAIR) files <-> timm's names.

Detectron2 users own weights under three naming schemes; resbackbones keeps timm's names under
``body.``. The mapping is one-to-one for the layers the two share (plain ResNet/ResNeXt/Wide
ResNet, basic or bottleneck blocks)::

    Detectron2 (model_final)        Caffe2 (R-50.pkl)           resbackbones: body. + ...
    stem.conv1.weight               conv1_w                     conv1.weight
    stem.conv1.norm.*               res_conv1_bn_{s,b}          bn1.*
    res2.0.conv1.weight             res2_0_branch2a_w           layer1.0.conv1.weight
    res2.0.conv1.norm.*             res2_0_branch2a_bn_{s,b}    layer1.0.bn1.*
    res2.0.shortcut.weight          res2_0_branch1_w            layer1.0.downsample.0.weight
    res2.0.shortcut.norm.*          res2_0_branch1_bn_{s,b}     layer1.0.downsample.1.*

FPN and detection heads are Detectron2's own modules in both, so their names need no change.

Caffe2 files store each BatchNorm folded into a scale (``_s``) and a bias (``_b``): no running
statistics. Detectron2 leaves those at running mean 0 and running variance 1 (its
``FrozenBatchNorm2d`` fills them in when a state dict lacks them), so the same values are filled
in here, and the outputs equal Detectron2's built-in backbone loaded from the same file.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar

__all__ = [
    "DETECTRON2_BACKBONE_PREFIXES",
    "caffe2_to_timm_names",
    "detectron2_backbone_prefix",
    "detectron2_to_timm_key",
    "fill_caffe2_statistics",
    "detectron2_to_resbackbones",
    "has_caffe2_names",
    "has_detectron2_resnet_names",
    "resbackbones_to_detectron2",
    "timm_to_detectron2_key",
]

T = TypeVar("T")

# Where Detectron2's built-in ResNet sits in its models: FPN detectors ("backbone.bottom_up."),
# plain-backbone detectors ("backbone."), a bare backbone file (""), most specific first.
DETECTRON2_BACKBONE_PREFIXES: Tuple[str, ...] = ("backbone.bottom_up.", "backbone.",
                                                 "bottom_up.", "")

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_D2_KEY = re.compile(
    r"^(?:stem\.(?P<stem>conv1)|res(?P<stage>[2-5])\.(?P<block>\d+)\.(?P<layer>conv[123]|shortcut))"
    r"(?P<norm>\.norm)?\.(?P<field>\w+)$")
_TIMM_KEY = re.compile(
    r"^(?:(?P<stem>conv1|bn1)|layer(?P<stage>[1-4])\.(?P<block>\d+)\."
    r"(?P<layer>conv[123]|bn[123]|downsample\.[01]))\.(?P<field>\w+)$")
_C2_KEY = re.compile(
    r"^(?:(?P<stem_conv>conv1)_w|res_conv1_bn_(?P<stem_bn>s|b|rm|riv)|"
    r"res(?P<stage>[2-5])_(?P<block>\d+)_branch(?P<branch>1|2a|2b|2c)"
    r"(?:_w|_bn_(?P<bn>s|b|rm|riv)))$")
_C2_BN_FIELDS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}
# Classifier names in Caffe2 ImageNet files; timm's ResNet classifier is "fc".
_C2_CLASSIFIER = {"fc1000_w": "fc.weight", "fc1000_b": "fc.bias", "pred_w": "fc.weight",
                  "pred_b": "fc.bias"}
_D2_RESNET_START = re.compile(r"^(stem|res[2-5])\.")


def detectron2_to_timm_key(name: str) -> Optional[str]:
    """``"res2.0.conv1.norm.weight"`` -> ``"layer1.0.bn1.weight"``; None if not a ResNet key.

    Args:
        name: a key relative to Detectron2's ResNet module (no ``backbone.bottom_up.``).
    """
    match = _D2_KEY.match(name)
    if not match:
        return None
    field, norm = match["field"], bool(match["norm"])
    if (norm and field not in _BN_FIELDS) or (not norm and field != "weight"):
        return None
    if match["stem"]:
        return f"bn1.{field}" if norm else "conv1.weight"
    layer = match["layer"]
    if layer == "shortcut":
        module = "downsample.1" if norm else "downsample.0"
    else:
        module = f"bn{layer[-1]}" if norm else layer
    return f"layer{int(match['stage']) - 1}.{match['block']}.{module}.{field}"


def timm_to_detectron2_key(name: str) -> Optional[str]:
    """``"layer1.0.bn1.weight"`` -> ``"res2.0.conv1.norm.weight"``; None if Detectron2 has no such
    layer (deep stems of ResNet-D, SE modules, ...).

    Args:
        name: a timm ResNet key (no ``body.`` prefix).
    """
    match = _TIMM_KEY.match(name)
    if not match:
        return None
    field = match["field"]
    module = match["stem"] or match["layer"]
    is_norm = module.startswith("bn") or module == "downsample.1"
    if (is_norm and field not in _BN_FIELDS) or (not is_norm and field != "weight"):
        return None
    if match["stem"]:
        return "stem.conv1.norm." + field if is_norm else "stem.conv1.weight"
    prefix = f"res{int(match['stage']) + 1}.{match['block']}."
    if module.startswith("downsample"):
        return prefix + ("shortcut.norm." if is_norm else "shortcut.") + field
    return prefix + (f"conv{module[-1]}.norm." if is_norm else f"{module}.") + field


def has_detectron2_resnet_names(keys: Iterable[str]) -> bool:
    """True when some key is a Detectron2 built-in ResNet key (``stem.conv1``, ``res2.0.``)."""
    return any(_D2_RESNET_START.match(key[len(prefix):])
               for key in keys for prefix in DETECTRON2_BACKBONE_PREFIXES
               if key.startswith(prefix))


def has_caffe2_names(keys: Iterable[str]) -> bool:
    """True when some key is a Caffe2 ResNet blob name (``conv1_w``, ``res2_0_branch2a_w``)."""
    return any(_C2_KEY.match(key) for key in keys)


def detectron2_backbone_prefix(keys: Iterable[str]) -> Optional[str]:
    """The prefix under which a checkpoint holds Detectron2's ResNet (most specific first)."""
    keys = list(keys)
    for prefix in DETECTRON2_BACKBONE_PREFIXES:
        if any(key.startswith(prefix) and _D2_RESNET_START.match(key[len(prefix):])
               for key in keys):
            return prefix
    return None


def detectron2_to_resbackbones(
    state: Mapping[str, T], body_prefix: Optional[str] = None
) -> Tuple[Dict[str, T], Dict[str, str], List[str]]:
    """Rename Detectron2 built-in ResNet keys of a whole checkpoint to resbackbones names.

    Args:
        state: ``{key: tensor}`` of a Detectron2 model (``backbone.bottom_up.res2.0.conv1...``,
            FPN and heads) or of a bare Detectron2 backbone (``res2.0.conv1.weight``).
        body_prefix: where the timm body sits in the target model (e.g.
            ``"backbone.bottom_up.body."``); default: the Detectron2 prefix + ``"body."``.

    Returns:
        ``(renamed state, {new key: old key} for renamed keys, unconvertible ResNet keys)``. Keys
        outside the ResNet (FPN, heads) are kept as they are; unconvertible ResNet keys (e.g.
        deformable-conv offsets) are kept under their old names, so that loading reports them.
    """
    prefix = detectron2_backbone_prefix(state)
    if prefix is None:
        return dict(state), {}, []
    target = body_prefix if body_prefix is not None else prefix + "body."
    renamed: Dict[str, T] = {}
    sources: Dict[str, str] = {}
    unconvertible: List[str] = []
    for key, value in state.items():
        relative = key[len(prefix):] if key.startswith(prefix) else None
        if relative is None or not _D2_RESNET_START.match(relative):
            renamed[key] = value
            continue
        timm_key = detectron2_to_timm_key(relative)
        new_key = None if timm_key is None else target + timm_key
        _store_renamed(key, new_key, value, renamed, sources, unconvertible)
    return renamed, sources, unconvertible


def _store_renamed(old: str, new: Optional[str], value: T, renamed: Dict[str, T],
                   sources: Dict[str, str], unconvertible: List[str]) -> None:
    """Store ``value`` under its ``new`` name; without one, keep ``old`` and report it, so that
    loading lists it instead of dropping it silently."""
    if new is None:
        unconvertible.append(old)
        renamed[old] = value
    else:
        renamed[new] = value
        sources[new] = old


def resbackbones_to_detectron2(
    state: Mapping[str, T], body_prefix: str = "backbone.bottom_up.body."
) -> Tuple[Dict[str, T], List[str]]:
    """Rename resbackbones keys (timm names under ``body_prefix``) to Detectron2's ResNet names.

    ``num_batches_tracked`` counters are dropped (Detectron2's FrozenBN has none).

    Args:
        state: ``{key: tensor}`` of a resbackbones model or backbone file.
        body_prefix: where the timm body is; it becomes ``body_prefix`` minus ``"body."``.

    Returns:
        ``(renamed state, body keys with no Detectron2 equivalent)``. The caller decides whether
        the second list is an error (it is, for a conversion that must be complete).
    """
    if not body_prefix.endswith("body."):
        raise ValueError(f"body_prefix must end with 'body.', got {body_prefix!r}.")
    target = body_prefix[: -len("body.")]
    renamed: Dict[str, T] = {}
    unconvertible: List[str] = []
    for key, value in state.items():
        if not key.startswith(body_prefix):
            renamed[key] = value
            continue
        if key.endswith(".num_batches_tracked"):
            continue
        d2_key = timm_to_detectron2_key(key[len(body_prefix):])
        if d2_key is None:
            unconvertible.append(key)
        else:
            renamed[target + d2_key] = value
    return renamed, unconvertible


def caffe2_to_timm_names(
    blobs: Mapping[str, T],
) -> Tuple[Dict[str, T], Dict[str, str], List[str], List[str]]:
    """Rename a Caffe2 ResNet's blobs (MSRA ``R-50.pkl``, FAIR ``X-101-32x8d.pkl``) to timm names.

    Args:
        blobs: ``{blob name: array}`` (the ``"blobs"`` of the file, or the file itself).

    Returns:
        ``(tensors in timm names, {timm name: blob name}, ignored blob names, unknown blob
        names)``. Ignored: optimizer momenta (``*_momentum``). Unknown blobs (other layer types,
        GroupNorm files) are returned under their own names so that loading reports them as
        unexpected. Missing running statistics are *not* filled here: see
        :func:`fill_caffe2_statistics`.
    """
    tensors: Dict[str, T] = {}
    sources: Dict[str, str] = {}
    ignored: List[str] = []
    unknown: List[str] = []
    for name, value in blobs.items():
        if name.endswith("_momentum"):
            ignored.append(name)
            continue
        _store_renamed(name, _caffe2_to_timm_key(name), value, tensors, sources, unknown)
    return tensors, sources, ignored, unknown


def _caffe2_to_timm_key(name: str) -> Optional[str]:
    if name in _C2_CLASSIFIER:
        return _C2_CLASSIFIER[name]
    match = _C2_KEY.match(name)
    if not match:
        return None
    if match["stem_conv"]:
        return "conv1.weight"
    if match["stem_bn"]:
        return "bn1." + _C2_BN_FIELDS[match["stem_bn"]]
    prefix = f"layer{int(match['stage']) - 1}.{match['block']}."
    branch, bn = match["branch"], match["bn"]
    if branch == "1":
        return prefix + (f"downsample.1.{_C2_BN_FIELDS[bn]}" if bn else "downsample.0.weight")
    index = _C2_BRANCH[branch]
    return prefix + (f"bn{index}.{_C2_BN_FIELDS[bn]}" if bn else f"conv{index}.weight")


def fill_caffe2_statistics(tensors: Dict[str, T], zeros_like, ones_like) -> List[str]:
    """Add running mean 0 / variance 1 for each BatchNorm that has a scale but no statistics.

    This is what Detectron2's ``FrozenBatchNorm2d`` does when a Caffe2 state dict lacks them, so
    the normalisation is ``x * scale / sqrt(1 + eps) + bias`` in both libraries.

    Args:
        tensors: timm-named tensors (changed in place).
        zeros_like, ones_like: functions making a tensor like the scale (torch or numpy).

    Returns:
        The keys added.
    """
    added = []
    for key in [k for k in tensors if k.endswith(".weight")]:
        module = key[: -len(".weight")]
        is_norm = module.endswith(("bn1", "bn2", "bn3", "downsample.1"))
        if not is_norm:
            continue
        for field, make in (("running_mean", zeros_like), ("running_var", ones_like)):
            name = f"{module}.{field}"
            if name not in tensors:
                tensors[name] = make(tensors[key])
                added.append(name)
    return added
