"""Closing and re-queueing trials whose worker stopped: killed, interrupted or cut off from the database.

:func:`recover_orphans` runs when a study is resumed, before its trials are counted; the
other two run in a worker, right after an interrupt or a storage error stopped its trial.
"""

from __future__ import annotations

import functools
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from maml_tune.search import backoff, interrupt, results
from maml_tune.search.identity import process_alive
from maml_tune.search.record import TrialAttrs, write
from maml_tune.search.storage import MAX_RETRY, STALE_REASON, gone_reason, lost_worker, requeue


def recover_orphans(study: Any) -> list[int]:
    """Fail, with a ``reason``, the RUNNING trials whose worker is gone, and re-queue every failed
    trial that awaits its retry; returns the numbers of the trials re-queued.

    A trial is orphaned when its heartbeat is older than the storage's grace period (a
    killed worker anywhere) or when it was run by a process of this host that no longer
    exists (a killed or hard-interrupted worker here, found without waiting for the grace
    period). A failed trial awaits its retry when its worker was lost or an interrupt closed
    it, and no retry of it exists: a process killed between failing a trial and re-queueing
    it (a second Ctrl-C, or a kill while it recovered orphans) leaves it so.
    """
    storage = study._storage
    stale: set[int] = set()
    if is_heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        identity = TrialAttrs.of(trial).process
        if trial._trial_id in stale:
            reason = STALE_REASON
        elif not process_alive(identity):
            reason = gone_reason(identity)
        else:
            continue
        try:
            write(functools.partial(storage.set_trial_user_attr, trial._trial_id), reason=reason)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker closed it meanwhile
    trials = study.get_trials(deepcopy=False)
    retried = results.retried_numbers(trials)
    numbers = []
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried:
            continue
        reason = TrialAttrs.of(trial).reason
        if reason in interrupt.REASONS:
            max_retry = None  # an interrupt says nothing about the trial: run it again however often
        elif lost_worker(reason):
            max_retry = MAX_RETRY
        else:
            continue
        if requeue(study, storage.get_trial(trial._trial_id), max_retry):
            numbers.append(trial.number)
    return numbers


def requeue_interrupted(study: Any, trial_id: int | None) -> None:
    """Re-queue the trial an interrupt failed, so the resumed study runs it again (best effort)."""
    if trial_id is None:
        return
    try:
        frozen = study._storage.get_trial(trial_id)
        if frozen.state.name != "FAIL" or TrialAttrs.of(frozen).reason not in interrupt.REASONS:
            return
        requeue(study, frozen, max_retry=None)
    except Exception:  # the trial is closed; without the retry the study just counts it as failed
        pass


def close_lost_trial(study: Any, trial_id: int | None, reason: str) -> None:
    """Fail the trial a storage error interrupted, if it is still RUNNING (best effort)."""
    if trial_id is None:
        return
    storage = study._storage

    def close() -> None:
        try:
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                write(functools.partial(storage.set_trial_user_attr, trial_id), reason=reason)
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # closed meanwhile

    try:
        backoff.retry(close, retries=3, first_pause=0.5, retry_if=lambda exc: True)
    except Exception:  # still unreachable: the heartbeat (or the next search) will fail it
        pass
