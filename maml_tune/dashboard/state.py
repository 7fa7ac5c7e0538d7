"""What the dashboard shows, as plain data: :class:`Dashboard` turns a source's trials into a :class:`View`.

Everything that depends only on finished trials (ranking, Pareto set, importance) is cached
and recomputed only when the set of completed trials changed; importance (the costliest) at
most every ``importance_interval`` seconds while watching. No printing, no rich.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from maml_tune.dashboard.source import STATES, StudyInfo, StudySource, TrialRecord, finite, utcnow

MIN_IMPORTANCE_TRIALS = 5
"""Completed trials needed before hyperparameter importance is evaluated."""
IMPORTANCE_MAX_TRIALS = 2000
"""Above this many completed trials, importance is evaluated on an evenly spaced sample of them."""
CURVE_BEST = 3
"""Learning curves drawn for this many best trials (plus every running trial)."""

KEY_PARAMS = (
    ("algorithm", "algo", "algorithm"),
    ("order", "algo", "first_order"),
    ("inner lr", "algo", "inner_lr"),
    ("steps", "algo", "inner_steps"),
    ("test steps", "algo", "test_inner_steps"),
    ("arch", "arch", None),
    ("meta lr", "train", "meta_lr"),
    ("meta-batch", "train", "meta_batch"),
)


@dataclass
class Importance:
    values: dict[str, float] | None
    note: str
    n_trials: int = 0
    evaluator: str = "PED-ANOVA"


@dataclass
class View:
    """One snapshot of a study, ready to render."""

    info: StudyInfo
    url: str
    now: Any
    counts: dict[str, int]
    best: TrialRecord | None
    best_ci: list[float | None]
    started: Any
    elapsed_s: float | None
    trials_per_hour: float | None
    top: list[TrialRecord]
    pareto: bool
    history: list[tuple[int, float]]
    best_so_far: list[tuple[int, float]]
    importance: Importance
    curves: list[tuple[str, list[tuple[int, float]]]]
    running: list[dict[str, Any]]
    front: list[tuple[float, float, int, bool]] = field(default_factory=list)
    """Multi-objective: (objective 0, objective 1, number, on the Pareto front)."""
    refresh_seconds: float = 0.0
    source_kind: str = "sql"

    @property
    def objective_names(self) -> list[str]:
        return self.info.objective_names()


def _sign(direction: str) -> int:
    return 1 if direction == "minimize" else -1


def pareto_front(points: list[tuple[tuple[float, ...], Any]], directions: list[str]) -> list[Any]:
    """Items whose value tuples no other item dominates (directions applied)."""
    import numpy as np

    if not points:
        return []
    signs = np.array([_sign(d) for d in directions], dtype=float)
    values = np.array([p[0] for p in points], dtype=float) * signs
    order = np.lexsort(values.T[::-1])
    kept: list[int] = []
    front = np.empty((0, values.shape[1]))
    for index in order:
        row = values[index]
        if front.size and np.any(np.all(front <= row, axis=1) & np.any(front < row, axis=1)):
            continue
        kept.append(int(index))
        front = np.vstack([front, row])
    return [points[i][1] for i in sorted(kept)]


def key_params(record: TrialRecord) -> dict[str, str]:
    """The MAML hyperparameters worth a column, from the recorded config (else the sampled params)."""
    config = record.attrs.config or {}
    out: dict[str, str] = {}
    for label, section, key in KEY_PARAMS:
        part = config.get(section) or {}
        if key is None:  # architecture summary
            if part:
                if part.get("kind", "mlp") == "mlp":
                    out[label] = (
                        f"{part.get('depth')}x{part.get('width')} {part.get('activation', '')}".strip()
                    )
                else:
                    out[label] = f"{part.get('kind')} {part.get('blocks')}x{part.get('channels')}"
            else:
                depth, width = record.params.get("arch.depth"), record.params.get("arch.width")
                if depth is not None or width is not None:
                    out[label] = f"{depth or '?'}x{width or '?'}"
            continue
        value = part.get(key, record.params.get(f"{section}.{key}"))
        if key == "test_inner_steps" and value is None:
            value = part.get("inner_steps", record.params.get("algo.inner_steps"))
        if value is None:
            continue
        if key == "first_order":
            out[label] = "1st" if value else "2nd"
        elif isinstance(value, float):
            out[label] = f"{value:.3g}"
        else:
            out[label] = str(value)
    return out


def ci95(record: TrialRecord | None, metric: str) -> float | None:
    metrics = record.attrs.metrics if record else {}
    value = metrics.get(f"{metric}_ci95")
    return float(value) if finite(value) else None


def curve(record: TrialRecord, metric: str | None) -> list[tuple[int, float]]:
    """Meta-validation values by step: intermediate values, else the ``val_history`` attribute."""
    if record.intermediate:
        return [(s, v) for s, v in record.intermediate.items() if finite(v)]
    history = record.attrs.val_history
    key = "accuracy_after" if metric and metric.endswith("accuracy") else "loss_after"
    return [
        (int(row["iteration"]), float(row[key]))
        for row in history
        if isinstance(row, dict) and finite(row.get(key)) and "iteration" in row
    ]


class Dashboard:
    """Keeps a source and the derived caches; :meth:`view` refreshes and returns a :class:`View`."""

    def __init__(self, source: StudySource, *, top_k: int = 5, importance_interval: float = 0.0):
        self.source = source
        self.top_k = top_k
        self.importance_interval = importance_interval
        self._completed_key: tuple[int, int] | None = None
        self._ranked: list[TrialRecord] = []
        self._front: list[TrialRecord] = []
        self._importance = Importance(None, "not evaluated yet")
        self._importance_key: int | None = None
        self._importance_at = -math.inf
        self._frozen: dict[int, Any] = {}

    @property
    def info(self) -> StudyInfo:
        return self.source.info

    # ----------------------------------------------------------------- caches
    def _completed(self) -> list[TrialRecord]:
        return [
            t
            for t in self.source.trials.values()
            if t.state == "COMPLETE" and t.values and all(finite(v) for v in t.values)
        ]

    def _update_ranking(self, completed: list[TrialRecord]) -> None:
        key = (len(completed), max((t.trial_id for t in completed), default=0))
        if key == self._completed_key:
            return
        self._completed_key = key
        directions = self.info.directions
        if len(directions) == 1:
            sign = _sign(directions[0])
            self._ranked = sorted(completed, key=lambda t: (sign * t.values[0], t.number))
            self._front = []
        else:
            self._front = sorted(
                pareto_front([(t.values, t) for t in completed], directions), key=lambda t: t.number
            )
            self._ranked = list(self._front)

    def _frozen_trial(self, record: TrialRecord):
        frozen = self._frozen.get(record.trial_id)
        if frozen is None:
            from optuna.trial import FrozenTrial, TrialState

            frozen = FrozenTrial(
                number=record.number,
                state=TrialState.COMPLETE,
                value=None,
                values=list(record.values),
                datetime_start=None,
                datetime_complete=None,
                params=dict(record.params),
                distributions=dict(record.distributions),
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=record.trial_id,
            )
            self._frozen[record.trial_id] = frozen
        return frozen

    def importance(self, completed: list[TrialRecord], *, force: bool = False) -> Importance:
        """Optuna's default importance evaluator (PED-ANOVA in Optuna 5) over the completed trials."""
        n = len(completed)
        if n == self._importance_key:
            return self._importance
        now = time.monotonic()
        if (
            not force
            and self._importance_key is not None
            and now - self._importance_at < self.importance_interval
        ):
            return self._importance
        self._importance_key, self._importance_at = n, now
        self._importance = self._evaluate_importance(completed)
        return self._importance

    def _evaluate_importance(self, completed: list[TrialRecord]) -> Importance:
        n = len(completed)
        if n < MIN_IMPORTANCE_TRIALS:
            return Importance(None, f"needs {MIN_IMPORTANCE_TRIALS} completed trials ({n} so far)", n)
        varied = {name for t in completed for name, dist in t.distributions.items() if not dist.single()}
        if not varied:
            return Importance(None, "no searched parameter varies (a single distribution)", n)
        values = {tuple(sorted((k, repr(v)) for k, v in t.params.items() if k in varied)) for t in completed}
        if len(values) < 2:
            return Importance(None, "every completed trial has the same parameters", n)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        sample = sorted(completed, key=lambda t: t.number)
        if len(sample) > IMPORTANCE_MAX_TRIALS:
            step = len(sample) / IMPORTANCE_MAX_TRIALS
            sample = [sample[int(i * step)] for i in range(IMPORTANCE_MAX_TRIALS)]
        frozen = [self._frozen_trial(t) for t in sample]
        study = optuna.create_study(directions=self.info.directions)

        def get_trials(deepcopy: bool = True, states: Any = None) -> list[Any]:
            return list(frozen) if states is None or optuna.trial.TrialState.COMPLETE in states else []

        study.get_trials = get_trials  # type: ignore[method-assign]  # read-only view of our trials
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = optuna.importance.get_param_importances(study)
        except Exception as exc:  # importance is a hint; never stop the dashboard for it
            return Importance(None, f"importance unavailable: {type(exc).__name__}: {exc}", n)
        if not result:
            return Importance(None, "no parameter to evaluate", n)
        note = (
            f"{n} completed trials"
            if len(sample) == n
            else (f"an evenly spaced sample of {len(sample)} of {n} completed trials")
        )
        return Importance(dict(result), note, n)

    # ----------------------------------------------------------------- view
    def view(self, *, refresh: bool = True, force_importance: bool = True) -> View:
        if refresh:
            self.source.refresh()
        trials = self.source.records()
        now = utcnow()
        multi = self.info.multi
        completed = self._completed()
        self._update_ranking(completed)
        top = self._ranked if multi else self._ranked[: self.top_k]
        if multi and len(top) > max(self.top_k, 10):
            top = top[: max(self.top_k, 10)]
        best = None if multi or not self._ranked else self._ranked[0]
        running = [t for t in trials if t.state == "RUNNING"]
        curve_trials = list(self._ranked[:CURVE_BEST]) + running
        # details (attributes, intermediate values) only for the trials a panel shows
        self.source.details({t.trial_id: t for t in top + curve_trials}.values())
        names = self.info.objective_names()
        metric = names[0] if names else None
        counts = state_counts(trials)
        started, elapsed, per_hour = pace(trials, counts, now)
        history, best_so_far = ([], []) if multi else history_points(completed, self.info.directions[0])
        on_front = {t.trial_id for t in self._front}
        return View(
            info=self.info,
            url=self.source.masked_url,
            now=now,
            counts=counts,
            best=best,
            best_ci=[ci95(best, names[0])] if best else [],
            started=started,
            elapsed_s=elapsed,
            trials_per_hour=per_hour,
            top=list(top),
            pareto=multi,
            history=history,
            best_so_far=best_so_far,
            importance=self.importance(completed, force=force_importance),
            curves=curve_series(curve_trials, metric),
            running=running_rows(running, metric, now),
            front=(
                [(t.values[0], t.values[1], t.number, t.trial_id in on_front) for t in completed]
                if multi
                else []
            ),
            refresh_seconds=self.source.last.seconds,
            source_kind=self.source.kind,
        )


