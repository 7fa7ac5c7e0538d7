"""The plain records a study source fills in: one trial, the study, one refresh's statistics."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from maml_tune.search.record import TrialAttrs
from maml_tune.search.results import STUDY_ATTR

UNFINISHED = ("RUNNING", "WAITING")
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def utcnow() -> dt.datetime:
    """Now as naive UTC, the way Optuna's RDB storage keeps trial times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class TrialRecord:
    """One trial as the dashboard sees it (times are naive UTC)."""

    trial_id: int
    number: int
    state: str
    start: dt.datetime | None = None
    complete: dt.datetime | None = None
    values: tuple[float, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] | None = None
    """``None`` until :meth:`StudySource.details` loaded them."""
    system_attrs: dict[str, Any] | None = None
    intermediate: dict[int, float] | None = None
    heartbeat: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state not in UNFINISHED

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    def duration(self, now: dt.datetime | None = None) -> float | None:
        """Seconds from start to completion (to ``now`` while unfinished)."""
        if self.start is None:
            return None
        end = self.complete or (None if self.finished else (now or utcnow()))
        return (end - self.start).total_seconds() if end else None

    @property
    def attrs(self) -> TrialAttrs:
        """The typed user attributes (all defaults until :meth:`StudySource.details` loaded them)."""
        return TrialAttrs.from_user_attrs(self.user_attrs, self.system_attrs)

    def reason(self) -> str | None:
        return self.attrs.reason


@dataclass
class StudyInfo:
    study_id: int
    name: str
    directions: list[str]
    metric_names: list[str] | None
    user_attrs: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        return (self.user_attrs.get(STUDY_ATTR) or {}).get("spec") or {}

    @property
    def family(self) -> str | None:
        return self.spec.get("family")

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    def objective_names(self) -> list[str]:
        names = list(self.metric_names or [])
        return names + [f"objective {i}" for i in range(len(names), len(self.directions))]


@dataclass
class RefreshStats:
    new: int = 0
    changed: int = 0
    seconds: float = 0.0


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
