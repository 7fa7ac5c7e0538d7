"""Registries filled from the public modules of a package (algorithms, strategies)."""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")


def find_instances(package: str, attribute: str, base: type[T]) -> MappingProxyType[str, T]:
    """``{instance.name: instance}`` for the ``attribute`` of every public module of
    ``package`` (in module-name order); a module without one, or a name defined twice, is a
    TypeError at import: a programming error, not a user's."""
    found: dict[str, Any] = {}
    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        instance = getattr(module, attribute, None)
        if not isinstance(instance, base):
            raise TypeError(f"{module.__name__} defines no {attribute}, an instance of {base.__name__}")
        if instance.name in found:
            raise TypeError(f"{module.__name__}: {instance.name!r} is defined twice")
        found[instance.name] = instance
    return MappingProxyType(found)
