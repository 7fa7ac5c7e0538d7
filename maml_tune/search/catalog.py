"""The samplers, pruners and objective metrics a study spec may name: one table each.

Read by spec validation (names, which samplers are single-objective), by storage when it
builds the Optuna sampler or pruner, and by the CLI (metric names).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """A sampler or pruner as spelled in specs, and the Optuna class (by name) behind it."""

    name: str
    optuna_class: str
    single_objective: bool = False
    needs: str | None = None
    """The package the Optuna class needs beyond Optuna itself (import name = pip name)."""


def _by_name(*choices: Choice) -> dict[str, Choice]:
    return {c.name: c for c in choices}


SAMPLERS = _by_name(
    Choice("tpe", "TPESampler"),
    Choice("random", "RandomSampler"),
    Choice("gp", "GPSampler"),
    Choice("cmaes", "CmaEsSampler", single_objective=True, needs="cmaes"),
    Choice("qmc", "QMCSampler", single_objective=True, needs="scipy"),
    Choice("nsga2", "NSGAIISampler"),
)

PRUNERS = _by_name(
    Choice("median", "MedianPruner"),
    Choice("hyperband", "HyperbandPruner"),
    Choice("sha", "SuccessiveHalvingPruner"),
    Choice("wilcoxon", "WilcoxonPruner"),
    Choice("none", "NopPruner"),
)

METRICS: dict[str, str] = {
    "val_loss": "minimize",
    "test_loss": "minimize",
    "val_accuracy": "maximize",
    "test_accuracy": "maximize",
    "adaptation_cost": "minimize",
    "adaptation_time": "minimize",
}
"""Objective metrics and their natural direction.

``val_loss`` / ``val_accuracy``: post-adaptation query loss / accuracy on the meta-validation
tasks at the end of training (also reported at every validation interval for pruning).
``test_loss`` / ``test_accuracy``: the same on ``eval_tasks`` held-out test tasks.
``adaptation_cost``: test-time inner steps × parameter count. ``adaptation_time``: measured
seconds to adapt to (and evaluate) one test task.
"""

METRIC_MEANINGS: dict[str, str] = {
    "val_loss": "query loss after adaptation on the meta-validation tasks",
    "test_loss": "query loss after adaptation on the held-out meta-test tasks",
    "val_accuracy": "query accuracy after adaptation on the meta-validation tasks",
    "test_accuracy": "query accuracy after adaptation on the held-out meta-test tasks",
    "adaptation_cost": "test-time inner steps x adapted parameters",
    "adaptation_time": "seconds to adapt to and evaluate one test task",
}
"""One line per metric of :data:`METRICS`, for summaries."""
