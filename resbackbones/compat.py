"""Detectron2 v0.6 and upstream main: every difference the library meets, in one place.

Both call themselves ``0.6``, so the flavour is told by capability, not by version string: upstream
main has ``detectron2.utils.comm.create_local_process_group`` (added after v0.6), v0.6 does not.
The library runs on either without any of the installer's source rewrites (those only repair
v0.6 itself). What differs, and how it is met here:

==========================================  =================================================
difference                                  met by
==========================================  =================================================
``launch()``: v0.6 asserts CUDA (unpatched);  the library spawns its own workers
main has no ``backend=`` and picks NCCL       (:func:`resbackbones.engine.distributed.launch`),
whenever CUDA exists, even for a CPU run      one backend chosen from the run's device
``create_ddp_model`` passes ``device_ids``    :func:`create_ddp_model` (no ``device_ids`` for a
for CPU modules (DDP refuses them)            CPU module)
``detectron2.model_zoo`` imports              :func:`detectron2_config_file` /
``pkg_resources`` (gone in setuptools 81)     :func:`detectron2_config` (``importlib.resources``,
                                              or a source checkout's ``configs/``)
main's ``DefaultTrainer`` saves and reads a   :func:`trainer_state_dict` /
``_trainer`` key; v0.6's checkpoints lack it  :func:`load_trainer_state` (written always, read
                                              when present)
main's ``SemSegEvaluator`` adds               :func:`drop_boundary_iou` (one set of keys on
``BoundaryIoU-*`` keys (NaN when absent)      both)
main's ``DetectionCheckpointer.load``         :func:`reset_checkpointer_load_state` after a
asserts when reused after a failed load       failed load
v0.6's ``ShapeSpec`` is a namedtuple, which   :func:`detectron2_config` turns each into a
a LazyConfig keeps as an opaque value:        ``LazyCall(ShapeSpec)`` node, as main's
``...input_shape.channels=64`` cannot be      dataclass is (one override on both)
overridden; main's dataclass is a node
==========================================  =================================================

:func:`check_detectron2_api` lists the Detectron2 functions the library calls that this
installation lacks (an older Detectron2, or a fork): the installer and ``python -m resbackbones
doctor`` run it, and :func:`require_supported_detectron2` raises with the fix.
"""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "FIX_COMMAND",
    "REQUIRED_APIS",
    "SUPPORTED_FLAVOURS",
    "Detectron2Flavour",
    "UnsupportedDetectron2Error",
    "check_detectron2_api",
    "create_ddp_model",
    "detectron2_checkpoint_url",
    "detectron2_config",
    "detectron2_config_file",
    "detectron2_flavour",
    "drop_boundary_iou",
    "load_trainer_state",
    "overridable_shape_specs",
    "require_supported_detectron2",
    "reset_checkpointer_load_state",
    "trainer_state_dict",
    "unsupported_detectron2_message",
]

SUPPORTED_FLAVOURS = ("v0.6", "main")
FLAVOUR_DESCRIPTIONS = {
    "v0.6": "Detectron2 v0.6 (the release; what `python -m resbackbones install-detectron2` builds)",
    "main": "upstream main (installed from git, e.g. built with CUDA ops)",
}
FIX_COMMAND = ("python -m resbackbones install-detectron2 --replace "
               "(or install upstream main from git: pip install --no-build-isolation "
               "'git+https://github.com/facebookresearch/detectron2.git')")

# (module, attribute) pairs the library calls; a missing one is reported by name.
REQUIRED_APIS: Tuple[Tuple[str, str], ...] = (
    ("detectron2.config", "get_cfg"),
    ("detectron2.config", "CfgNode"),
    ("detectron2.config", "LazyConfig"),
    ("detectron2.config", "LazyCall"),
    ("detectron2.config", "instantiate"),
    ("detectron2.engine", "DefaultTrainer"),
    ("detectron2.engine", "SimpleTrainer"),
    ("detectron2.engine", "AMPTrainer"),
    ("detectron2.engine", "HookBase"),
    ("detectron2.engine", "default_argument_parser"),
    ("detectron2.engine", "default_setup"),
    ("detectron2.engine.train_loop", "TrainerBase"),
    ("detectron2.engine.defaults", "DefaultPredictor"),
    ("detectron2.checkpoint", "DetectionCheckpointer"),
    ("detectron2.data", "build_detection_train_loader"),
    ("detectron2.data", "build_detection_test_loader"),
    ("detectron2.data", "DatasetCatalog"),
    ("detectron2.data", "MetadataCatalog"),
    ("detectron2.data.datasets", "register_coco_instances"),
    ("detectron2.evaluation", "COCOEvaluator"),
    ("detectron2.evaluation", "inference_on_dataset"),
    ("detectron2.evaluation", "verify_results"),
    ("detectron2.modeling", "BACKBONE_REGISTRY"),
    ("detectron2.modeling", "META_ARCH_REGISTRY"),
    ("detectron2.modeling", "GeneralizedRCNN"),
    ("detectron2.modeling.backbone.fpn", "FPN"),
    ("detectron2.solver", "build_lr_scheduler"),
    ("detectron2.solver", "build_optimizer"),
    ("detectron2.utils.comm", "get_local_rank"),
    ("detectron2.utils.comm", "_LOCAL_PROCESS_GROUP"),
    ("detectron2.utils.events", "EventStorage"),
    ("detectron2.export", "TracingAdapter"),
)


