"""Progress for a log file: plain timestamped lines, or one JSON object per line.

A command shows its progress as a rich live view when stderr is a terminal; when stderr is a
file or a pipe (a Slurm or Kubernetes job log) that view would write nothing until the end,
so the command writes :class:`ProgressLog` lines instead, as the work runs. ``--log-format``
(``MAML_TUNE_LOG_FORMAT``) picks one explicitly and ``--quiet`` (``MAML_TUNE_QUIET``) turns
progress off; results and errors are printed either way.
"""

from __future__ import annotations

import enum
import json
import math
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

STEADY_SECONDS = 10.0
"""A repeated progress line (meta-iterations …) waits at least this long after the last one
(``--log-interval``) …"""
STEADY_FRACTION = 0.05
"""… and for at least this share of the work: whichever is rarer."""


class LogFormat(str, enum.Enum):
    """``--log-format``: ``auto`` is ``rich`` on a terminal, else ``text``."""

    auto = "auto"
    rich = "rich"
    text = "text"
    json = "json"


def resolve_format(requested: LogFormat | str, stream: TextIO) -> LogFormat:
    """The format to use on ``stream`` for ``requested``."""
    chosen = LogFormat(requested)
    if chosen is LogFormat.auto:
        return LogFormat.rich if stream.isatty() else LogFormat.text
    return chosen


def _finite(value: Any) -> Any:
    # Strict JSON: a non-finite float is written as its name.
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


class ProgressLog:
    """Writes progress events to ``stream`` as ``TIME EVENT: text`` lines or JSON objects.

    :meth:`event` always writes; :meth:`steady` writes a repeated event (``key``) only when
    ``interval`` seconds have passed *and* :data:`STEADY_FRACTION` of its work was done
    since its last line, and always at its first and last step. Nothing is cut to a width.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        as_json: bool = False,
        interval: float = STEADY_SECONDS,
        clock=time.monotonic,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.as_json, self.interval = as_json, interval
        self.clock = clock
        self._last: dict[str, tuple[float, float]] = {}

    def event(self, name: str, text: str, /, **fields: Any) -> None:
        """Write one event now: ``text`` for people, ``fields`` for JSON readers."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        if self.as_json:
            record = {"time": stamp, "event": name, **{k: _finite(v) for k, v in fields.items()}}
            line = json.dumps(record, default=str)
        else:
            line = f"{stamp} {name}: {' '.join(text.splitlines())}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def steady(
        self, key: str, done: float, total: float | None, name: str, text: str, /, **fields: Any
    ) -> None:
        """Write the repeated event ``key`` at ``done`` of ``total`` when it is due (see above)."""
        now = self.clock()
        last = self._last.get(key)
        final = total is not None and done >= total
        if last is not None and not final:
            last_time, last_done = last
            share = (done - last_done) / total if total else 1.0
            if now - last_time < self.interval or share < STEADY_FRACTION:
                return
        self._last[key] = (now, done)
        self.event(name, text, **fields)

    def forget(self, key: str) -> None:
        """Start ``key`` afresh (its next :meth:`steady` writes at once)."""
        self._last.pop(key, None)
