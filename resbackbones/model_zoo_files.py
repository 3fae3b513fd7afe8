"""The configs shipped in the package, by name: ``get_config_file("COCO-InstanceSegmentation/
mask_rcnn_resnet50_FPN_3x.yaml")``, as ``detectron2.model_zoo.get_config_file`` does for
Detectron2's own.

The files are the repository's ``configs/`` (YAML, and the LazyConfig ``.py`` files of
``new_baselines/``). ``resbackbones/configs`` is a committed symlink to that folder and a wheel
holds the same files as package data under the same name, so one path serves a checkout, an
editable install and a wheel (``[options.package_data]`` in setup.cfg).

Standard library only, one layer below :mod:`resbackbones.config`: ``build_config`` resolves its
``config_file`` here, so every ``--config-file`` (train, demo, export, benchmark, quickstart)
takes a packaged name as well as a path. :mod:`resbackbones.model_zoo` builds configs from them.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path, PurePosixPath
from typing import List, Optional

from resbackbones.errors import ConfigError

__all__ = [
    "CONFIG_SUFFIXES",
    "ConfigNotFoundError",
    "close_config_names",
    "config_root",
    "get_config_file",
    "list_configs",
    "resolve_config_file",
]

# What counts as a config: Detectron2 YAML configs and LazyConfig Python files.
CONFIG_SUFFIXES = (".yaml", ".py")
# A checkout's root-relative spelling ("configs/quick_schedules/...") names the same file.
_REPOSITORY_FOLDER = "configs/"
_LIST_COMMAND = "python -m resbackbones configs"


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config is neither an existing file nor a packaged config name.

    Both a :class:`~resbackbones.errors.ConfigError` (what ``build_config`` raises for any bad
    config) and a ``FileNotFoundError`` (what a caller that opens files expects).
    """


def config_root() -> Path:
    """The folder of the packaged configs (in a checkout, the repository's ``configs/``)."""
    packaged = Path(__file__).parent / "configs"
    if packaged.is_dir():
        return packaged
    # A checkout whose git wrote the symlink as a plain file (Windows without symlinks).
    checkout = Path(__file__).parent.parent / "configs"
    return checkout if checkout.is_dir() else packaged


def list_configs(contains: str = "") -> List[str]:
    """Every packaged config name, sorted: ``"COCO-Detection/faster_rcnn_resnet50_FPN_1x.yaml"``,
    ``"new_baselines/mask_rcnn_R50_FPN_100ep_LSJ.py"``, the ``Base-*`` files too.

    Args:
        contains: keep only names that contain this text (case-insensitive); "" keeps all.

    Returns:
        Names relative to :func:`config_root`, with ``/`` separators, for :func:`get_config_file`.
    """
    root = config_root()
    if not root.is_dir():
        return []
    names = [path.relative_to(root).as_posix() for path in root.rglob("*")
             if path.suffix in CONFIG_SUFFIXES and path.is_file()
             and "__pycache__" not in path.parts]
    wanted = contains.lower()
    return sorted(name for name in names if wanted in name.lower())


def _as_packaged_name(config_file: str) -> str:
    name = config_file.replace(os.sep, "/")
    return name[len(_REPOSITORY_FOLDER):] if name.startswith(_REPOSITORY_FOLDER) else name


def _packaged_path(config_file: str) -> Optional[str]:
    name = PurePosixPath(_as_packaged_name(config_file))
    # Only what list_configs lists: "../setup.cfg" or an absolute path is not a config name.
    if name.is_absolute() or ".." in name.parts or name.suffix not in CONFIG_SUFFIXES:
        return None
    path = config_root() / name
    return str(path) if path.is_file() else None


def close_config_names(config_file: str, limit: int = 5) -> List[str]:
    """The packaged names closest to ``config_file`` (a mistyped name, or a path whose file
    name is packaged), for error messages; at most ``limit``, best first."""
    names = list_configs()
    # For a path, compare what follows its last "configs/" (the part a packaged name spells).
    query = config_file.replace(os.sep, "/").rsplit("/" + _REPOSITORY_FOLDER, 1)[-1]
    query = _as_packaged_name(query)
    by_full_name = difflib.get_close_matches(query, names, n=limit, cutoff=0.6)
    files = {}
    for name in names:
        files.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    by_file_name = [name for file_name in difflib.get_close_matches(
        query.rsplit("/", 1)[-1], list(files), n=limit, cutoff=0.8) for name in files[file_name]]
    # A bare file name ("mask_rcnn_resnet50_FPN_3x.yaml") is judged by file names first.
    ranked = by_full_name + by_file_name if "/" in query else by_file_name + by_full_name
    return list(dict.fromkeys(ranked))[:limit]


def _hint(config_file: str) -> str:
    close = close_config_names(config_file)
    if close:
        return f"Closest packaged configs: {', '.join(close)} (all of them: {_LIST_COMMAND})."
    return f"List the packaged configs with: {_LIST_COMMAND}."


def get_config_file(name: str) -> str:
    """The path of a packaged config, e.g. ``get_config_file("quick_schedules/
    mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")``.

    Args:
        name: a name from :func:`list_configs`; a leading ``configs/`` (the repository's
            spelling) is accepted, so defaults written for a checkout work from a wheel.

    Returns:
        The file's path; its ``_BASE_`` files sit next to it as in the repository.

    Raises:
        ConfigNotFoundError: not a packaged name; the message lists the closest ones.
    """
    path = _packaged_path(name)
    if path is None:
        raise ConfigNotFoundError(f"{name!r} is not a packaged config. {_hint(name)}")
    return path


def resolve_config_file(config_file: str) -> str:
    """What a ``--config-file`` value means: an existing file as given (a file of the user's
    always wins), else the packaged config of that name.

    Args:
        config_file: a path, or a name from :func:`list_configs`.

    Returns:
        A path that exists.

    Raises:
        ConfigNotFoundError: neither; the message names the missing path and the closest
            packaged names.
    """
    if os.path.isfile(config_file):
        return config_file
    path = _packaged_path(config_file)
    if path is None:
        where = "" if os.path.isabs(config_file) else f" (relative to {os.getcwd()})"
        raise ConfigNotFoundError(
            f"Config file not found: {config_file!r} is not a file{where} and not a packaged "
            f"config name. {_hint(config_file)}")
    return path
