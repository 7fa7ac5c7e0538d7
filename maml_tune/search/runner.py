"""Running a study: create or resume it, then run trials in one or several worker processes.

The study's requested total (``n_trials``) counts every trial that is not waiting and is not
a failed trial re-queued by a heartbeat retry; re-running the same search resumes the study
and adds trials up to that total. A resumed study must have been created from a compatible
spec (same family and options, space, fixed settings, budget and objective), recorded in the
study user attribute ``maml_tune``; otherwise a :class:`StudyError` asks for a new name.

Workers: ``workers == 1`` runs in this process; more start that many processes (spawn),
each with its own storage connection, sampler (seeded ``seed + i``) and device (worker ``i``
gets ``cuda:(i % device_count)`` when the device is ``auto`` or ``cuda``). The same
command run on other machines against the same server database joins the study.

Faults: before counting, a resumed study's orphaned RUNNING trials (heartbeat stale, or
run by a process of this host that no longer exists) are failed with a ``reason`` and
re-queued (:func:`recover_orphans`); a retried trial is run even beyond a worker's quota.
A storage error (lost connection) fails the current trial and the worker carries on after
a pause, giving up after ``STORAGE_RETRIES`` consecutive errors. An interrupt
(:mod:`maml_tune.search.interrupt`) fails the running trial with its reason, re-queues it
and raises ``KeyboardInterrupt``; with several processes the parent forwards it (SIGTERM)
to the workers and waits for them.

Progress goes to an ``events`` callable as plain dicts (``kind``: ``study``, ``trial_start``,
``iteration``, ``validation``, ``trial_end``, ``status``, ``worker_error``); this module
never prints.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_module
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maml_tune import __version__
from maml_tune.errors import MamlTuneError, StorageError, StudyError
from maml_tune.search import interrupt, results
from maml_tune.search.spec import StudySpec
from maml_tune.search.storage import STUDY_ENV, mask_url, normalize_url, open_storage, storage_url

Event = dict[str, Any]
EventSink = Callable[[Event], None]
STATUS_INTERVAL_S = 1.0
STORAGE_RETRIES = 6
"""Consecutive storage errors a worker survives (pausing 1, 2, 4, … s) before it gives up."""
WORKER_STOP_TIMEOUT_S = 120.0
"""How long the parent waits for interrupted worker processes before killing them."""


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


def resolve_study_name(spec: StudySpec, explicit: str | None = None) -> str:
    return explicit or os.environ.get(STUDY_ENV) or spec.study.name


def _quiet_optuna():
    import optuna

    if not os.environ.get("MAML_TUNE_OPTUNA_LOG"):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def create_or_resume(spec: StudySpec, storage: Any, study_name: str, *, sampler=None, pruner=None):
    """The study ``study_name``: created with ``spec``'s directions, or loaded after a compatibility check."""
    optuna = _quiet_optuna()
    fingerprint = spec.fingerprint()
    names = set(optuna.get_all_study_names(storage))
    if study_name in names:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        attrs = study.user_attrs.get(results.STUDY_ATTR)
        where = mask_url(str(storage.url))
        if not attrs or "fingerprint" not in attrs:
            raise StudyError(
                f"study {study_name!r} in {where} was not created by maml-tune; choose another --study-name"
            )
        diff = _differences(attrs["fingerprint"], fingerprint)
        if diff:
            raise StudyError(
                f"study {study_name!r} in {where} was created from an incompatible spec "
                f"({', '.join(diff)} differ); resume it with its original spec, or start a new study "
                f"with --study-name NEW"
            )
        return study, False
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=list(spec.objective.directions),
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker or machine created it meanwhile
        return create_or_resume(spec, storage, study_name, sampler=sampler, pruner=pruner)
    study.set_user_attr(
        results.STUDY_ATTR,
        {
            "fingerprint": fingerprint,
            "spec": spec.to_dict(),
            "version": __version__,
        },
    )
    study.set_metric_names(list(spec.objective.metrics))
    return study, True


def enqueue_baseline(study: Any, spec: StudySpec, family: Any) -> dict[str, Any] | None:
    """Enqueue the family's literature configuration once (``baseline`` user attribute)."""
    from maml_tune.search.objective import baseline_params

    if any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
        return None
    params = baseline_params(spec, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=False)
    return params


