"""Study specs: the TOML files in ``studies/`` that describe a search, validated strictly.

A spec names the task family and its options, the search space (spec-form parameters
keyed by dotted run-config settings, see :mod:`maml_tune.families._spaces`), fixed
settings, the per-trial budget, the objective and the study settings::

    [family]
    name = "sinusoid"                       # or: family = "sinusoid"
    [family.options]                        # validated by the family
    k_shot = 10

    [space]                                 # merged over the family's default space
    "algo.inner_lr" = { type = "float", low = 1e-3, high = 1.0, log = true }
    "algo.inner_lr" = { type = "float", low = -0.5, high = 1.0 }      # negative rates: linear
    "arch.channels" = { type = "categorical", choices = [16, 32], when = { "arch.kind" = "conv" } }

    [fixed]                                 # dotted settings; a fixed key leaves the space
    "train.seed" = 0

    [budget]                                # per trial
    iterations = 500
    val_interval = 100
    val_tasks = 100
    eval_tasks = 200
    divergence_factor = 100.0

    [objective]
    metrics = ["val_loss"]                  # or ["test_loss", "adaptation_cost"] (Pareto set)
    directions = ["minimize"]               # optional: each metric has its natural direction

    [study]
    name = "sinusoid"
    sampler = "tpe"                         # tpe random gp cmaes qmc nsga2
    pruner = "median"                       # median hyperband sha wilcoxon none
    seed = 0
    n_trials = 16
    timeout = 600                           # seconds (optional)
    top_k_checkpoints = 3
    baseline = true                         # enqueue the family's literature config first
    inherit_space = true                    # start from the family's default space
    [study.sampler_options]                 # keyword arguments of the Optuna sampler
    n_startup_trials = 5
    [study.pruner_options]                  # keyword arguments of the Optuna pruner
    n_startup_trials = 3

Every problem is a :class:`~maml_tune.errors.ConfigError` naming the file, the key path
and what was expected. Nothing here imports typer or rich.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from maml_tune.core.config import FAMILY_PREFIX, RunConfig, field_type, resolve_key
from maml_tune.errors import ConfigError, MamlTuneError
from maml_tune.search.catalog import METRICS, PRUNERS, SAMPLERS

SINGLE_OBJECTIVE_SAMPLERS = tuple(c.name for c in SAMPLERS.values() if c.single_objective)

BUDGET_KEYS = {
    "iterations": "train.iterations",
    "val_interval": "train.val_interval",
    "val_tasks": "train.val_tasks",
    "eval_tasks": "eval_tasks",
}
DEFAULT_BUDGET: dict[str, Any] = {
    "iterations": 500,
    "val_interval": 100,
    "val_tasks": 100,
    "eval_tasks": 200,
    "divergence_factor": 100.0,
}
PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
TOP_KEYS = ("family", "space", "fixed", "budget", "objective", "study")
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
DEFAULT_SPECS = ("sinusoid",)


@dataclass(frozen=True)
class Budget:
    """What one trial may spend: meta-iterations, validation cadence and evaluation size.

    ``divergence_factor``: a trial whose post-adaptation validation loss exceeds this many
    times the pre-adaptation loss is stopped as diverged (adaptation made things worse).
    """

    iterations: int = 500
    val_interval: int = 100
    val_tasks: int = 100
    eval_tasks: int = 200
    divergence_factor: float = 100.0

    def overrides(self) -> dict[str, Any]:
        return {dotted: getattr(self, name) for name, dotted in BUDGET_KEYS.items()}


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


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec. ``space`` maps dotted settings to spec-form parameters."""

    source: str
    family: str
    family_options: Mapping[str, Any]
    kind: str
    space: Mapping[str, Mapping[str, Any]]
    fixed: Mapping[str, Any]
    budget: Budget
    objective: Objective
    study: StudySettings

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a study is resumed (family, space, settings, objective)."""
        return _plain(
            {
                "family": self.family,
                "family_options": dict(self.family_options),
                "space": {k: dict(v) for k, v in self.space.items()},
                "fixed": dict(self.fixed),
                "budget": dataclasses.asdict(self.budget),
                "objective": {
                    "metrics": list(self.objective.metrics),
                    "directions": list(self.objective.directions),
                },
            }
        )

    def to_dict(self) -> dict[str, Any]:
        data = self.fingerprint()
        data["source"] = self.source
        data["study"] = _plain(dataclasses.asdict(self.study))
        return data

    def base_overrides(self) -> dict[str, Any]:
        """Dotted overrides every trial starts from: fixed settings, then the budget."""
        return {**dict(self.fixed), **self.budget.overrides()}


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


# ----------------------------------------------------------------------------- loading


def default_spec_path(family: str = "sinusoid") -> Path | None:
    """The packaged default spec for ``family`` (``None`` if the package ships none)."""
    if family not in DEFAULT_SPECS:
        return None
    ref = resources.files("maml_tune.search") / "default_specs" / f"{family}.toml"
    return Path(str(ref))


def read_spec_data(path: str | os.PathLike) -> dict[str, Any]:
    """The raw TOML table of a spec file (syntax errors name the file and line)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: study spec not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a TOML file, got a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read study spec: {exc.strerror or exc}") from None


