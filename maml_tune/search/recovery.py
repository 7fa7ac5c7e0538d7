"""Closing and re-queueing trials whose worker stopped: killed, interrupted or cut off from the database.

:func:`recover_orphans` runs when a study is resumed, before its trials are counted; the
other two run in a worker, right after an interrupt or a storage error stopped its trial.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from maml_tune.search import backoff, interrupt, results
from maml_tune.search.objective import process_identity
from maml_tune.search.record import TrialAttrs, write
from maml_tune.search.storage import STALE_REASON, retry_callback


def _process_alive(identity: Any) -> bool:
    """False only when ``identity`` (see :func:`process_identity`) names a gone process of this host."""
    if not isinstance(identity, dict) or not isinstance(identity.get("pid"), int):
        return True
    here = process_identity()
    if identity.get("host") != here["host"] or identity.get("pid_ns") != here["pid_ns"]:
        return True  # another machine or container: only its heartbeat can tell
    try:
        os.kill(identity["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_orphans(study: Any) -> list[int]:
    """Fail, with a ``reason``, and re-queue the RUNNING trials whose worker is gone (and
    re-queue interrupted trials that are not yet).

    A trial is orphaned when its heartbeat is older than the storage's grace period (a
    killed worker anywhere) or when it was run by a process of this host that no longer
    exists (a killed or hard-interrupted worker here, found without waiting for the grace
    period). Returns the numbers of the trials failed.
    """
    storage = study._storage
    stale: set[int] = set()
    if is_heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        identity = TrialAttrs.of(trial).process
        if trial._trial_id in stale:
            reason = STALE_REASON
        elif not _process_alive(identity):
            reason = f"its worker process {identity['pid']} on {identity['host']} is gone (killed)"
        else:
            continue
        try:
            write(functools.partial(storage.set_trial_user_attr, trial._trial_id), reason=reason)
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker closed it meanwhile
    callback = (
        storage.get_heartbeat_stale_trial_callback() if is_heartbeat_enabled(storage) else None
    ) or retry_callback()
    numbers = []
    for trial_id in failed:
        frozen = storage.get_trial(trial_id)
        callback(study, frozen)
        numbers.append(frozen.number)
    # Trials an interrupt closed but could not re-queue (a second Ctrl-C came first).
    trials = study.get_trials(deepcopy=False)
    retried = results.retried_numbers(trials)
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and TrialAttrs.of(trial).reason in interrupt.REASONS
            and trial.number not in retried
        ):
            retry_callback(max_retry=None)(study, storage.get_trial(trial._trial_id))
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
        if any(frozen.number in t.system_attrs.get("retry_history", []) for t in study.get_trials()):
            return
        retry_callback(max_retry=None)(study, frozen)
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
