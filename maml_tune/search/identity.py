"""Which process runs a trial, and whether it still exists: recorded on every trial and on
every retry claim, so a search can tell a worker of this host that is gone without waiting
for the heartbeat grace period."""

from __future__ import annotations

import os
import socket
from typing import Any


def process_identity() -> dict[str, Any]:
    """``{"host", "pid", "pid_ns"}`` of this process (``pid_ns`` separates containers on one host)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": namespace}


def process_alive(identity: Any) -> bool:
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
