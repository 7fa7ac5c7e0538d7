"""The ``[space]`` table of a spec: parameters, their ranges and ``when`` conditions."""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from typing import Any

from maml_tune.core.config import RunConfig, field_type, resolve_key
from maml_tune.errors import ConfigError
from maml_tune.search._spec_common import Where, describe, flatten, is_int, is_number

PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
MAX_CHOICES = 1000
"""The most choices of a categorical parameter: more are no search a sampler can do, and
checking each against the settings would take minutes."""


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def parse_space(w: Where, raw: Any, family: Any, fixed: Mapping[str, Any], inherit: bool) -> dict:
    """The spec's ``[space]`` (over the family's default space when ``inherit``), keyed by dotted setting."""
    if not isinstance(raw, Mapping):
        raise w.error("space", f"expected a table of parameters, got {describe(raw)}")
    explicit: dict[str, dict[str, Any]] = {}
    for key, spec in flatten_space(raw).items():
        path = f"space.{key}"
        try:
            section, name = resolve_key(key)
        except ConfigError as exc:
            raise w.error(path, str(exc)) from None
        if section == "family":
            raise w.error(path, "family options cannot be searched; set them in [family.options]")
        dotted = f"{section}.{name}" if section else name
        if dotted == "family":
            raise w.error(path, "the family cannot be searched")
        if dotted in explicit:
            raise w.error(path, f"parameter given twice (as {dotted!r})")
        if dotted in fixed:
            raise w.error(
                path, f"{dotted!r} is also fixed (in [fixed] or --set); a setting is either searched or fixed"
            )
        explicit[dotted] = _parse_param(w, path, dotted, spec)
    space: dict[str, dict[str, Any]] = {}
    if inherit:
        for key, spec in family.default_search_space().items():
            if key not in fixed and key not in explicit:
                space[key] = _parse_param(w, f"(default space of {family.name!r}).{key}", key, spec)
    space.update(explicit)
    _check_conditions(w, space)
    return space


def flatten_space(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"algo": {"inner_lr": {...}}}`` and ``{"algo.inner_lr": {...}}`` both → dotted keys."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and "type" not in value and key in ("arch", "algo", "train"):
            for sub, spec in value.items():
                out[f"{key}.{sub}"] = spec
        else:
            out[key] = value
    return out


