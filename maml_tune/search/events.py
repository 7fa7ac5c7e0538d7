"""Progress of a search, sent to an ``events`` callable; the search itself never prints.

Each event is a small frozen dataclass, one per kind; a consumer dispatches on its type.
``StudyOpened`` comes once, before trials run, and ``FamilyPreparing`` while a worker's
family loads its data; ``TrialStarted``, ``IterationDone``,
``Validated`` and ``TrialEnded`` follow each trial; ``Status`` after each trial (or every
``STATUS_INTERVAL_S`` with several workers); ``StorageFailed`` before a storage retry and
``WorkerFailed`` when a worker process stops on an error. They are picklable, so worker
processes send them back through a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maml_tune.search import results

STATUS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class StudyOpened:
    """The study was created or resumed; ``existing`` trials already count towards ``n_trials``."""

    study: str
    storage: str
    created: bool
    n_trials: int
    existing: int
    remaining: int
    workers: int
    directions: list[str]
    metrics: list[str]
    baseline: dict[str, Any] | None
    recovered: list[int]
    device: str


@dataclass(frozen=True)
class FamilyPreparing:
    """A worker's family is loading its data (``done`` of ``total`` of ``what``), before its trials."""

    worker: int
    done: int
    total: int
    what: str


@dataclass(frozen=True)
class TrialStarted:
    worker: int
    trial: int
    params: dict[str, Any]


@dataclass(frozen=True)
class IterationDone:
    """Sent every few meta-iterations of a trial, and after its last."""

    worker: int
    trial: int
    iteration: int
    iterations: int
    meta_loss: float


@dataclass(frozen=True)
class Validated:
    """A validation result reported to the pruner."""

    worker: int
    trial: int
    iteration: int
    value: float


@dataclass(frozen=True)
class TrialEnded:
    worker: int
    trial: int
    state: str
    values: list[float] | None
    reason: str | None
    baseline: bool


@dataclass(frozen=True)
class Status:
    """The study's :func:`maml_tune.search.results.summary`."""

    summary: dict[str, Any]


@dataclass(frozen=True)
class StorageFailed:
    """The study database failed; the worker retries after a pause."""

    worker: int
    message: str


@dataclass(frozen=True)
class WorkerFailed:
    """A worker process stopped on an error."""

    worker: int
    message: str


Event = (
    StudyOpened
    | FamilyPreparing
    | TrialStarted
    | IterationDone
    | Validated
    | TrialEnded
    | Status
    | StorageFailed
    | WorkerFailed
)
EventSink = Callable[[Event], None]


def send_status(study: Any, sink: EventSink) -> None:
    """Send the study's summary as a :class:`Status` event."""
    sink(Status(results.summary(study)))


def send_status_quietly(study: Any, sink: EventSink) -> None:
    """:func:`send_status`, ignoring a failure: a status poll must never stop the search."""
    try:
        send_status(study, sink)
    except Exception:
        pass