def _process_alive(identity: Any) -> bool:
    """False only when ``identity`` (see :func:`process_identity`) names a gone process of this host."""
    from maml_tune.search.objective import process_identity

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
    from optuna.storages._heartbeat import is_heartbeat_enabled

    optuna = _quiet_optuna()
    from maml_tune.search.storage import retry_callback

    storage = study._storage
    stale: set[int] = set()
    if is_heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))
    failed = []
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        identity = trial.user_attrs.get("process")
        if trial._trial_id in stale:
            reason = "its worker stopped sending heartbeats (killed or lost)"
        elif not _process_alive(identity):
            reason = f"its worker process {identity['pid']} on {identity['host']} is gone (killed)"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "reason", reason)
            if storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
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
            trial.state == optuna.trial.TrialState.FAIL
            and trial.user_attrs.get("reason") == interrupt.REASON
            and trial.number not in retried
        ):
            retry_callback(max_retry=None)(study, storage.get_trial(trial._trial_id))
            numbers.append(trial.number)
    return numbers


def _requeue_interrupted(study: Any, trial_id: int | None) -> None:
    """Re-queue the trial an interrupt failed, so the resumed study runs it again (best effort)."""
    from maml_tune.search.storage import retry_callback

    if trial_id is None:
        return
    try:
        frozen = study._storage.get_trial(trial_id)
        if frozen.state.name != "FAIL" or frozen.user_attrs.get("reason") != interrupt.REASON:
            return
        if any(frozen.number in t.system_attrs.get("retry_history", []) for t in study.get_trials()):
            return
        retry_callback(max_retry=None)(study, frozen)
    except Exception:  # the trial is closed; without the retry the study just counts it as failed
        pass


def _is_storage_error(exc: BaseException | None) -> bool:
    """A lost or failing study database, also when Optuna's clean-up masked it with another
    error (its ``_run_trial`` can end in an ``AssertionError`` raised while handling one)."""
    import optuna
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _close_lost_trial(study: Any, trial_id: int | None, reason: str) -> None:
    """Fail the trial a storage error interrupted, if it is still RUNNING (best effort)."""
    import optuna

    if trial_id is None:
        return
    storage = study._storage
    for pause in (0.5, 1.0, 2.0, None):
        try:
            if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
                storage.set_trial_user_attr(trial_id, "reason", reason)
                storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        except Exception:  # still unreachable: the heartbeat (or the next search) will fail it
            if pause is not None:
                time.sleep(pause)


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
    import torch

    from maml_tune.core.device import resolve_device

    if requested in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", worker % torch.cuda.device_count())
    return resolve_device(requested)


class CheckpointKeeper:
    """Study callback: keep the checkpoints of the top-k completed trials, delete the others' folders."""

    def __init__(self, root: str | Path, study_name: str, k: int):
        from maml_tune.search.objective import checkpoint_dir

        self.folder = checkpoint_dir(root, study_name, 0).parent
        self.k = k

    def keep(self, study: Any) -> set[int]:
        best = results._best(study)
        if len(study.directions) == 1:
            sign = 1 if study.direction.name == "MINIMIZE" else -1
            completed = study.get_trials(deepcopy=False, states=(best[0].state,)) if best else []
            ranked = sorted(completed, key=lambda t: (sign * t.values[0], t.number))
        else:
            ranked = sorted(best, key=lambda t: (t.values[0], t.number))
        return {t.number for t in ranked[: self.k]}

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.folder.is_dir():
            return
        keep = self.keep(study)
        finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        import shutil

        for path in self.folder.glob("trial-*"):
            try:
                number = int(path.name.split("-", 1)[1])
            except ValueError:
                continue
            if number in finished and number not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _trial_end_event(worker: int) -> Callable[[Any, Any], None]:
    def callback(study: Any, trial: Any) -> None:
        callback.sink(
            {  # type: ignore[attr-defined]
                "kind": "trial_end",
                "worker": worker,
                "trial": trial.number,
                "state": trial.state.name,
                "values": list(trial.values) if trial.values is not None else None,
                "reason": trial.user_attrs.get("reason") or trial.system_attrs.get("fail_reason"),
                "baseline": bool(trial.user_attrs.get("baseline")),
            }
        )

    return callback