class UnsupportedDetectron2Error(ImportError):
    """The installed Detectron2 lacks an API the library calls (older than v0.6, or a fork)."""


@dataclass(frozen=True)
class Detectron2Flavour:
    """Which Detectron2 this is, as far as the library is concerned.

    Attributes:
        name: "v0.6" or "main" (see :data:`SUPPORTED_FLAVOURS`).
        version: ``detectron2.__version__`` (both flavours say "0.6"; the installer's build says
            "0.6+resbackbones.N").
        location: the package folder.
        built_by_resbackbones: installed by this project's installer (v0.6 with rewrites).
        has_cpp_ops: the compiled extension ``detectron2._C`` is present.
    """

    name: str
    version: str
    location: str
    built_by_resbackbones: bool
    has_cpp_ops: bool

    def describe(self) -> str:
        origin = "built by resbackbones' installer" if self.built_by_resbackbones else "not built by resbackbones"
        ops = "with C++ ops" if self.has_cpp_ops else "pure Python, no C++ ops"
        return (f"Detectron2 {self.name} flavour (version {self.version}, {origin}, {ops}) at "
                f"{self.location}")


def detectron2_flavour() -> Detectron2Flavour:
    """The flavour of the importable Detectron2 (raises ImportError when there is none)."""
    import detectron2
    from detectron2.utils import comm

    version = str(getattr(detectron2, "__version__", "?"))
    name = "main" if hasattr(comm, "create_local_process_group") else "v0.6"
    return Detectron2Flavour(
        name=name, version=version, location=str(Path(detectron2.__file__).parent),
        built_by_resbackbones="+resbackbones." in version,
        has_cpp_ops=importlib.util.find_spec("detectron2._C") is not None)


def check_detectron2_api() -> List[str]:
    """The ``module.attribute`` names of :data:`REQUIRED_APIS` this Detectron2 lacks.

    Each module import is tried once; a module that fails to import lists its attributes with
    the import error, so that a broken installation is told apart from an old one.
    """
    missing: List[str] = []
    modules: Dict[str, Any] = {}
    for module_name, attribute in REQUIRED_APIS:
        if module_name not in modules:
            try:
                modules[module_name] = importlib.import_module(module_name)
            except Exception as error:  # report every problem, not the first
                modules[module_name] = error
        module = modules[module_name]
        if isinstance(module, Exception):
            missing.append(f"{module_name}.{attribute} ({module_name} does not import: "
                           f"{type(module).__name__}: {module})")
        elif not hasattr(module, attribute):
            missing.append(f"{module_name}.{attribute}")
    return missing


def unsupported_detectron2_message(location: str, version: str, missing: Sequence[str]) -> str:
    """The one wording of "this Detectron2 lacks APIs": what is missing, the flavours supported
    and the fix (used here and by the installer, which runs in another interpreter)."""
    supported = "; ".join(f"{key}: {text}" for key, text in FLAVOUR_DESCRIPTIONS.items())
    return (f"The Detectron2 at {location} (version {version}) lacks {len(missing)} API(s) "
            f"resbackbones calls: {', '.join(missing)}. Supported flavours: {supported}. "
            f"Fix: {FIX_COMMAND}.")


def require_supported_detectron2() -> Detectron2Flavour:
    """The flavour, or an :class:`UnsupportedDetectron2Error` naming what is missing and the fix."""
    missing = check_detectron2_api()
    if missing:
        import detectron2

        raise UnsupportedDetectron2Error(unsupported_detectron2_message(
            str(Path(detectron2.__file__).parent), str(getattr(detectron2, "__version__", "?")),
            missing))
    return detectron2_flavour()


# ---------------------------------------------------------------------------------------------
# Detectron2's own configs, without pkg_resources


