"""Ctrl-C during a search: stop cleanly once, stop at once the second time.

:func:`handling` installs a handler for SIGINT and SIGTERM (:data:`STOP_SIGNALS`: Ctrl-C,
and a cluster's or container's stop; the parent of worker processes also forwards an
interrupt to them as SIGTERM). The first signal only *requests* a stop; the
search notices it at its safe points (:func:`check`: between meta-iterations, around
evaluation, before each trial), so the running trial is closed with :data:`REASON` and an
interrupt never cuts a storage transaction, a garbage-collector callback or a library call
in half. When no safe point comes within :data:`ESCALATE_AFTER_S` (one meta-iteration or
task draw that takes minutes), the stop is delivered inside the computation itself, but only
while the main thread is computing (training or sampling code, no database call under way).
A second signal exits the process at once with :data:`EXIT_CODE` (``hard_exit``),
or is ignored (worker processes, which always finish closing their trial; the parent
decides when to give up).

Without :func:`handling` (library use) Python's default ``KeyboardInterrupt`` applies.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from maml_tune.errors import Interrupted

REASON = "interrupted by a signal (SIGINT or SIGTERM)"
REASONS = (REASON, "interrupted by user (SIGINT)")
"""Every reason an interrupt has stored (the second: releases before SIGTERM was handled)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a search cleanly: Ctrl-C, and the SIGTERM of ``scancel``, ``kill`` or a pod's stop."""
EXIT_CODE = Interrupted.exit_code
ESCALATE_AFTER_S = 5.0
"""How long after the first signal a search may keep computing before the stop is delivered
inside the computation (re-tried every :data:`ESCALATE_RETRY_S` while a database call runs)."""
ESCALATE_RETRY_S = 0.5
_COMPUTING = ("maml_tune.core", "maml_tune.families")
_NOT_TO_CUT = ("optuna", "sqlalchemy", "psycopg", "pymysql", "sqlite3", "alembic")


class _State:
    def __init__(self) -> None:
        self.active = False
        self.requested = False
        self.hard_exit = True
        self.message = ""
        self.escalating = False  # the next SIGINT is our own, from _escalate
        self.delivered = False  # a KeyboardInterrupt was raised for the request


state = _State()


def _computing(frame: Any) -> bool:
    """Whether the main thread, stopped at ``frame``, is in training or sampling code and in no
    storage or Optuna call (the innermost frame of either kind decides)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_NOT_TO_CUT):
            return False
        if module.startswith(_COMPUTING):
            return True
        frame = frame.f_back
    return False


def _escalate() -> None:
    if state.active and state.requested and not state.delivered:
        state.escalating = True
        # A real signal: it also wakes a main thread blocked in a system call (interrupt_main would not).
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def _arm(delay: float) -> None:
    timer = threading.Timer(delay, _escalate)
    timer.daemon = True
    timer.start()


def _handler(signum: int, frame: Any) -> None:
    if state.escalating:
        state.escalating = False
        if not state.delivered and _computing(frame):
            state.delivered = True
            raise KeyboardInterrupt
        _arm(ESCALATE_RETRY_S)
        return
    if state.requested:
        if state.hard_exit:
            if state.message:
                try:
                    os.write(2, (state.message + "\n").encode())
                except OSError:
                    pass
            os._exit(EXIT_CODE)
        return
    request()


@contextmanager
def handling(
    *, hard_exit: bool = True, signals: tuple[int, ...] = (signal.SIGINT,), message: str = ""
) -> Iterator[None]:
    """Install the two-stage handler for ``signals`` (main thread only; elsewhere a no-op).

    ``message`` is written to stderr before a hard exit on the second signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signals}
    state.active, state.requested, state.hard_exit, state.message = True, False, hard_exit, message
    state.escalating = state.delivered = False
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        state.active = False


def request() -> None:
    """Ask for a stop as a first signal would (the worker whose parent died does)."""
    if not state.requested:
        state.requested = True
        if state.active:
            _arm(ESCALATE_AFTER_S)


def requested() -> bool:
    return state.active and state.requested


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt was requested (a safe point)."""
    if requested():
        state.delivered = True
        raise KeyboardInterrupt