def run_worker(job: WorkerJob, sink: EventSink) -> int:
    """Run trials of ``job.study_name`` until the quota, the study total or the deadline is reached."""
    import torch

    from maml_tune.families.registry import Registry
    from maml_tune.search.objective import TrialObjective
    from maml_tune.search.storage import make_pruner, make_sampler

    optuna = _quiet_optuna()
    if job.threads:
        torch.set_num_threads(job.threads)
    spec = job.spec
    device = worker_device(job.device, job.worker)
    family = Registry(job.plugins_dir).create(spec.family, dict(spec.family_options))
    family.prepare()
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
    end = _trial_end_event(job.worker)
    end.sink = sink  # type: ignore[attr-defined]
    callbacks: list[Callable[[Any, Any], None]] = [end]
    if job.checkpoint_root is not None and spec.study.top_k_checkpoints > 0:
        callbacks.insert(
            0, CheckpointKeeper(job.checkpoint_root, job.study_name, spec.study.top_k_checkpoints)
        )
    done = 0
    storage_errors = 0
    while True:
        interrupt.check()
        if job.deadline is not None and time.time() >= job.deadline:
            break
        try:
            trials = study.get_trials(deepcopy=False)
            if results.counted_trials(trials) >= job.n_trials:
                break
            if done >= job.quota and not _waiting_retries(trials):
                break
            objective.trial_id = None
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except KeyboardInterrupt:
                _requeue_interrupted(study, objective.trial_id)
                raise
            done += 1
            storage_errors = 0
        except Exception as exc:
            if not _is_storage_error(exc):
                raise
            storage_errors += 1
            message = _storage_message(exc)
            if storage_errors > STORAGE_RETRIES:
                raise StorageError(
                    f"lost the study database {mask_url(job.storage)} ({STORAGE_RETRIES} retries): {message}"
                ) from None
            sink({"kind": "storage_error", "worker": job.worker, "message": message})
            time.sleep(min(2.0 ** (storage_errors - 1), 16.0))
            _close_lost_trial(study, objective.trial_id, f"lost the study database: {message}")
    return done


def _waiting_retries(trials: list[Any]) -> bool:
    """Whether a failed trial was re-queued (it replaces a counted trial, so it may exceed the quota)."""
    return any(t.state.name == "WAITING" and "failed_trial" in t.system_attrs for t in trials)


def _storage_message(exc: BaseException) -> str:
    import sqlalchemy.exc

    while not isinstance(exc, sqlalchemy.exc.SQLAlchemyError) and (exc.__cause__ or exc.__context__):
        exc = exc.__cause__ or exc.__context__
    cause = exc.__cause__ or exc
    orig = getattr(cause, "orig", None) or cause
    text = str(orig).strip()
    return mask_url(text.splitlines()[0] if text else type(orig).__name__)


