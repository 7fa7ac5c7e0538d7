"""Running a study: create or resume it, then run trials in one or several worker processes.

The study's requested total (``n_trials``) counts every trial that is not waiting and is not
a failed trial re-queued by a heartbeat retry; re-running the same search resumes the study
(:mod:`maml_tune.search.study`) and adds trials up to that total.

Workers: ``workers == 1`` runs in this process (:mod:`maml_tune.search.worker`); more start
that many processes (:mod:`maml_tune.search.processes`), each with its own storage
connection, sampler and device. The same command run on other machines against the same
server database joins the study.

Faults: before counting, a resumed study's orphaned RUNNING trials are failed with a
``reason`` and re-queued (:mod:`maml_tune.search.recovery`); a retried trial is run even
beyond a worker's quota. Storage errors are retried with :mod:`maml_tune.search.backoff`.

Progress goes to an ``events`` callable (:mod:`maml_tune.search.events`); this module never
prints.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import optuna

from maml_tune.errors import ConfigError, StudyError
from maml_tune.families.registry import Registry
from maml_tune.search import backoff, results
from maml_tune.search.events import (
    Event,
    EventSink,
    StudyOpened,
    TrialEnded,
    send_status,
    send_status_quietly,
)
from maml_tune.search.processes import run_processes
from maml_tune.search.recovery import recover_orphans
from maml_tune.search.spec import StudySpec
from maml_tune.search.storage import mask_url, normalize_url, open_storage, storage_url
from maml_tune.search.study import create_or_resume, enqueue_baseline, quiet_optuna, resolve_study_name
from maml_tune.search.worker import WorkerJob, run_worker, worker_device

__all__ = ["SearchOptions", "SearchResult", "create_or_resume", "run_search", "worker_device"]


@dataclass(frozen=True)
class SearchOptions:
    """How to run a spec; ``None`` values fall back to the spec (and environment)."""

    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    device: str = "auto"
    checkpoint_root: str | None = "studies/checkpoints"
    plugins_dir: str | None = None
    threads: int | None = None


@dataclass
class SearchResult:
    study: str
    storage: str
    n_trials: int
    added: int
    wall_seconds: float
    summary: dict[str, Any]
    baseline_params: dict[str, Any] | None = None
    worker_errors: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quotas(remaining: int, workers: int) -> list[int]:
    """``remaining`` trials shared out as evenly as possible between ``workers``."""
    return [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]


def run_search(
    spec: StudySpec, options: SearchOptions = SearchOptions(), events: EventSink | None = None
) -> SearchResult:
    """Create or resume the study for ``spec`` and run trials up to ``spec.study.n_trials``."""
    sink = events or (lambda event: None)
    quiet_optuna()
    started = time.time()
    url = normalize_url(storage_url(options.storage))
    study_name = resolve_study_name(spec, options.study_name)
    storage = open_storage(url)
    device = worker_device(options.device, 0)  # an unavailable device fails before the study changes
    if options.workers < 1:
        raise ConfigError(f"workers: expected an integer >= 1, got {options.workers}")
    study, created = create_or_resume(spec, storage, study_name)
    recovered = [] if created else recover_orphans(study)
    baseline = None
    if spec.study.baseline:
        family = Registry(options.plugins_dir).create(spec.family, dict(spec.family_options))
        baseline = enqueue_baseline(study, spec, family)
    before = results.counted_trials(study.get_trials(deepcopy=False))
    remaining = max(0, spec.study.n_trials - before)
    deadline = started + spec.study.timeout if spec.study.timeout else None
    workers = max(1, min(options.workers, remaining)) if remaining else 0
    sink(
        StudyOpened(
            study=study_name,
            storage=mask_url(url),
            created=created,
            n_trials=spec.study.n_trials,
            existing=before,
            remaining=remaining,
            workers=workers,
            directions=list(spec.objective.directions),
            metrics=list(spec.objective.metrics),
            baseline=baseline,
            recovered=recovered,
            device=str(device),
        )
    )
    send_status(study, sink)
    errors: list[str] = []
    jobs = [
        WorkerJob(
            spec,
            url,
            study_name,
            spec.study.n_trials,
            quota,
            deadline,
            options.device,
            i,
            options.threads,
            options.checkpoint_root,
            options.plugins_dir,
        )
        for i, quota in enumerate(_quotas(remaining, workers) if workers else [])
    ]
    if len(jobs) == 1:

        def forward(event: Event) -> None:
            sink(event)
            if isinstance(event, TrialEnded):
                send_status_quietly(study, sink)

        run_worker(jobs[0], forward)
    elif jobs:
        errors = run_processes(jobs, study, sink)
    final = backoff.retry(lambda: optuna.load_study(study_name=study_name, storage=storage))
    after = results.counted_trials(backoff.retry(lambda: final.get_trials(deepcopy=False)))
    if jobs and len(errors) == len(jobs) and after == before:
        raise StudyError(f"every worker failed: {errors[0]}")
    summary = backoff.retry(lambda: results.summary(final))
    return SearchResult(
        study_name,
        mask_url(url),
        spec.study.n_trials,
        after - before,
        time.time() - started,
        summary,
        baseline,
        errors,
    )