def _parse_param(w: Where, path: str, dotted: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise w.error(
            path,
            f'expected a parameter table like {{type = "float", low = 0.001, high = 1.0}}, '
            f"got {describe(spec)}",
        )
    kind = spec.get("type")
    if kind not in PARAM_KEYS:
        raise w.error(f"{path}.type", f"expected one of float, int, categorical, got {describe(kind)}")
    unknown = sorted(set(spec) - PARAM_KEYS[kind])
    if unknown:
        raise w.error(
            f"{path}.{unknown[0]}",
            f"unknown key for a {kind} parameter (expected: {', '.join(sorted(PARAM_KEYS[kind]))})",
        )
    kind_type = _base_type(field_type(dotted))
    out: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise w.error(
                f"{path}.choices",
                f"expected a non-empty array, got {'an empty array' if choices == [] else describe(choices)}",
            )
        if len(choices) > MAX_CHOICES:
            raise w.error(f"{path}.choices", f"expected at most {MAX_CHOICES} choices, got {len(choices)}")
        for i, choice in enumerate(choices):
            if not isinstance(choice, (str, int, float, bool)):
                raise w.error(
                    f"{path}.choices[{i}]", f"expected a string, number or boolean, got {describe(choice)}"
                )
            _check_value(w, f"{path}.choices[{i}]", dotted, choice, kind_type)
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise w.error(f"{path}.choices", "expected distinct choices")
        out["choices"] = list(choices)
    else:
        if kind_type in (bool, str):
            raise w.error(
                f"{path}.type",
                f"{dotted} is a {kind_type.__name__} setting: expected a categorical parameter",
            )
        if kind == "float" and kind_type is int:
            raise w.error(f"{path}.type", f'{dotted} is an integer setting: expected type = "int"')
        check = is_int if kind == "int" else is_number
        what = "an integer" if kind == "int" else "a number"
        for bound in ("low", "high"):
            if bound not in spec:
                raise w.error(f"{path}.{bound}", f"missing (expected {what})")
            if not check(spec[bound]) or (kind == "float" and not math.isfinite(spec[bound])):
                raise w.error(f"{path}.{bound}", f"expected {what}, got {describe(spec[bound])}")
        low, high = spec["low"], spec["high"]
        if low > high:
            raise w.error(path, f"inverted range: expected low <= high, got low = {low}, high = {high}")
        if low == high:
            raise w.error(path, f"empty range: low = high = {low} (to fix a value, put it in [fixed])")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise w.error(f"{path}.log", f"expected true or false, got {describe(log)}")
        if log and low <= 0:
            raise w.error(
                f"{path}.low",
                f"a log-scale range must have low > 0, got {low} "
                f"(for ranges including 0 or negative values use log = false)",
            )
        if "step" in spec:
            step = spec["step"]
            if not check(step) or step <= 0:
                raise w.error(f"{path}.step", f"expected {what} > 0, got {describe(step)}")
            if log and kind == "float":
                raise w.error(f"{path}.step", "a float parameter cannot have both step and log = true")
            if log and kind == "int" and step != 1:
                raise w.error(f"{path}.step", "an int parameter with log = true must have step = 1")
            out["step"] = step
        for bound in ("low", "high"):
            _check_value(w, f"{path}.{bound}", dotted, spec[bound], kind_type)
        out.update(low=low, high=high, log=log)
    if "when" in spec:
        out["when"] = _parse_when(w, f"{path}.when", spec["when"])
    return out


def _check_value(w: Where, path: str, dotted: str, value: Any, kind_type: Any) -> None:
    if kind_type is bool and not isinstance(value, bool):
        raise w.error(path, f"{dotted} is a boolean setting: expected true or false, got {describe(value)}")
    if kind_type is int and not is_int(value):
        raise w.error(path, f"{dotted} is an integer setting: expected an integer, got {describe(value)}")
    if kind_type is float and not is_number(value):
        raise w.error(path, f"{dotted} is a number setting: expected a number, got {describe(value)}")
    if kind_type is str and not isinstance(value, str):
        raise w.error(path, f"{dotted} is a string setting: expected a string, got {describe(value)}")
    try:
        RunConfig().override({dotted: value})
    except ConfigError as exc:
        raise w.error(path, str(exc)) from None


def _parse_when(w: Where, path: str, raw: Any) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping) or not raw:
        raise w.error(path, f"expected a non-empty table of setting = value(s), got {describe(raw)}")
    out: dict[str, list[Any]] = {}
    for key, value in flatten(raw).items():
        try:
            section, name = resolve_key(key)
        except ConfigError as exc:
            raise w.error(f"{path}.{key}", str(exc)) from None
        dotted = f"{section}.{name}" if section else name
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, (Mapping, list)) for v in values):
            raise w.error(
                f"{path}.{key}", f"expected a value or a non-empty array of values, got {describe(value)}"
            )
        out[dotted] = list(values)
    return out


def _check_conditions(w: Where, space: Mapping[str, Mapping[str, Any]]) -> None:
    """Conditions may refer to other parameters, but not in a cycle."""
    state: dict[str, int] = {}

    def visit(key: str, trail: list[str]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            cycle = " -> ".join([*trail[trail.index(key) :], key])
            raise w.error(f"space.{key}.when", f"conditions form a cycle: {cycle}")
        state[key] = 1
        for dep in space[key].get("when", {}):
            if dep in space:
                visit(dep, [*trail, key])
        state[key] = 2

    for key in space:
        visit(key, [])
