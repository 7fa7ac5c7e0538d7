"""Progress of a search, sent to an ``events`` callable; the search itself never prints.

Events are plain dicts with a ``kind``: ``study`` (once, before trials run), ``trial_start``,
``iteration``, ``validation``, ``trial_end``, ``storage_error``, ``status`` (after each trial,
or every ``STATUS_INTERVAL_S`` with several workers) and ``worker_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maml_tune.search import results

Event = dict[str, Any]
EventSink = Callable[[Event], None]
STATUS_INTERVAL_S = 1.0


def send_status(study: Any, sink: EventSink) -> None:
    """Send the study's summary as a ``status`` event."""
    sink({"kind": "status", **results.summary(study)})


def send_status_quietly(study: Any, sink: EventSink) -> None:
    """:func:`send_status`, ignoring a failure: a status poll must never stop the search."""
    try:
        send_status(study, sink)
    except Exception:
        pass