def load_spec(
    path: str | os.PathLike, registry: Any, overrides: Mapping[str, Any] | None = None
) -> StudySpec:
    """Read and validate the spec at ``path``; ``overrides``: see :func:`apply_overrides`."""
    data = read_spec_data(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_spec(data, str(path), registry)


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of raw spec ``data`` with command-line choices applied.

    ``overrides`` keys: ``family`` (a new family clears family options and an explicit
    space unless the family is unchanged), ``name``, ``sampler``, ``pruner``, ``seed``,
    ``n_trials``, ``timeout``, ``baseline`` (into ``[study]``) and ``sets`` (dotted
    ``KEY=VALUE`` settings: ``family.*`` go to the family options, ``budget.*`` to the
    budget, everything else to ``[fixed]``).
    """
    data = copy.deepcopy(dict(data))
    study = dict(data.get("study") or {}) if isinstance(data.get("study", {}), Mapping) else data["study"]
    family = overrides.get("family")
    if family is not None:
        current = data.get("family")
        current_name = current.get("name") if isinstance(current, Mapping) else current
        if current_name != family:
            data["family"] = {"name": family}
            data.pop("space", None)
            if isinstance(study, Mapping):
                study["inherit_space"] = True
                study.setdefault("name", family)
    for key in ("name", "sampler", "pruner", "seed", "n_trials", "timeout", "baseline"):
        if overrides.get(key) is not None and isinstance(study, dict):
            if key in ("sampler", "pruner") and study.get(key) != overrides[key]:
                study.pop(f"{key}_options", None)  # the spec's options belong to its own sampler/pruner
            study[key] = overrides[key]
    data["study"] = study
    sets = overrides.get("sets") or {}
    for key, value in sets.items():
        if key.startswith(FAMILY_PREFIX):
            fam = data.get("family")
            fam = {"name": fam} if isinstance(fam, str) else dict(fam or {})
            options = dict(fam.get("options") or {})
            options[key.removeprefix(FAMILY_PREFIX)] = value
            fam["options"] = options
            data["family"] = fam
        elif key.startswith("budget."):
            budget = dict(data.get("budget") or {})
            budget[key.split(".", 1)[1]] = value
            data["budget"] = budget
        else:
            fixed = dict(data.get("fixed") or {})
            fixed[key] = value
            data["fixed"] = fixed
            space = data.get("space")
            if isinstance(space, Mapping):  # a fixed setting leaves the search space
                data["space"] = {
                    k: v for k, v in _flatten_space(space).items() if _canonical(k) != _canonical(key)
                }
    return data


def _canonical(key: str) -> str:
    try:
        section, name = resolve_key(key)
    except ConfigError:
        return key
    return f"{section}.{name}" if section else name


# ----------------------------------------------------------------------------- validation


class _Where:
    """Formats ``FILE: KEY.PATH: message`` for every error of one spec."""

    def __init__(self, source: str):
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return f"{value!r} ({type(value).__name__})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_spec(data: Mapping[str, Any], source: str, registry: Any) -> StudySpec:
    """Validate raw spec ``data`` (from ``source``, for messages) into a :class:`StudySpec`."""
    w = _Where(source)
    if not isinstance(data, Mapping):
        raise w.error("(top level)", f"expected a table, got {_describe(data)}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise w.error(unknown[0], f"unknown key (expected one of: {', '.join(TOP_KEYS)})")
    family_name, raw_options = _parse_family_table(w, data.get("family", "sinusoid"))
    family = _create_family(w, registry, family_name, raw_options)
    family_options = dict(raw_options)

    fixed, fixed_family = _parse_fixed(w, data.get("fixed", {}))
    for key, value in fixed_family.items():
        if key in family_options:
            raise w.error(f"fixed.family.{key}", "family option also set in [family.options]; set it once")
        family_options[key] = value
    if fixed_family:
        family = _create_family(w, registry, family_name, family_options, path="fixed")

    budget = _parse_budget(w, data.get("budget", {}))
    for dotted in BUDGET_KEYS.values():
        if dotted in fixed:
            name = next(k for k, v in BUDGET_KEYS.items() if v == dotted)
            raise w.error(f"fixed.{dotted}", f"set in [budget] as {name!r}, not in [fixed]")

    study_raw = data.get("study", {})
    if not isinstance(study_raw, Mapping):
        raise w.error("study", f"expected a table, got {_describe(study_raw)}")
    inherit = study_raw.get("inherit_space", True)
    if not isinstance(inherit, bool):
        raise w.error("study.inherit_space", f"expected true or false, got {_describe(inherit)}")

    space = _parse_space(w, data.get("space", {}), family, fixed, inherit)
    objective = _parse_objective(w, data.get("objective", {}), family.kind)
    default_name = Path(source).stem if source.endswith(".toml") else family_name
    study = _parse_study(w, study_raw, objective, default_name)
    # Every base value must make a valid run config (e.g. fixed values, budget).
    try:
        family.run_config({**fixed, **budget.overrides()})
    except ConfigError as exc:
        raise w.error("fixed", f"the fixed settings and budget do not form a valid config: {exc}") from None
    return StudySpec(
        source=source,
        family=family_name,
        family_options=family_options,
        kind=family.kind,
        space=space,
        fixed=fixed,
        budget=budget,
        objective=objective,
        study=study,
    )


def _parse_family_table(w: _Where, raw: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    if not isinstance(raw, Mapping):
        raise w.error("family", f"expected a family name or a table, got {_describe(raw)}")
    unknown = sorted(set(raw) - {"name", "options"})
    if unknown:
        raise w.error(f"family.{unknown[0]}", "unknown key (expected name, options)")
    name = raw.get("name", "sinusoid")
    if not isinstance(name, str) or not name:
        raise w.error("family.name", f"expected a family name, got {_describe(name)}")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise w.error("family.options", f"expected a table, got {_describe(options)}")
    return name, dict(options)


def _create_family(w: _Where, registry: Any, name: str, options: Mapping[str, Any], path: str = "family"):
    try:
        cls = registry.get(name)
    except MamlTuneError as exc:
        raise w.error("family.name", str(exc)) from None
    try:
        return cls(dict(options))
    except ConfigError as exc:
        message = str(exc)
        key = next((k for k in options if repr(k) in message), None)
        where = (
            f"{path}.options.{key}"
            if key and path == "family"
            else (f"fixed.family.{key}" if key else f"{path}.options")
        )
        raise w.error(where, message) from None


def _parse_fixed(w: _Where, raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise w.error("fixed", f"expected a table of dotted settings, got {_describe(raw)}")
    fixed: dict[str, Any] = {}
    family: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        if isinstance(value, (Mapping, list)):
            raise w.error(f"fixed.{key}", f"expected a single value, got {_describe(value)}")
        try:
            section, name = resolve_key(key)
        except ConfigError as exc:
            raise w.error(f"fixed.{key}", str(exc)) from None
        if section == "family":
            family[name] = value
            continue
        dotted = f"{section}.{name}" if section else name
        if dotted == "family":
            raise w.error(f"fixed.{key}", "set the family in [family], not in [fixed]")
        try:
            RunConfig().override({dotted: value})
        except ConfigError as exc:
            raise w.error(f"fixed.{key}", str(exc)) from None
        fixed[dotted] = value
    return fixed, family


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"inner_lr": 1}}`` and ``{"algo.inner_lr": 1}`` both → ``{"algo.inner_lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and not prefix and key in ("arch", "algo", "train", "family"):
            out.update(_flatten(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def _parse_budget(w: _Where, raw: Any) -> Budget:
    if not isinstance(raw, Mapping):
        raise w.error("budget", f"expected a table, got {_describe(raw)}")
    allowed = list(DEFAULT_BUDGET)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise w.error(f"budget.{unknown[0]}", f"unknown key (expected one of: {', '.join(allowed)})")
    values = dict(DEFAULT_BUDGET)
    for key, value in raw.items():
        if isinstance(value, str):  # from --set budget.KEY=VALUE
            try:
                value = float(value) if key == "divergence_factor" else int(value)
            except ValueError:
                pass
        if key == "divergence_factor":
            if not _is_number(value) or not value > 1:
                raise w.error(f"budget.{key}", f"expected a number > 1, got {_describe(value)}")
            values[key] = float(value)
        else:
            low = 0 if key == "iterations" else 1
            if not _is_int(value) or value < low:
                raise w.error(f"budget.{key}", f"expected an integer >= {low}, got {_describe(value)}")
            values[key] = value
    return Budget(**values)


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _parse_space(w: _Where, raw: Any, family: Any, fixed: Mapping[str, Any], inherit: bool) -> dict:
    if not isinstance(raw, Mapping):
        raise w.error("space", f"expected a table of parameters, got {_describe(raw)}")
    explicit: dict[str, dict[str, Any]] = {}
    for key, spec in _flatten_space(raw).items():
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


def _flatten_space(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and "type" not in value and key in ("arch", "algo", "train"):
            for sub, spec in value.items():
                out[f"{key}.{sub}"] = spec
        else:
            out[key] = value
    return out


def _parse_param(w: _Where, path: str, dotted: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise w.error(
            path,
            f'expected a parameter table like {{type = "float", low = 0.001, high = 1.0}}, '
            f"got {_describe(spec)}",
        )
    kind = spec.get("type")
    if kind not in PARAM_KEYS:
        raise w.error(f"{path}.type", f"expected one of float, int, categorical, got {_describe(kind)}")
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
                f"expected a non-empty array, got "
                f"{'an empty array' if choices == [] else _describe(choices)}",
            )
        for i, choice in enumerate(choices):
            if not isinstance(choice, (str, int, float, bool)):
                raise w.error(
                    f"{path}.choices[{i}]", f"expected a string, number or boolean, got {_describe(choice)}"
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
        check = _is_int if kind == "int" else _is_number
        what = "an integer" if kind == "int" else "a number"
        for bound in ("low", "high"):
            if bound not in spec:
                raise w.error(f"{path}.{bound}", f"missing (expected {what})")
            if not check(spec[bound]) or (kind == "float" and not math.isfinite(spec[bound])):
                raise w.error(f"{path}.{bound}", f"expected {what}, got {_describe(spec[bound])}")
        low, high = spec["low"], spec["high"]
        if low > high:
            raise w.error(path, f"inverted range: expected low <= high, got low = {low}, high = {high}")
        if low == high:
            raise w.error(path, f"empty range: low = high = {low} (to fix a value, put it in [fixed])")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise w.error(f"{path}.log", f"expected true or false, got {_describe(log)}")
        if log and low <= 0:
            raise w.error(
                f"{path}.low",
                f"a log-scale range must have low > 0, got {low} "
                f"(for ranges including 0 or negative values use log = false)",
            )
        if "step" in spec:
            step = spec["step"]
            if not check(step) or step <= 0:
                raise w.error(f"{path}.step", f"expected {what} > 0, got {_describe(step)}")
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


def _check_value(w: _Where, path: str, dotted: str, value: Any, kind_type: Any) -> None:
    if kind_type is bool and not isinstance(value, bool):
        raise w.error(path, f"{dotted} is a boolean setting: expected true or false, got {_describe(value)}")
    if kind_type is int and not _is_int(value):
        raise w.error(path, f"{dotted} is an integer setting: expected an integer, got {_describe(value)}")
    if kind_type is float and not _is_number(value):
        raise w.error(path, f"{dotted} is a number setting: expected a number, got {_describe(value)}")
    if kind_type is str and not isinstance(value, str):
        raise w.error(path, f"{dotted} is a string setting: expected a string, got {_describe(value)}")
    try:
        RunConfig().override({dotted: value})
    except ConfigError as exc:
        raise w.error(path, str(exc)) from None


def _parse_when(w: _Where, path: str, raw: Any) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping) or not raw:
        raise w.error(path, f"expected a non-empty table of setting = value(s), got {_describe(raw)}")
    out: dict[str, list[Any]] = {}
    for key, value in _flatten(raw).items():
        try:
            section, name = resolve_key(key)
        except ConfigError as exc:
            raise w.error(f"{path}.{key}", str(exc)) from None
        dotted = f"{section}.{name}" if section else name
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, (Mapping, list)) for v in values):
            raise w.error(
                f"{path}.{key}", f"expected a value or a non-empty array of values, got {_describe(value)}"
            )
        out[dotted] = list(values)
    return out


def _check_conditions(w: _Where, space: Mapping[str, Mapping[str, Any]]) -> None:
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


def _parse_objective(w: _Where, raw: Any, kind: str) -> Objective:
    if not isinstance(raw, Mapping):
        raise w.error("objective", f"expected a table, got {_describe(raw)}")
    unknown = sorted(set(raw) - {"metrics", "directions"})
    if unknown:
        raise w.error(f"objective.{unknown[0]}", "unknown key (expected metrics, directions)")
    default = "val_accuracy" if kind == "classification" else "val_loss"
    metrics = raw.get("metrics", [default])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise w.error(
            "objective.metrics", f"expected a non-empty array of metric names, got {_describe(metrics)}"
        )
    for i, metric in enumerate(metrics):
        if metric not in METRICS:
            raise w.error(
                f"objective.metrics[{i}]", f"expected one of {', '.join(METRICS)}, got {_describe(metric)}"
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
            f"expected an array of {len(metrics)} direction(s), one per metric, got {_describe(directions)}",
        )
    for i, direction in enumerate(directions):
        if direction not in ("minimize", "maximize"):
            raise w.error(
                f"objective.directions[{i}]", f"expected minimize or maximize, got {_describe(direction)}"
            )
    return Objective(tuple(metrics), tuple(directions))


def _parse_study(w: _Where, raw: Mapping[str, Any], objective: Objective, default_name: str) -> StudySettings:
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise w.error(f"study.{unknown[0]}", f"unknown key (expected one of: {', '.join(STUDY_KEYS)})")
    values: dict[str, Any] = {}
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise w.error("study.name", f"expected a non-empty string, got {_describe(name)}")
    values["name"] = name
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise w.error("study.sampler", f"expected one of {', '.join(SAMPLERS)}, got {_describe(sampler)}")
    if objective.multi and sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise w.error(
            "study.sampler",
            f"{sampler} supports one objective only; this study has "
            f"{len(objective.metrics)} (use tpe, random, gp or nsga2)",
        )
    values["sampler"] = sampler
    pruner = raw.get("pruner", "none" if objective.multi else "median")
    if pruner not in PRUNERS:
        raise w.error("study.pruner", f"expected one of {', '.join(PRUNERS)}, got {_describe(pruner)}")
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
            if not _is_int(value) or value < low:
                raise w.error(f"study.{key}", f"expected an integer >= {low}, got {_describe(value)}")
            values[key] = value
    if "timeout" in raw:
        timeout = raw["timeout"]
        if isinstance(timeout, str):
            try:
                timeout = float(timeout)
            except ValueError:
                pass
        if not _is_number(timeout) or timeout < 0:
            raise w.error(
                "study.timeout", f"expected a number of seconds >= 0 (0: none), got {_describe(timeout)}"
            )
        values["timeout"] = float(timeout) or None
    for key in ("baseline", "inherit_space"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise w.error(f"study.{key}", f"expected true or false, got {_describe(raw[key])}")
            values[key] = raw[key]
    for key, kind in (("sampler_options", "sampler"), ("pruner_options", "pruner")):
        options = raw.get(key, {})
        if not isinstance(options, Mapping):
            raise w.error(f"study.{key}", f"expected a table, got {_describe(options)}")
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
