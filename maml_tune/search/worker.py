"""One search worker: runs trials of a study until its quota, the study total or the deadline.

:func:`run_worker` runs in the searching process (one worker) or in each spawned worker
process (see :mod:`maml_tune.search.processes`). A storage error (lost connection) fails
the current trial and the worker carries on after a pause, giving up after
``backoff.STORAGE_RETRIES`` consecutive errors. An interrupt fails the running trial with its
reason, re-queues it and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import optuna
import torch

from maml_tune.core.device import resolve_device
from maml_tune.errors import StorageError
from maml_tune.families.registry import Registry
from maml_tune.search import backoff, interrupt, results
from maml_tune.search.checkpoints import CheckpointKeeper
from maml_tune.search.events import EventSink, FamilyPreparing, StorageFailed, TrialEnded
from maml_tune.search.objective import TrialObjective
from maml_tune.search.record import TrialAttrs
from maml_tune.search.recovery import close_lost_trial, requeue_interrupted
from maml_tune.search.spec import StudySpec
from maml_tune.search.storage import lost_worker, make_pruner, make_sampler, mask_url, open_storage
from maml_tune.search.study import quiet_optuna


@dataclass
class WorkerJob:
    """Everything a worker process needs (picklable)."""

    spec: StudySpec
    storage: str
    study_name: str
    n_trials: int
    quota: int
    deadline: float | None
    device: str
    worker: int
    threads: int | None
    checkpoint_root: str | None
    plugins_dir: str | None


def worker_device(requested: str, worker: int) -> Any:
    """Worker ``worker``'s device: ``cuda:(worker % device_count)`` for ``auto``/``cuda`` with CUDA."""
    if requested in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", worker % torch.cuda.device_count())
    return resolve_device(requested)


def _trial_end_event(worker: int, sink: EventSink) -> Callable[[Any, Any], None]:
    def callback(study: Any, trial: Any) -> None:
        sink(
            TrialEnded(
                worker=worker,
                trial=trial.number,
                state=trial.state.name,
                values=list(trial.values) if trial.values is not None else None,
                reason=TrialAttrs.of(trial).reason,
                baseline=TrialAttrs.of(trial).baseline,
            )
        )

    return callback


def _waiting_retries(trials: list[Any]) -> bool:
    """Whether a failed trial was re-queued (it replaces a counted trial, so it may exceed the quota)."""
    return any(t.state.name == "WAITING" and "failed_trial" in t.system_attrs for t in trials)


Outcome = Literal["done", "new", "retry", "lost"]
"""What one turn of a worker did: nothing (it is done), a new trial, a retry of a failed one, or
a trial another worker failed meanwhile (its heartbeats stopped reaching the database)."""


def _lost_trial(storage: Any, trial_id: int | None) -> Any:
    """The worker's trial if another worker failed it as lost meanwhile (else None): this
    worker was cut off from the database long enough for its heartbeats to go stale."""
    if trial_id is None:
        return None
    trial = storage.get_trial(trial_id)
    return trial if trial.state.is_finished() and lost_worker(TrialAttrs.of(trial).reason) else None


def run_worker(job: WorkerJob, sink: EventSink) -> int:
    """Run trials of ``job.study_name`` until the quota, the study total or the deadline is reached."""
    quiet_optuna()
    if job.threads:
        torch.set_num_threads(job.threads)
    spec = job.spec
    device = worker_device(job.device, job.worker)
    family = Registry(job.plugins_dir).create(spec.family, dict(spec.family_options))
    family.prepare(lambda done, total, what: sink(FamilyPreparing(job.worker, done, total, what)))
    storage = open_storage(job.storage)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=make_sampler(
            spec.study.sampler, spec.study.seed, dict(spec.study.sampler_options), job.worker
        ),
        pruner=make_pruner(
            spec.study.pruner,
            dict(spec.study.pruner_options),
            spec.budget.iterations,
            spec.budget.val_interval,
        ),
    )
    objective = TrialObjective(
        spec,
        family,
        device,
        study_name=job.study_name,
        checkpoint_root=job.checkpoint_root,
        events=sink,
        worker=job.worker,
    )
    callbacks: list[Callable[[Any, Any], None]] = [_trial_end_event(job.worker, sink)]
    if job.checkpoint_root is not None and spec.study.top_k_checkpoints > 0:
        callbacks.insert(
            0, CheckpointKeeper(job.checkpoint_root, job.study_name, spec.study.top_k_checkpoints)
        )
    done = 0  # new trials run; retries replace trials counted already, so they take no quota

    def next_trial() -> Outcome:
        """Run one trial: a ``"new"`` one, a ``"retry"`` of a failed one, or none (``"done"``)."""
        interrupt.check()
        if job.deadline is not None and time.time() >= job.deadline:
            return "done"
        trials = study.get_trials(deepcopy=False)
        if results.counted_trials(trials) >= job.n_trials:
            return "done"
        if done >= job.quota and not _waiting_retries(trials):
            return "done"
        objective.trial_id = storage.asked_trial_id = None
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
        except KeyboardInterrupt:
            requeue_interrupted(study, objective.trial_id)
            raise
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # "Cannot tell a FAIL trial"
            lost = _lost_trial(storage, objective.trial_id)
            if lost is None:
                raise
            sink(
                TrialEnded(
                    worker=job.worker,
                    trial=lost.number,
                    state=lost.state.name,
                    values=None,
                    reason=f"{TrialAttrs.of(lost).reason}; another worker failed and re-queued it "
                    "while this one was cut off from the database, so its result is discarded",
                    baseline=TrialAttrs.of(lost).baseline,
                )
            )
            return "lost"
        # Only a new trial is inserted by this worker's storage; a retry was waiting already.
        return "retry" if storage.asked_trial_id is None else "new"

    def report(exc: Exception) -> None:
        sink(StorageFailed(job.worker, backoff.storage_message(exc)))

    def close_trial(exc: Exception) -> None:
        message = backoff.storage_message(exc)
        # The objective's trial, else one the lost connection cut between its insert and the objective.
        trial_id = objective.trial_id if objective.trial_id is not None else storage.asked_trial_id
        close_lost_trial(study, trial_id, f"lost the study database: {message}")

    while True:
        try:
            # A trial that ran resets the count of consecutive storage errors.
            outcome = backoff.retry(next_trial, before_pause=report, after_pause=close_trial)
            if outcome == "done":
                return done
        except Exception as exc:
            if not backoff.is_storage_error(exc):
                raise
            raise StorageError(
                f"lost the study database {mask_url(job.storage)} ({backoff.STORAGE_RETRIES} retries): "
                f"{backoff.storage_message(exc)}"
            ) from None
        done += outcome == "new"
