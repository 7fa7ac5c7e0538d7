"""The fallback source: Optuna's public API, for databases whose tables :class:`SqlSource` cannot read."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from maml_tune.dashboard._records import RefreshStats, StudyInfo, TrialRecord
from maml_tune.dashboard._source_base import StudySource
from maml_tune.search.storage import normalize_url, storage_url


class OptunaSource(StudySource):
    """Fallback through Optuna's public API: every refresh reloads the study's trials."""

    kind = "optuna"

    def __init__(self, url: str | None, study: str | None = None):
        from maml_tune.search.results import load

        self.url = normalize_url(storage_url(url))
        self._study = load(url, study)
        self.trials = {}
        self.last = RefreshStats()
        s = self._study
        self.info = StudyInfo(
            s._study_id,
            s.study_name,
            [d.name.lower() for d in s.directions],
            s.metric_names,
            dict(s.user_attrs),
        )

    def close(self) -> None:
        """Nothing to release: Optuna's storage object closes its own connections."""

    def refresh(self) -> RefreshStats:
        started = time.perf_counter()
        stats = RefreshStats()
        for t in self._study.get_trials(deepcopy=False):
            old = self.trials.get(t._trial_id)
            if old is None:
                stats.new += 1
            elif old.state != t.state.name:
                stats.changed += 1
            record = _from_frozen(t)
            self.trials[t._trial_id] = record
        stats.seconds = time.perf_counter() - started
        self.last = stats
        return stats

    def details(self, records: Iterable[TrialRecord], *, force: bool = False) -> None:
        """Nothing to do: :meth:`refresh` loads every trial in full."""


def _to_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _from_frozen(t: Any) -> TrialRecord:
    return TrialRecord(
        t._trial_id,
        t.number,
        t.state.name,
        _to_utc(t.datetime_start),
        _to_utc(t.datetime_complete),
        tuple(t.values) if t.values is not None else None,
        dict(t.params),
        dict(t.distributions),
        dict(t.user_attrs),
        dict(t.system_attrs),
        dict(sorted(t.intermediate_values.items())),
    )
