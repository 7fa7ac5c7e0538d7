"""Execution strategies: how the tasks of a meta-batch run (one module each, defining
``STRATEGY``), and :func:`choose`, which picks one for an architecture, device and algorithm."""

from maml_tune.core.strategies._base import Strategy
from maml_tune.core.strategies._choose import AUTO, Choice, checkpointable, choose, strategy_named
from maml_tune.core.strategies._registry import STRATEGIES

__all__ = ["AUTO", "STRATEGIES", "Choice", "Strategy", "checkpointable", "choose", "strategy_named"]
