"""Sampling a spec-form search space with an Optuna trial (conditional parameters included).

A parameter with ``when = {setting = value(s)}`` is suggested only when every named
setting has one of the listed values: a setting that is itself a parameter uses the
sampled value (an inactive parameter never matches), any other setting uses the trial's
base configuration (fixed settings over the family's defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_INACTIVE = object()


def ordered(space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Parameter names so that every condition's parameters come first (spec order otherwise)."""
    done: list[str] = []

    def visit(key: str) -> None:
        if key in done:
            return
        for dep in space[key].get("when", {}):
            if dep in space:
                visit(dep)
        done.append(key)

    for key in space:
        visit(key)
    return done


def active(
    spec: Mapping[str, Any], values: Mapping[str, Any], base: Mapping[str, Any], space: Mapping[str, Any] = ()
) -> bool:
    """Whether ``spec``'s ``when`` conditions hold. A condition on a parameter of ``space``
    reads ``values`` (missing or inactive never matches); any other setting reads ``base``."""
    for key, allowed in spec.get("when", {}).items():
        value = values.get(key, _INACTIVE) if key in space else base.get(key, _INACTIVE)
        if value is _INACTIVE or value not in allowed:
            return False
    return True


def suggest_one(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    if kind == "int":
        return trial.suggest_int(
            name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
        )
    return trial.suggest_float(
        name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
    )


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any]) -> dict[str, Any]:
    """Suggest every active parameter of ``space``; returns dotted overrides (inactive ones left out).

    ``base`` maps dotted settings to the values a trial starts from (used by conditions on
    settings that are not searched).
    """
    values: dict[str, Any] = {}
    for name in ordered(space):
        if active(space[name], values, base, space):
            values[name] = suggest_one(trial, name, space[name])
    return values


def active_params(
    space: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any], base: Mapping[str, Any]
) -> dict[str, Any]:
    """The subset of ``values`` (e.g. a baseline config) that ``space`` would sample, conditions applied."""
    chosen: dict[str, Any] = {}
    for name in ordered(space):
        if name in values and active(space[name], chosen, base, space):
            chosen[name] = values[name]
    return chosen
