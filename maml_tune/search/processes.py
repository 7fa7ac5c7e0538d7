"""Running several workers as spawned processes, and forwarding interrupts to them.

:func:`run_processes` is called by the runner when a search asks for more than one worker.
Each process gets its own storage connection, sampler (seeded ``seed + i``) and device; its
events come back through a queue. On an interrupt the parent forwards it (SIGTERM) to the
workers and waits for them to close their trials.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from maml_tune.errors import MamlTuneError
from maml_tune.search import interrupt
from maml_tune.search.events import (
    STATUS_INTERVAL_S,
    Event,
    EventSink,
    WorkerFailed,
    send_status,
    send_status_quietly,
)
from maml_tune.search.recovery import recover_orphans
from maml_tune.search.worker import WorkerJob, run_worker

WORKER_STOP_TIMEOUT_S = 120.0
"""How long the parent waits for interrupted worker processes before killing them."""


PARENT_POLL_S = 1.0
"""How often a worker process checks that the search that started it is still there."""
MAX_RESPAWNS = 3
"""Worker processes killed from outside that the search replaces, per worker slot."""
EVENT_SLICE_S = 0.2
"""The parent handles queued events for at most this long between interrupt checks."""


def _watch_parent(parent: int) -> None:
    # The search was killed (SIGKILL leaves no chance to forward anything): stop as if
    # interrupted, closing the running trial, rather than run on unsupervised.
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    interrupt.request()


def _process_main(job: WorkerJob, events: Any, parent: int) -> None:
    """Entry point of a spawned worker process: events go back through ``events`` (a queue);
    ``parent`` is the pid of the search that started it."""

    def sink(event: Event) -> None:
        events.put(event)

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    # Ctrl-C in a terminal reaches every worker; the parent forwards it as SIGTERM. Either
    # way a worker closes its trial and stops, and ignores repeats (the parent may give up).
    try:
        with interrupt.handling(hard_exit=False, signals=interrupt.STOP_SIGNALS):
            run_worker(job, sink)
    except KeyboardInterrupt:
        sys.exit(interrupt.EXIT_CODE)
    except MamlTuneError as exc:
        sink(WorkerFailed(job.worker, str(exc).strip().splitlines()[0]))
        sys.exit(exc.exit_code)
    except Exception as exc:  # report anything, so the parent can say which worker died of what
        sink(WorkerFailed(job.worker, f"{type(exc).__name__}: {exc}"))
        sys.exit(1)


def run_processes(jobs: list[WorkerJob], study: Any, sink: EventSink) -> list[str]:
    """Run each job in its own process until all end; returns one message per worker that failed."""
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    if jobs[0].threads is None:
        per_worker = max(1, (os.cpu_count() or 1) // len(jobs))
        jobs = [dataclasses.replace(job, threads=per_worker) for job in jobs]

    def start(job: WorkerJob):
        process = context.Process(
            target=_process_main, args=(job, events, os.getpid()), daemon=False,
            name=f"maml-tune-worker-{job.worker}",
        )
        process.start()
        return process

    processes = [start(job) for job in jobs]
    respawns = [0] * len(jobs)
    errors: list[str] = []
    last_status = 0.0

    def drain() -> None:
        # A time slice, not "until quiet": under a steady stream of events the interrupt check
        # between slices must still come round.
        deadline = time.monotonic() + EVENT_SLICE_S
        while time.monotonic() < deadline:
            try:
                event = events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if isinstance(event, WorkerFailed):
                errors.append(f"worker {event.worker}: {event.message}")
            sink(event)

    def replace_killed() -> None:
        """A worker killed from outside (a signal, the OOM killer) leaves a RUNNING trial and its
        share of the study: fail and re-queue the trial now, and start a new worker in its place."""
        for index, process in enumerate(processes):
            if process.is_alive() or process.exitcode is None or process.exitcode >= 0:
                continue
            if respawns[index] >= MAX_RESPAWNS:
                continue
            respawns[index] += 1
            recovered = recover_orphans(study)
            errors.append(
                f"worker {jobs[index].worker}: killed by signal {-process.exitcode}; "
                f"re-queued trial(s) {', '.join(map(str, recovered)) or 'none'} and started a new worker"
            )
            processes[index] = start(jobs[index])

    try:
        while True:
            interrupt.check()
            drain()
            replace_killed()
            alive = any(p.is_alive() for p in processes)
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL_S:
                last_status = now
                send_status_quietly(study, sink)
            if not alive:
                drain()  # what the last workers sent before they exited
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
    send_status(study, sink)
    return errors
