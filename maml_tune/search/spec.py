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
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from maml_tune.core.config import FAMILY_PREFIX, RunConfig, resolve_key
from maml_tune.errors import ConfigError, MamlTuneError
from maml_tune.search._spec_common import Where, describe, flatten, is_int, is_number
from maml_tune.search._spec_space import flatten_space, parse_space
from maml_tune.search._spec_study import (
    Objective,
    StudySettings,
    parse_objective,
    parse_study,
)

__all__ = [
    "BUDGET_KEYS",
    "DEFAULT_BUDGET",
    "Budget",
    "Objective",
    "StudySettings",
    "StudySpec",
    "apply_overrides",
    "default_spec_path",
    "load_spec",
    "parse_spec",
    "read_spec_data",
]


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
TOP_KEYS = ("family", "space", "fixed", "budget", "objective", "study")
MAX_SPEC_BYTES = 1024 * 1024
"""A spec is a few hundred bytes; anything over a MiB is not one (``/dev/zero``, a data file)."""
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
        if path.exists() and not path.is_dir() and not path.is_file():
            raise ConfigError(f"{path}: expected a TOML file, got a device, pipe or socket")
        with path.open("rb") as handle:
            blob = handle.read(MAX_SPEC_BYTES + 1)
        if len(blob) > MAX_SPEC_BYTES:
            raise ConfigError(f"{path}: larger than a study spec can be ({MAX_SPEC_BYTES // 1024} KiB)")
        return tomllib.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: tables or arrays nested too deeply") from None
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
                    k: v for k, v in flatten_space(space).items() if _canonical(k) != _canonical(key)
                }
    return data


def _canonical(key: str) -> str:
    try:
        section, name = resolve_key(key)
    except ConfigError:
        return key
    return f"{section}.{name}" if section else name


def parse_spec(data: Mapping[str, Any], source: str, registry: Any) -> StudySpec:
    """Validate raw spec ``data`` (from ``source``, for messages) into a :class:`StudySpec`."""
    w = Where(source)
    if not isinstance(data, Mapping):
        raise w.error("(top level)", f"expected a table, got {describe(data)}")
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
        raise w.error("study", f"expected a table, got {describe(study_raw)}")
    inherit = study_raw.get("inherit_space", True)
    if not isinstance(inherit, bool):
        raise w.error("study.inherit_space", f"expected true or false, got {describe(inherit)}")

    space = parse_space(w, data.get("space", {}), family, fixed, inherit)
    objective = parse_objective(w, data.get("objective", {}), family.kind)
    default_name = Path(source).stem if source.endswith(".toml") else family_name
    study = parse_study(w, study_raw, objective, default_name)
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


def _parse_family_table(w: Where, raw: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    if not isinstance(raw, Mapping):
        raise w.error("family", f"expected a family name or a table, got {describe(raw)}")
    unknown = sorted(set(raw) - {"name", "options"})
    if unknown:
        raise w.error(f"family.{unknown[0]}", "unknown key (expected name, options)")
    name = raw.get("name", "sinusoid")
    if not isinstance(name, str) or not name:
        raise w.error("family.name", f"expected a family name, got {describe(name)}")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise w.error("family.options", f"expected a table, got {describe(options)}")
    return name, dict(options)


def _create_family(w: Where, registry: Any, name: str, options: Mapping[str, Any], path: str = "family"):
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


def _parse_fixed(w: Where, raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise w.error("fixed", f"expected a table of dotted settings, got {describe(raw)}")
    fixed: dict[str, Any] = {}
    family: dict[str, Any] = {}
    for key, value in flatten(raw).items():
        if isinstance(value, (Mapping, list)):
            raise w.error(f"fixed.{key}", f"expected a single value, got {describe(value)}")
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


def _parse_budget(w: Where, raw: Any) -> Budget:
    if not isinstance(raw, Mapping):
        raise w.error("budget", f"expected a table, got {describe(raw)}")
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
            if not is_number(value) or not 1 < value < math.inf:
                raise w.error(f"budget.{key}", f"expected a number > 1, got {describe(value)}")
            values[key] = float(value)
        else:
            low = 1  # a trial of 0 iterations would only fail
            if not is_int(value) or value < low:
                raise w.error(f"budget.{key}", f"expected an integer >= {low}, got {describe(value)}")
            values[key] = value
    return Budget(**values)
