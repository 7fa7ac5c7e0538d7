"""The execution strategies by name, found among the public modules of this package."""

from __future__ import annotations

from maml_tune.core._discovery import find_instances
from maml_tune.core.strategies._base import Strategy

STRATEGIES = find_instances(__package__, "STRATEGY", Strategy)
"""Every strategy by its ``train.strategy`` name (besides ``auto``), in name order."""
