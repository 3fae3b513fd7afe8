"""The packaged configs by name, in the style of ``detectron2.model_zoo``::

    from resbackbones import model_zoo

    model_zoo.list_configs("mask_rcnn_resnet50")     # names, e.g. "COCO-InstanceSegmentation/..."
    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3x.yaml")
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_3x.yaml",
                               ["MODEL.DEVICE", "cpu"])

Names and paths come from :mod:`resbackbones.model_zoo_files` (standard library, below
``config``, so that ``build_config`` and every ``--config-file`` accept the names too); this
module builds them: YAML through :func:`resbackbones.config.build_config` (Detectron2's
defaults, this project's keys, checked merge, validation), LazyConfig ``.py`` files through
Detectron2's ``LazyConfig.load``.
"""
from __future__ import annotations

from typing import Any, Sequence

from resbackbones.config import build_config
from resbackbones.model_zoo_files import (
    ConfigNotFoundError,
    close_config_names,
    config_root,
    get_config_file,
    list_configs,
    resolve_config_file,
)

__all__ = [
    "ConfigNotFoundError",
    "close_config_names",
    "config_root",
    "get_config",
    "get_config_file",
    "list_configs",
    "resolve_config_file",
]


def get_config(config_path: str, opts: Sequence[str] = ()) -> Any:
    """A packaged config (or a config file), built and ready to use.

    Args:
        config_path: a name from :func:`list_configs` or a path (an existing path wins).
        opts: overrides in the file's own syntax: ``KEY VALUE`` pairs for a YAML config (as
            after ``--config-file``), ``"key=value"`` strings for a LazyConfig ``.py`` (as
            Detectron2's ``lazyconfig_train_net.py`` takes them).

    Returns:
        A YAML config as a validated, unfrozen ``CfgNode`` with the project's keys; a ``.py``
        config as Detectron2's LazyConfig (an omegaconf ``DictConfig``).

    Raises:
        ConfigNotFoundError: neither a file nor a packaged name; the closest names are listed.
        ConfigError: a YAML config has an unknown key or an invalid value.
    """
    path = resolve_config_file(config_path)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
    return build_config(path, opts)
