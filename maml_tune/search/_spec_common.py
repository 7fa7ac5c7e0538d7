"""What every part of spec validation shares: error locations, value descriptions, dotted tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maml_tune.errors import ConfigError


class Where:
    """Formats ``FILE: KEY.PATH: message`` for every error of one spec."""

    def __init__(self, source: str):
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}")


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return f"{value!r} ({type(value).__name__})"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"inner_lr": 1}}`` and ``{"algo.inner_lr": 1}`` both → ``{"algo.inner_lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and not prefix and key in ("arch", "algo", "train", "family"):
            out.update(flatten(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out
