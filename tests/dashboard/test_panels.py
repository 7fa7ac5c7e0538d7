"""The panel registry: every built-in panel registered once, and a new panel shows up by registering it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from maml_tune.dashboard import render
from maml_tune.dashboard.panels import PANELS, DashboardPanel, register
from maml_tune.dashboard.source import open_source
from maml_tune.dashboard.state import Dashboard


def _text(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def test_builtin_panels_are_registered():
    assert list(PANELS) == [
        "best trials",
        "learning curves",
        "header",
        "history",
        "importance",
        "pareto",
        "running trials",
    ]
    assert all(p.column in ("top", "left", "right") for p in PANELS.values())
    assert [p.name for p in PANELS.values() if p.column == "top"] == ["header"]


def test_a_registered_panel_is_laid_out_and_duplicates_are_refused(study_db):
    class CountPanel(DashboardPanel):
        name = "count"
        column = "right"
        wide_order, narrow_order = 9, 9

        def render(self, view, width, chart_height):
            return Text(f"COUNTED {view.counts['total']} trials in {width} columns")

    source = open_source(study_db, "demo")
    view = Dashboard(source).view(refresh=False)
    before = _text(render.dashboard(view, 160), 160)
    register(CountPanel)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(CountPanel)
        wide = _text(render.dashboard(view, 160), 160)
        narrow = _text(render.dashboard(view, 80), 80)
    finally:
        del PANELS["count"]
    total = view.counts["total"]
    assert "COUNTED" not in before
    assert f"COUNTED {total} trials in 81 columns" in wide  # the right column: 160 - (160 - 1) // 2
    assert f"COUNTED {total} trials in 80 columns" in narrow
    # last in the single column: after the learning curves, just above the footer
    lines = narrow.splitlines()
    assert narrow.index("COUNTED") > narrow.index("learning curves")
    assert lines[-2].startswith("COUNTED") and lines[-1].startswith("updated")
    assert _text(render.dashboard(view, 160), 160) == before
    source.close()