def _detectron2_config_roots() -> List[Path]:
    """Where Detectron2's own configs can be: the installed package data, a source checkout."""
    roots: List[Path] = []
    try:
        roots.append(Path(str(importlib.resources.files("detectron2").joinpath("model_zoo",
                                                                            "configs"))))
    except (ModuleNotFoundError, TypeError):
        pass
    spec = importlib.util.find_spec("detectron2")
    if spec is not None and spec.origin:
        # A checkout on sys.path (or an editable install) keeps them next to the package.
        roots.append(Path(spec.origin).resolve().parents[1] / "configs")
    return roots


def detectron2_config_file(config_path: str) -> str:
    """The path of one of Detectron2's own configs, e.g. ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``.

    What ``detectron2.model_zoo.get_config_file`` returns, without importing
    ``detectron2.model_zoo`` (its ``import pkg_resources`` fails with setuptools >= 81 on both
    flavours) and also for a source checkout of main on ``sys.path``, whose configs are not
    package data.

    Raises:
        FileNotFoundError: no such config; the message names the folders searched.
    """
    roots = _detectron2_config_roots()
    for root in roots:
        candidate = root / config_path
        if candidate.is_file():
            return str(candidate)
    searched = ", ".join(str(root) for root in roots) or "(no detectron2 package found)"
    raise FileNotFoundError(f"Detectron2 config '{config_path}' not found in {searched}.")


def detectron2_checkpoint_url(config_path: str) -> str:
    """The URL of the model-zoo checkpoint trained with one of Detectron2's configs, e.g.
    ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``.

    What ``detectron2.model_zoo.get_checkpoint_url`` returns, without importing
    ``detectron2.model_zoo`` (``pkg_resources``, see :func:`detectron2_config_file`): its table
    of checkpoints is read from the module's source as data, on both flavours.

    Raises:
        FileNotFoundError: Detectron2 (or its ``model_zoo/model_zoo.py``) is not installed.
        KeyError: no released checkpoint for ``config_path``.
    """
    import ast

    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("detectron2 is not installed: no model-zoo table to read.")
    source = Path(list(spec.submodule_search_locations)[0]) / "model_zoo" / "model_zoo.py"
    table: Dict[str, Any] = {}
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and node.targets[0].id in (
                    "S3_PREFIX", "CONFIG_PATH_TO_URL_SUFFIX"):
            table[node.targets[0].id] = ast.literal_eval(node.value)
    name = config_path.replace(".yaml", "").replace(".py", "")
    suffixes = table.get("CONFIG_PATH_TO_URL_SUFFIX", {})
    if name not in suffixes:
        raise KeyError(f"Detectron2's model zoo ({source}) has no checkpoint for {config_path!r}.")
    return table["S3_PREFIX"] + name + "/" + suffixes[name]


def detectron2_config(config_path: str) -> Any:
    """One of Detectron2's own configs, loaded: a LazyConfig (``.py``) or a CfgNode (``.yaml``).

    The ``.py`` case is what Detectron2's ``model_zoo.get_config`` returns for the new baselines
    (``new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py``); resbackbones' LazyConfig files build on it.
    """
    path = detectron2_config_file(config_path)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return overridable_shape_specs(LazyConfig.load(path))
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def overridable_shape_specs(cfg: Any) -> Any:
    """``cfg`` (a LazyConfig, changed in place) with every ``ShapeSpec`` value made a
    ``LazyCall(ShapeSpec)`` node, so that ``model.roi_heads.box_predictor.input_shape.channels=64``
    overrides it on both flavours.

    v0.6's ``ShapeSpec`` is a namedtuple, which OmegaConf stores as an opaque value (the override
    raises "... is not a config"); main's is a dataclass, which OmegaConf already makes a node
    (nothing to do there). Both instantiate to the same ``ShapeSpec``.
    """
    from detectron2.config import LazyCall
    from detectron2.layers import ShapeSpec
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        keys: List[Any] = list(cfg.keys())
    elif isinstance(cfg, ListConfig):
        keys = list(range(len(cfg)))
    else:
        return cfg
    for key in keys:
        if OmegaConf.is_interpolation(cfg, key):
            continue  # resolved later, against the final config
        value = cfg[key]
        if isinstance(value, ShapeSpec) and isinstance(value, tuple):
            cfg[key] = LazyCall(ShapeSpec)(**value._asdict())
        else:
            overridable_shape_specs(value)
    return cfg


# ---------------------------------------------------------------------------------------------
# Distributed data parallel


def create_ddp_model(model: Any, **kwargs: Any) -> Any:
    """DistributedDataParallel around ``model`` when there are several processes, else ``model``.

    Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]`` even for a CPU module,
    which DDP refuses ("device_ids ... only work with single-device/multiple-device GPU
    modules"); v0.6 as our installer builds it is patched, main is not. Here ``device_ids`` is
    set for a CUDA module only.
    """
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    if comm.get_world_size() == 1:
        return model
    on_cuda = any(parameter.is_cuda for parameter in model.parameters())
    if on_cuda and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


