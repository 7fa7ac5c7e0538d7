"""Ctrl-C during a search: stop cleanly once, stop at once the second time.

:func:`handling` installs a handler for SIGINT and SIGTERM (:data:`STOP_SIGNALS`: Ctrl-C,
and a cluster's or container's stop; the parent of worker processes also forwards an
interrupt to them as SIGTERM). The first signal only *requests* a stop; the
search notices it at its safe points (:func:`check`: between meta-iterations, around
evaluation, before each trial), so the running trial is closed with :data:`REASON` and an
interrupt never cuts a storage transaction, a garbage-collector callback or a library call
in half. A second signal exits the process at once with :data:`EXIT_CODE` (``hard_exit``),
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

REASON = "interrupted by a signal (SIGINT or SIGTERM)"
REASONS = (REASON, "interrupted by user (SIGINT)")
"""Every reason an interrupt has stored (the second: releases before SIGTERM was handled)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a search cleanly: Ctrl-C, and the SIGTERM of ``scancel``, ``kill`` or a pod's stop."""
EXIT_CODE = 130


class _State:
    def __init__(self) -> None:
        self.active = False
        self.requested = False
        self.hard_exit = True
        self.message = ""


state = _State()


def _handler(signum: int, frame: object) -> None:
    if state.requested:
        if state.hard_exit:
            if state.message:
                try:
                    os.write(2, (state.message + "\n").encode())
                except OSError:
                    pass
            os._exit(EXIT_CODE)
        return
    state.requested = True


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
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        state.active = False


def request() -> None:
    """Ask for a stop as a first signal would (the worker whose parent died does)."""
    state.requested = True


def requested() -> bool:
    return state.active and state.requested


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt was requested (a safe point)."""
    if requested():
        raise KeyboardInterrupt
