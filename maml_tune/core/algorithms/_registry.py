"""The algorithms by name, found among the public modules of this package."""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from maml_tune.core.algorithms._base import Algorithm
from maml_tune.errors import ConfigError


def _find() -> dict[str, Algorithm]:
    found: dict[str, Algorithm] = {}
    package = importlib.import_module(__package__)
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{module_info.name}")
        instance = getattr(module, "ALGORITHM", None)
        if not isinstance(instance, Algorithm):
            raise TypeError(f"{module.__name__} defines no ALGORITHM instance of Algorithm")
        if instance.name in found:
            raise TypeError(f"{module.__name__}: algorithm {instance.name!r} is defined twice")
        found[instance.name] = instance
    return found


ALGORITHMS = MappingProxyType(_find())
"""Every algorithm by its ``algo.algorithm`` name, in name order."""


def algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(
            f"algo.algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}"
        ) from None