def _process_main(job: WorkerJob, events: Any) -> None:
    """Entry point of a spawned worker process: events go back through ``events`` (a queue)."""
    import sys

    def sink(event: Event) -> None:
        events.put(event)

    # Ctrl-C in a terminal reaches every worker; the parent forwards it as SIGTERM. Either
    # way a worker closes its trial and stops, and ignores repeats (the parent may give up).
    try:
        with interrupt.handling(hard_exit=False, signals=(signal.SIGINT, signal.SIGTERM)):
            run_worker(job, sink)
    except KeyboardInterrupt:
        sys.exit(interrupt.EXIT_CODE)
    except MamlTuneError as exc:
        sink({"kind": "worker_error", "worker": job.worker, "message": str(exc).strip().splitlines()[0]})
        sys.exit(exc.exit_code)
    except Exception as exc:  # report anything, so the parent can say which worker died of what
        sink({"kind": "worker_error", "worker": job.worker, "message": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)


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


def run_search(
    spec: StudySpec, options: SearchOptions = SearchOptions(), events: EventSink | None = None
) -> SearchResult:
    """Create or resume the study for ``spec`` and run trials up to ``spec.study.n_trials``."""
    sink = events or (lambda event: None)
    optuna = _quiet_optuna()
    started = time.time()
    url = normalize_url(storage_url(options.storage))
    study_name = resolve_study_name(spec, options.study_name)
    storage = open_storage(url)
    device = worker_device(options.device, 0)  # an unavailable device fails before the study changes
    if options.workers < 1:
        from maml_tune.errors import ConfigError

        raise ConfigError(f"workers: expected an integer >= 1, got {options.workers}")
    study, created = create_or_resume(spec, storage, study_name)
    recovered = [] if created else recover_orphans(study)
    baseline = None
    if spec.study.baseline:
        from maml_tune.families.registry import Registry

        family = Registry(options.plugins_dir).create(spec.family, dict(spec.family_options))
        baseline = enqueue_baseline(study, spec, family)
    trials = study.get_trials(deepcopy=False)
    before = results.counted_trials(trials)
    remaining = max(0, spec.study.n_trials - before)
    deadline = started + spec.study.timeout if spec.study.timeout else None
    workers = max(1, min(options.workers, remaining)) if remaining else 0
    sink(
        {
            "kind": "study",
            "study": study_name,
            "storage": mask_url(url),
            "created": created,
            "n_trials": spec.study.n_trials,
            "existing": before,
            "remaining": remaining,
            "workers": workers,
            "directions": list(spec.objective.directions),
            "metrics": list(spec.objective.metrics),
            "baseline": baseline,
            "recovered": recovered,
            "device": str(device),
        }
    )
    _status(study, sink)
    errors: list[str] = []
    quotas = (
        [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
        if workers
        else []
    )
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
        for i, quota in enumerate(quotas)
    ]
    if len(jobs) == 1:

        def forward(event: Event) -> None:
            sink(event)
            if event["kind"] == "trial_end":
                try:
                    _status(study, sink)
                except Exception:  # a status poll must never stop the search
                    pass

        run_worker(jobs[0], forward)
    elif jobs:
        errors = _run_processes(jobs, study, sink)
    final = _with_storage_retries(lambda: optuna.load_study(study_name=study_name, storage=storage))
    after = results.counted_trials(_with_storage_retries(lambda: final.get_trials(deepcopy=False)))
    if jobs and len(errors) == len(jobs) and after == before:
        raise StudyError(f"every worker failed: {errors[0]}")
    summary = _with_storage_retries(lambda: results.summary(final))
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


def _with_storage_retries(read: Callable[[], Any]) -> Any:
    """``read()``, retried after a pause when the study database connection was lost."""
    for attempt in range(STORAGE_RETRIES):
        try:
            return read()
        except Exception as exc:
            if not _is_storage_error(exc) or attempt == STORAGE_RETRIES - 1:
                raise
            time.sleep(min(2.0**attempt, 16.0))


def _status(study: Any, sink: EventSink) -> None:
    summary = results.summary(study)
    sink({"kind": "status", **summary})


def _run_processes(jobs: list[WorkerJob], study: Any, sink: EventSink) -> list[str]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    if jobs[0].threads is None:
        per_worker = max(1, (os.cpu_count() or 1) // len(jobs))
        jobs = [dataclasses.replace(job, threads=per_worker) for job in jobs]
    processes = [
        context.Process(
            target=_process_main, args=(job, events), daemon=False, name=f"maml-tune-worker-{job.worker}"
        )
        for job in jobs
    ]
    errors: list[str] = []
    for process in processes:
        process.start()
    last_status = 0.0

    def drain() -> None:
        try:
            while True:
                event = events.get(timeout=0.2)
                if event["kind"] == "worker_error":
                    errors.append(f"worker {event['worker']}: {event['message']}")
                sink(event)
        except queue_module.Empty:
            pass

    try:
        while True:
            interrupt.check()
            alive = any(p.is_alive() for p in processes)
            drain()
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL_S:
                last_status = now
                try:
                    _status(study, sink)
                except Exception:  # a status poll must never stop the search
                    pass
            if not alive:
                break
    except KeyboardInterrupt:
        # Forward the interrupt (a terminal already sent it to the whole process group; the
        # workers ignore the repeat), then wait for every worker to close its trial.
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except OSError:
                    pass
        give_up = time.monotonic() + WORKER_STOP_TIMEOUT_S
        while any(p.is_alive() for p in processes) and time.monotonic() < give_up:
            drain()
        for process in processes:
            if process.is_alive():
                process.kill()  # its trial is recovered by the next search
        raise
    finally:
        for process in processes:
            process.join(timeout=5)
        events.close()
    for process, job in zip(processes, jobs, strict=True):
        if process.exitcode not in (0, None) and not any(
            e.startswith(f"worker {job.worker}:") for e in errors
        ):
            errors.append(f"worker {job.worker}: exited with code {process.exitcode}")
    _status(study, sink)
    return errors
