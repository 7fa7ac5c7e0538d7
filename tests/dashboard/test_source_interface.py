"""Every source implements :class:`StudySource`, and any implementation of it drives the dashboard."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from rich.console import Console

from maml_tune.dashboard import render
from maml_tune.dashboard.source import (
    OptunaSource,
    RefreshStats,
    SqlSource,
    StudyInfo,
    StudySource,
    TrialRecord,
    open_source,
)
from maml_tune.dashboard.state import Dashboard


class FakeSource(StudySource):
    """Three trials in memory: two complete, one running."""

    kind = "fake"

    def __init__(self):
        self.url = "memory://user:secret@here/fake"
        self.info = StudyInfo(1, "fake-study", ["minimize"], ["val_loss"], {})
        self.trials = {}
        self.last = RefreshStats()
        self.detail_calls: list[list[int]] = []

    def refresh(self) -> RefreshStats:
        start = dt.datetime(2026, 1, 1, 12, 0, 0)
        rows = [(10, 0, "COMPLETE", (0.5,)), (11, 1, "COMPLETE", (0.25,)), (12, 2, "RUNNING", None)]
        self.last = RefreshStats(new=len(rows) - len(self.trials), seconds=0.001)
        for trial_id, number, state, values in rows:
            complete = start + dt.timedelta(seconds=30) if state == "COMPLETE" else None
            self.trials[trial_id] = TrialRecord(trial_id, number, state, start, complete, values)
        return self.last

    def details(self, records, *, force=False) -> None:
        records = list(records)
        self.detail_calls.append(sorted(r.number for r in records))
        for r in records:
            r.user_attrs = {"metrics": {"val_loss_ci95": 0.05}} if r.values else {}
            r.intermediate = {5: 0.9, 10: 0.7} if r.state == "RUNNING" else {5: 1.0}

    def close(self) -> None:
        self.closed = True


def test_every_source_class_implements_the_interface():
    for cls in (SqlSource, OptunaSource):
        assert issubclass(cls, StudySource) and not getattr(cls, "__abstractmethods__", None), cls
    assert StudySource.__abstractmethods__ == {"refresh", "details", "close"}
    with pytest.raises(TypeError):
        StudySource()  # type: ignore[abstract]


def test_open_source_returns_the_interface(study_db):
    with open_source(study_db, "demo") as source:
        assert isinstance(source, StudySource) and source.kind == "sql"
        assert [t.number for t in source.records()] == sorted(t.number for t in source.trials.values())


def test_a_fake_source_drives_the_view_and_the_render():
    source = FakeSource()
    view = Dashboard(source, top_k=5).view()
    assert view.counts == {"complete": 2, "pruned": 0, "fail": 0, "running": 1, "waiting": 0, "total": 3}
    assert view.best.number == 1 and view.best_ci == [0.05]
    assert [t.number for t in view.top] == [1, 0]
    assert view.history == [(0, 0.5), (1, 0.25)] and view.best_so_far == [(0, 0.5), (1, 0.25)]
    running = view.running[0]
    assert (running["number"], running["step"], running["value"]) == (2, 10, 0.7)
    assert view.source_kind == "fake" and view.url == "memory://user:***@here/fake"
    assert source.detail_calls == [[0, 1, 2]]  # the shown trials only, once per view
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    console.print(render.dashboard(view, 120))
    text = console.export_text()
    assert "fake-study" in text and "0.25 ± 0.05" in text and "trial #1" in text
    assert "3 = 2 complete · 0 pruned · 0 failed · 1 running · 0 waiting" in text
    assert "(fake)" in text and "secret" not in text
    assert source.trial(2).intermediate == {5: 0.9, 10: 0.7}
    with source:
        pass
    assert source.closed
