"""Reading studies back: list, show, best trial or Pareto set, export, delete, a trial's config.

Everything returns plain JSON-serialisable data (the CLI prints it, as tables or ``--json``);
studies are read with Optuna's own API, so any study in the database can be listed, and
maml-tune's own attributes are used where present.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maml_tune.core.config import RunConfig
from maml_tune.errors import ConfigError, StorageError, StudyError
from maml_tune.search.record import TrialAttrs
from maml_tune.search.storage import (
    MAX_RETRY,
    lost_worker,
    mask_url,
    normalize_url,
    open_storage,
    storage_url,
)

STUDY_ATTR = "maml_tune"
"""Study user attribute holding ``{"fingerprint", "spec", "version"}`` of the spec that created it."""

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def study_names(storage: Any) -> list[str]:
    optuna = _optuna()
    return sorted(optuna.get_all_study_names(storage))


def load(storage_or_url: Any, name: str | None):
    """The study ``name`` (or the only study in the database when ``name`` is ``None``)."""
    optuna = _optuna()
    storage = (
        storage_or_url
        if not isinstance(storage_or_url, (str, type(None)))
        else open_storage(storage_or_url, heartbeat=False, create=False)
    )
    names = study_names(storage)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise StudyError(f"no studies in {mask_url(str(storage.url))}")
        else:
            raise StudyError(
                f"several studies in {mask_url(str(storage.url))}; name one of: {', '.join(names)}"
            )
    if name not in names:
        known = ", ".join(names) or "none"
        raise StudyError(f"no study named {name!r} in {mask_url(str(storage.url))} (studies: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def trial_states(url: str | None, name: str, numbers: set[int]) -> dict[int, str]:
    """The stored state (``RUNNING``, ``FAIL`` …) of each of the trials ``numbers`` of study ``name``."""
    trials = load(url, name).get_trials(deepcopy=False)
    return {t.number: t.state.name for t in trials if t.number in numbers}


def retried(trial: Any, retried_numbers: set[int]) -> bool:
    return trial.state.name == "FAIL" and trial.number in retried_numbers


def given_up(trial: Any, retried_numbers: set[int]) -> bool:
    """A configuration whose worker was lost on each of its ``1 + MAX_RETRY`` runs (killed by the
    system for its memory, say): it is not run again and does not count, so a new trial replaces it."""
    return (
        trial.state.name == "FAIL"
        and trial.number not in retried_numbers
        and lost_worker(TrialAttrs.of(trial).reason)
        and len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRY
    )


def retried_numbers(trials: list[Any]) -> set[int]:
    """Numbers of failed trials that a heartbeat retry re-queued (they are not counted twice)."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(trial.system_attrs.get("retry_history", []))
    return numbers


def counts(trials: list[Any]) -> dict[str, int]:
    counter = Counter(t.state.name for t in trials)
    out = {state.lower(): counter.get(state, 0) for state in STATES}
    out["total"] = len(trials)
    return out


def counted_trials(trials: list[Any]) -> int:
    """Trials that count towards a study's requested total: all but WAITING, retried failures and
    configurations given up on (:func:`given_up`)."""
    again = retried_numbers(trials)
    return sum(
        1 for t in trials if t.state.name != "WAITING" and not retried(t, again) and not given_up(t, again)
    )


def given_up_trials(trials: list[Any]) -> list[dict[str, Any]]:
    """The configurations given up on: the last run's number, the first's, how many runs, why."""
    again = retried_numbers(trials)
    return [
        {
            "number": t.number,
            "first_trial": t.system_attrs.get("failed_trial", t.number),
            "runs": len(t.system_attrs.get("retry_history", [])) + 1,
            "params": dict(t.params),
            "reason": TrialAttrs.of(t).reason,
        }
        for t in trials
        if given_up(t, again)
    ]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def trial_dict(trial: Any, *, full: bool = True) -> dict[str, Any]:
    """One trial as plain data: number, state, values, params, timing and (``full``) user attributes."""
    out: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "values": [_finite(v) for v in trial.values] if trial.values is not None else None,
        "params": dict(trial.params),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
        "reason": TrialAttrs.of(trial).reason,
        "baseline": TrialAttrs.of(trial).baseline,
    }
    if full:
        out["user_attrs"] = json.loads(json.dumps(dict(trial.user_attrs), default=str))
    return out


def _directions(study: Any) -> list[str]:
    return [d.name.lower() for d in study.directions]


def best_trials(study: Any) -> list[Any]:
    """The best trial (single objective) or the Pareto set (multi-objective); empty if none completed."""
    completed = study.get_trials(deepcopy=False, states=(_optuna().trial.TrialState.COMPLETE,))
    if not completed:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def _test_metrics(trial: Any) -> dict[str, Any]:
    """The trial's meta-test metrics (``test_loss``, its interval, ``test_accuracy`` …)."""
    metrics = TrialAttrs.of(trial).metrics
    return {k: _finite(v) for k, v in metrics.items() if k.startswith("test_") and "before" not in k}


