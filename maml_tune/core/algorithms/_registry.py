"""The algorithms by name, found among the public modules of this package."""

from __future__ import annotations

from maml_tune.core._discovery import find_instances
from maml_tune.core.algorithms._base import Algorithm
from maml_tune.errors import ConfigError

ALGORITHMS = find_instances(__package__, "ALGORITHM", Algorithm)
"""Every algorithm by its ``algo.algorithm`` name, in name order."""


def algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(
            f"algo.algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}"
        ) from None