# ---------------------------------------------------------------------------------------------
# Trainer checkpoints


TRAINER_STATE_KEY = "_trainer"


def trainer_state_dict(inner_trainer: Any) -> Dict[str, Any]:
    """The inner trainer's (SimpleTrainer/AMPTrainer) state, {} where v0.6's has none."""
    state_dict = getattr(inner_trainer, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def load_trainer_state(inner_trainer: Any, state: Mapping[str, Any]) -> bool:
    """Restore the inner trainer's state when the checkpoint has it (main writes
    ``_trainer``; v0.6 does not). Returns whether anything was restored."""
    inner = state.get(TRAINER_STATE_KEY)
    loader = getattr(inner_trainer, "load_state_dict", None)
    if inner is None or not callable(loader):
        return False
    loader(inner)
    return True


def reset_checkpointer_load_state(checkpointer: Any) -> None:
    """Forget a load that raised half-way, so that the checkpointer can load again.

    main's ``DetectionCheckpointer.load`` asserts ``_parsed_url_during_load is None`` on entry and
    resets it only when the load succeeds.
    """
    if hasattr(checkpointer, "_parsed_url_during_load"):
        checkpointer._parsed_url_during_load = None


# ---------------------------------------------------------------------------------------------
# Evaluation results

BOUNDARY_IOU_PREFIX = "BoundaryIoU"


def drop_boundary_iou(results: Mapping[str, Any]) -> Dict[str, Any]:
    """``SemSegEvaluator`` results without main's Boundary IoU keys (``BoundaryIoU``,
    ``BoundaryIoU-<class>``, ``min(IoU, B-Iou)``...), which v0.6 does not compute and which are
    NaN for a class absent from the ground truth; the other keys are the same on both flavours."""
    def is_boundary(key: str) -> bool:
        return key.startswith(BOUNDARY_IOU_PREFIX) or "B-Iou" in key or "B-IoU" in key

    return {key: value for key, value in results.items() if not is_boundary(str(key))}


def detectron2_main_hint() -> str:
    """One line saying how to run the main-flavour tests where the snapshot is not found."""
    return ("set RESBACKBONES_DETECTRON2_MAIN to a checkout (or git archive .tar.gz) of "
            "upstream Detectron2 main, or install upstream main from git")



# ---------------------------------------------------------------------------------------------
# Config keys

# Keys that upstream main's get_cfg() has and v0.6's lacks, with main's defaults (measured: the
# flattened get_cfg() of the pinned main snapshot against v0.6's). Every config.yaml a run on
# main writes holds them, so that file must still load on v0.6.
MAIN_ONLY_CONFIG_DEFAULTS: Dict[str, Any] = {
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": False,
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": False,
    "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER": 0.5,
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES": 50,
    "DATALOADER.REPEAT_SQRT": True,
    "SOLVER.BASE_LR_END": 0.0,
    "SOLVER.NUM_DECAYS": 3,
    "SOLVER.RESCALE_INTERVAL": False,
    "FLOAT32_PRECISION": "",
}


def _node_and_leaf(cfg: Any, key: str) -> Tuple[Any, str]:
    *parents, leaf = key.split(".")
    node = cfg
    for parent in parents:
        node = node[parent]
    return node, leaf


def add_main_only_keys(cfg: Any) -> List[str]:
    """Give a v0.6 config main's extra keys (at main's defaults) so that a file written on main
    merges; returns the keys added (none on main). Call :func:`remove_main_only_keys` after
    merging."""
    added = []
    for key, default in MAIN_ONLY_CONFIG_DEFAULTS.items():
        node, leaf = _node_and_leaf(cfg, key)
        if leaf not in node:
            node[leaf] = default
            added.append(key)
    return added


def remove_main_only_keys(cfg: Any, added: List[str], source: str) -> None:
    """Drop the keys :func:`add_main_only_keys` added; one whose value is not main's default
    raises, because v0.6 has no code that reads it (it would be ignored silently)."""
    for key in added:
        node, leaf = _node_and_leaf(cfg, key)
        value = node[leaf]
        if value != MAIN_ONLY_CONFIG_DEFAULTS[key]:
            raise ValueError(
                f"{source} sets {key}={value!r}, an option of upstream Detectron2 main that "
                f"Detectron2 v0.6 (installed here) does not have: it would be ignored. Remove "
                f"it (main's default is {MAIN_ONLY_CONFIG_DEFAULTS[key]!r}) or run on upstream "
                "main.")
        del node[leaf]