def summary(study: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs.get(STUDY_ATTR, {}) or {}
    spec = attrs.get("spec", {})
    best = best_trials(study)
    baseline = next((t for t in trials if TrialAttrs.of(t).baseline), None)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    return {
        "name": study.study_name,
        "family": spec.get("family"),
        "directions": _directions(study),
        "metrics": study.metric_names or spec.get("objective", {}).get("metrics"),
        "counts": counts(trials),
        "best_values": [_finite(v) for v in best[0].values] if len(best) == 1 else None,
        "best_trial": best[0].number if len(best) == 1 else None,
        "best_params": dict(best[0].params) if len(best) == 1 else None,
        "best_test": _test_metrics(best[0]) if len(best) == 1 else None,
        "pareto_size": len(best) if len(study.directions) > 1 else None,
        "given_up": given_up_trials(trials),
        "baseline_trial": baseline.number if baseline else None,
        "baseline_values": [_finite(v) for v in baseline.values] if baseline and baseline.values else None,
        "started": min(starts).isoformat() if starts else None,
    }


def list_studies(url: str | None) -> list[dict[str, Any]]:
    storage = open_storage(url, heartbeat=False, create=False)
    return [summary(load(storage, name)) for name in study_names(storage)]


def show(url: str | None, name: str | None) -> dict[str, Any]:
    study = load(url, name)
    out = summary(study)
    attrs = study.user_attrs.get(STUDY_ATTR, {}) or {}
    out["spec"] = attrs.get("spec")
    out["created_by_version"] = attrs.get("version")
    out["trials"] = [trial_dict(t, full=False) for t in study.get_trials(deepcopy=False)]
    return out


def best(url: str | None, name: str | None) -> dict[str, Any]:
    """``{"study", "directions", "metrics", "pareto": bool, "trials": [...]}`` with configs and metrics."""
    study = load(url, name)
    trials = best_trials(study)
    if not trials:
        raise StudyError(f"study {study.study_name!r} has no completed trials yet")
    return {
        "study": study.study_name,
        "directions": _directions(study),
        "metrics": study.metric_names,
        "pareto": len(study.directions) > 1,
        "trials": [trial_dict(t) for t in trials],
    }


def pick_trial(url: str | None, name: str | None, which: str | int = "best") -> Any:
    """A completed trial: ``"best"`` (multi-objective: the lowest-numbered Pareto trial) or a number."""
    study = load(url, name)
    if str(which) == "best":
        trials = best_trials(study)
        if not trials:
            raise StudyError(f"study {study.study_name!r} has no completed trials yet")
        return study, trials[0]
    try:
        number = int(which)
    except ValueError:
        raise ConfigError(f"--trial: expected a trial number or best, got {which!r}") from None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise StudyError(f"study {study.study_name!r} has no trial {number}")
    return study, found[0]


@dataclass(frozen=True)
class TrialConfig:
    """The full configuration a trial ran, with the study, trial, values and sampled parameters."""

    study: str
    trial: int
    values: list[float] | None
    params: dict[str, Any]
    config: RunConfig


def trial_config(url: str | None, name: str | None, which: str | int = "best") -> TrialConfig:
    """The configuration trial ``which`` (a trial number or ``best``) of study ``name`` ran."""
    study, trial = pick_trial(url, name, which)
    data = TrialAttrs.of(trial).config
    if not data:
        raise StudyError(f"trial {trial.number} of study {study.study_name!r} records no config")
    values = None if trial.values is None else list(trial.values)
    return TrialConfig(study.study_name, trial.number, values, dict(trial.params), RunConfig.from_dict(data))


def flat_row(trial: dict[str, Any]) -> dict[str, Any]:
    """A trial dict flattened for CSV: ``params.*``, ``metrics.*``, ``values_N``, ``config`` as JSON."""
    row: dict[str, Any] = {
        k: trial[k]
        for k in (
            "number",
            "state",
            "datetime_start",
            "datetime_complete",
            "duration_seconds",
            "reason",
            "baseline",
        )
    }
    for i, value in enumerate(trial["values"] or []):
        row[f"value_{i}"] = value
    for key, value in trial["params"].items():
        row[f"params.{key}"] = value
    attrs = TrialAttrs.from_user_attrs(trial.get("user_attrs"))
    for key, value in attrs.metrics.items():
        row[f"metrics.{key}"] = value
    for key in ("n_params", "wall_seconds", "tasks_per_sec", "device", "version", "checkpoint"):
        if getattr(attrs, key) is not None:
            row[key] = getattr(attrs, key)
    if attrs.config is not None:
        row["config"] = json.dumps(attrs.config, sort_keys=True)
    return row


def export(
    url: str | None, name: str | None, path: str | Path | None, fmt: str | None = None
) -> dict[str, Any]:
    """Write every trial of a study to ``path`` (``.json`` or ``.csv``; ``fmt`` overrides); returns a summary.

    ``path`` ``None`` or ``"-"`` returns the data instead of writing (``"data"`` key).
    """
    study = load(url, name)
    trials = [trial_dict(t) for t in study.get_trials(deepcopy=False)]
    fmt = (fmt or (Path(path).suffix.lstrip(".") if path not in (None, "-") else "json")).lower()
    if fmt not in ("json", "csv"):
        raise ConfigError(f"--format: expected json or csv, got {fmt!r}")
    payload = {"study": summary(study), "trials": trials}
    if path in (None, "-"):
        return {"format": fmt, "data": payload if fmt == "json" else [flat_row(t) for t in trials]}
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            target.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        else:
            rows = [flat_row(t) for t in trials]
            columns: list[str] = []
            for row in rows:
                columns.extend(k for k in row if k not in columns)
            with target.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return {"study": study.study_name, "format": fmt, "path": str(target), "trials": len(trials)}


def delete(
    url: str | None, name: str, checkpoint_root: str | Path | None = "studies/checkpoints"
) -> dict[str, Any]:
    """Delete study ``name`` (and its checkpoint folder under ``checkpoint_root``, if any)."""
    from maml_tune.search.objective import checkpoint_dir

    optuna = _optuna()
    study = load(url, name)
    optuna.delete_study(study_name=study.study_name, storage=study._storage)
    removed = None
    if checkpoint_root is not None:
        folder = checkpoint_dir(checkpoint_root, study.study_name, 0).parent
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed = str(folder)
    return {
        "deleted": study.study_name,
        "storage": mask_url(normalize_url(storage_url(url))),
        "checkpoints_removed": removed,
    }
