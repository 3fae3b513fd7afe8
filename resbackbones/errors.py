"""Errors shared by every layer, and the one helper that words a bad config value.

This module imports nothing from the package, so the lowest layers (catalog, weights, modeling)
can raise the same ``ConfigError`` that ``resbackbones.config.validate_config`` raises.
"""
from __future__ import annotations

from typing import Any, Iterable

__all__ = ["ConfigError", "check_choice"]


class ConfigError(ValueError):
    """A config key or value is invalid; raised before any work starts."""


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; else raise the project's one message for it.

    Args:
        key: the full config key, e.g. ``"MODEL.RESBACKBONE.NORM"``.
        value: the value found.
        choices: the valid values.

    Raises:
        ConfigError: ``"<key> <value> is invalid; valid: a, b, c."``
    """
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key} {value!r} is invalid; valid: "
                          f"{', '.join(str(choice) for choice in choices)}.")
    return value
