"""Losing the PostgreSQL connection in the middle of a study: the server drops every
connection of the search, several times while trials run. The workers reconnect (pre-ping)
or fail the current trial cleanly, and the study still ends with every trial finished.

Only this test's own connections are dropped (they carry a unique ``application_name``), so
other users of the server are not disturbed.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy
from reliability_helpers import drop_study, trial_rows, unique_name, write_spec

from maml_tune.families.registry import Registry
from maml_tune.search.events import TrialEnded, TrialStarted
from maml_tune.search.runner import SearchOptions, run_search
from maml_tune.search.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

N_TRIALS = 5


def test_dropped_connections_mid_study(tmp_path, postgres_url):
    name = unique_name()
    url = f"{postgres_url}?application_name={name}"
    admin = sqlalchemy.create_engine(postgres_url)
    dropped: list[int] = []
    stop = threading.Event()
    events: list[dict] = []

    started = threading.Event()

    def drop() -> None:
        with admin.connect() as c:
            killed = c.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).all()
            c.commit()
        dropped.append(len(killed))

    def sink(event):
        events.append(event)
        if isinstance(event, TrialStarted):
            started.set()
            # However fast the trials run, the pooled connections die as trials 1 to
            # N-2 start (the worker's next storage call finds them dead)...
            if 1 <= event.trial <= N_TRIALS - 2:
                drop()
        if len([e for e in events if isinstance(e, TrialEnded)]) >= N_TRIALS - 1:
            stop.set()  # leave the last trial and the final summary alone

    def drop_connections():
        # ...and, at random points inside trials, while the study is long enough.
        started.wait(120)
        while not stop.wait(0.3):
            drop()

    spec = load_spec(write_spec(tmp_path, iterations=40), Registry(), {"n_trials": N_TRIALS})
    killer = threading.Thread(target=drop_connections, daemon=True)
    try:
        killer.start()
        began = time.monotonic()
        result = run_search(
            spec, SearchOptions(storage=url, study_name=name, device="cpu", checkpoint_root=None), sink
        )
        stop.set()
        killer.join(timeout=10)
        assert sum(dropped) >= 2, f"no connection was dropped while the study ran ({dropped})"
        assert time.monotonic() - began < 240
        assert result.worker_errors == []
        rows = trial_rows(postgres_url, name)
        finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED", "FAIL")]
        assert not [r for r in rows if r["state"] in ("RUNNING", "WAITING")], rows
        assert len([r for r in finished if r["state"] != "FAIL"]) + len(
            [r for r in finished if r["state"] == "FAIL"]
        ) == len(rows)
        assert len(rows) >= N_TRIALS
        for row in rows:
            if row["state"] == "FAIL":  # a trial cut by the lost connection says so
                assert row["user"].get("reason"), row
    finally:
        stop.set()
        admin.dispose()
        drop_study(postgres_url, name)
