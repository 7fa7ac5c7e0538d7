"""The ``[objective]`` and ``[study]`` tables of a spec: metrics, directions, sampler, pruner, counts."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maml_tune.core.config import MAX_SEED
from maml_tune.search._spec_common import Where, describe, is_int, is_number
from maml_tune.search.catalog import METRICS, PRUNERS, SAMPLERS

SINGLE_OBJECTIVE_SAMPLERS = tuple(c.name for c in SAMPLERS.values() if c.single_objective)

STUDY_KEYS = (
    "name",
    "sampler",
    "pruner",
    "seed",
    "n_trials",
    "timeout",
    "top_k_checkpoints",
    "baseline",
    "inherit_space",
    "sampler_options",
    "pruner_options",
)


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...] = ("val_loss",)
    directions: tuple[str, ...] = ("minimize",)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


@dataclass(frozen=True)
class StudySettings:
    name: str = "sinusoid"
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    n_trials: int = 16
    timeout: float | None = None
    top_k_checkpoints: int = 3
    baseline: bool = False
    inherit_space: bool = True
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    pruner_options: Mapping[str, Any] = field(default_factory=dict)


def parse_objective(w: Where, raw: Any, kind: str) -> Objective:
    """The ``[objective]`` table; ``kind`` (the family's) decides the default metric."""
    if not isinstance(raw, Mapping):
        raise w.error("objective", f"expected a table, got {describe(raw)}")
    unknown = sorted(set(raw) - {"metrics", "directions"})
    if unknown:
        raise w.error(f"objective.{unknown[0]}", "unknown key (expected metrics, directions)")
    default = "val_accuracy" if kind == "classification" else "val_loss"
    metrics = raw.get("metrics", [default])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise w.error(
            "objective.metrics", f"expected a non-empty array of metric names, got {describe(metrics)}"
        )
    for i, metric in enumerate(metrics):
        if metric not in METRICS:
            raise w.error(
                f"objective.metrics[{i}]", f"expected one of {', '.join(METRICS)}, got {describe(metric)}"
            )
        if "accuracy" in metric and kind != "classification":
            raise w.error(
                f"objective.metrics[{i}]", f"{metric} needs a classification family; this family is {kind}"
            )
    if len(set(metrics)) != len(metrics):
        raise w.error("objective.metrics", "expected distinct metrics")
    directions = raw.get("directions", [METRICS[m] for m in metrics])
    if isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or len(directions) != len(metrics):
        raise w.error(
            "objective.directions",
            f"expected an array of {len(metrics)} direction(s), one per metric, got {describe(directions)}",
        )
    for i, direction in enumerate(directions):
        if direction not in ("minimize", "maximize"):
            raise w.error(
                f"objective.directions[{i}]", f"expected minimize or maximize, got {describe(direction)}"
            )
    return Objective(tuple(metrics), tuple(directions))


def parse_study(w: Where, raw: Mapping[str, Any], objective: Objective, default_name: str) -> StudySettings:
    """The ``[study]`` table, checked against the objective (samplers and pruners for several metrics)."""
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise w.error(f"study.{unknown[0]}", f"unknown key (expected one of: {', '.join(STUDY_KEYS)})")
    values: dict[str, Any] = {}
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise w.error("study.name", f"expected a non-empty string, got {describe(name)}")
    if any(not ch.isprintable() for ch in name):
        raise w.error("study.name", f"expected printable text (no newline or control code), got {name!r}")
    values["name"] = name
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise w.error("study.sampler", f"expected one of {', '.join(SAMPLERS)}, got {describe(sampler)}")
    if objective.multi and sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise w.error(
            "study.sampler",
            f"{sampler} supports one objective only; this study has "
            f"{len(objective.metrics)} (use tpe, random, gp or nsga2)",
        )
    values["sampler"] = sampler
    pruner = raw.get("pruner", "none" if objective.multi else "median")
    if pruner not in PRUNERS:
        raise w.error("study.pruner", f"expected one of {', '.join(PRUNERS)}, got {describe(pruner)}")
    if objective.multi and pruner != "none":
        raise w.error(
            "study.pruner", f"Optuna cannot prune multi-objective studies: expected none, got {pruner!r}"
        )
    values["pruner"] = pruner
    for key, low in (("seed", 0), ("n_trials", 1), ("top_k_checkpoints", 0)):
        if key in raw:
            value = raw[key]
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    pass
            high = MAX_SEED if key == "seed" else None
            if not is_int(value) or value < low or (high is not None and value > high):
                bound = f"from {low} to {high}" if high is not None else f">= {low}"
                raise w.error(f"study.{key}", f"expected an integer {bound}, got {describe(value)}")
            values[key] = value
    if "timeout" in raw:
        timeout = raw["timeout"]
        if isinstance(timeout, str):
            try:
                timeout = float(timeout)
            except ValueError:
                pass
        if not is_number(timeout) or not 0 <= timeout < math.inf:
            raise w.error(
                "study.timeout", f"expected a number of seconds >= 0 (0: none), got {describe(timeout)}"
            )
        values["timeout"] = float(timeout) or None
    for key in ("baseline", "inherit_space"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise w.error(f"study.{key}", f"expected true or false, got {describe(raw[key])}")
            values[key] = raw[key]
    for key, kind in (("sampler_options", "sampler"), ("pruner_options", "pruner")):
        options = raw.get(key, {})
        if not isinstance(options, Mapping):
            raise w.error(f"study.{key}", f"expected a table, got {describe(options)}")
        allowed = _constructor_options(kind, values[kind])
        for option in options:
            if option not in allowed:
                known = ", ".join(allowed) or "none"
                raise w.error(
                    f"study.{key}.{option}",
                    f"unknown option of the {values[kind]} {kind} (expected one of: {known})",
                )
        values[key] = dict(options)
    return StudySettings(**values)


_MANAGED = {"seed"}
_OBJECT_HINTS = ("Callable", "Sampler", "Crossover", "Mutation", "Pruner")


def _constructor_options(kind: str, name: str) -> list[str]:
    """Keyword arguments of the Optuna class behind sampler/pruner ``name`` that a spec may set."""
    if name == "none":
        return []
    from maml_tune.search.storage import optuna_class

    cls = optuna_class(kind, name)
    params = inspect.signature(cls.__init__).parameters
    simple = (int, float, bool, str)
    out = []
    for pname, param in params.items():
        if pname == "self" or pname in _MANAGED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if any(hint in str(param.annotation) for hint in _OBJECT_HINTS):
            continue
        if (
            param.default is inspect.Parameter.empty
            or param.default is None
            or isinstance(param.default, simple)
        ):
            out.append(pname)
    return out