# --------------------------------------------------------------------- view parts, one per panel


def state_counts(trials: list[TrialRecord]) -> dict[str, int]:
    """Trials by lower-case state (every state present, zero or not), plus ``total``."""
    counts = {s.lower(): 0 for s in STATES}
    for t in trials:
        counts[t.state.lower()] = counts.get(t.state.lower(), 0) + 1
    counts["total"] = len(trials)
    return counts


def pace(
    trials: list[TrialRecord], counts: dict[str, int], now: Any
) -> tuple[Any, float | None, float | None]:
    """(first start, seconds elapsed, finished trials per hour); the clock stops at the last
    completion once nothing runs."""
    starts = [t.start for t in trials if t.start]
    ends = [t.complete for t in trials if t.complete]
    started = min(starts) if starts else None
    finished = counts["complete"] + counts["pruned"] + counts["fail"]
    elapsed = None
    if started is not None:
        running = any(t.state == "RUNNING" for t in trials)
        until = now if running or not ends else max(ends)
        elapsed = max((until - started).total_seconds(), 0.0)
    per_hour = finished / (elapsed / 3600) if elapsed and elapsed > 0 else None
    return started, elapsed, per_hour


def history_points(
    completed: list[TrialRecord], direction: str
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(value per trial, best value so far), by trial number."""
    sign = _sign(direction)
    history: list[tuple[int, float]] = []
    best_so_far: list[tuple[int, float]] = []
    current = None
    for t in sorted(completed, key=lambda r: r.number):
        history.append((t.number, t.values[0]))
        if current is None or sign * t.values[0] < sign * current:
            current = t.values[0]
        best_so_far.append((t.number, current))
    return history, best_so_far


def curve_series(trials: list[TrialRecord], metric: str | None) -> list[tuple[str, list[tuple[int, float]]]]:
    """(label, points) of each trial that reported a learning curve."""
    out = []
    for t in trials:
        points = curve(t, metric)
        if points:
            out.append((f"#{t.number}" + (" (running)" if t.state == "RUNNING" else ""), points))
    return out


def running_rows(running: list[TrialRecord], metric: str | None, now: Any) -> list[dict[str, Any]]:
    """One row per running trial: last reported step and value, elapsed time, heartbeat age."""
    rows = []
    for t in sorted(running, key=lambda r: r.number):
        points = curve(t, metric)
        rows.append(
            {
                "number": t.number,
                "step": points[-1][0] if points else None,
                "value": points[-1][1] if points else None,
                "elapsed": t.duration(now),
                "heartbeat_age": (now - t.heartbeat).total_seconds() if t.heartbeat else None,
                "params": key_params(t),
            }
        )
    return rows
