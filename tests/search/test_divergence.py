"""A trial whose post-adaptation validation loss exceeds ``budget.divergence_factor`` times
its pre-adaptation loss stops as diverged; below that factor it goes on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from maml_tune.core.evaluation import Estimate, EvalResult
from maml_tune.errors import DivergenceError
from maml_tune.search.objective import _TrialCallback


def _callback(factor: float) -> _TrialCallback:
    objective = SimpleNamespace(
        spec=SimpleNamespace(budget=SimpleNamespace(divergence_factor=factor)),
        report_metric=None, worker=0, events=lambda event: None,
    )
    config = SimpleNamespace(train=SimpleNamespace(iterations=10))
    return _TrialCallback(objective, SimpleNamespace(number=0), config)


def _validation(before: float, after: float) -> EvalResult:
    return EvalResult("val", 10, 1, "transductive", Estimate(before, 0.0), Estimate(after, 0.0), None, None)


def test_divergence_is_the_factor_times_the_loss_before_adaptation():
    callback = _callback(10.0)
    callback.on_validation(10, _validation(2.0, 19.9))  # 9.95x: goes on
    with pytest.raises(DivergenceError, match="more than 10x"):
        callback.on_validation(20, _validation(2.0, 20.1))  # 10.05x (and far below 10² = 100x)
