"""Rendering a :class:`~maml_tune.dashboard.state.View` (and the study list, and one trial) with rich.

The panels live in :mod:`maml_tune.dashboard.panels`, one module each; :func:`dashboard` lays
the registered ones out for the width they get: two columns from :data:`WIDE` columns up, one
column below (see :class:`~maml_tune.dashboard.panels.DashboardPanel` for how a panel says where).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from maml_tune.dashboard._format import CURVE_STYLES, STATE_STYLE, duration, local, num, short, with_ci
from maml_tune.dashboard._trial_detail import trial_data, trial_detail
from maml_tune.dashboard.panels import PANELS
from maml_tune.dashboard.panels.best_trials import best_trials
from maml_tune.dashboard.panels.curves import curves
from maml_tune.dashboard.panels.header import header
from maml_tune.dashboard.panels.history import history
from maml_tune.dashboard.panels.importance import importance
from maml_tune.dashboard.panels.pareto import pareto
from maml_tune.dashboard.panels.running import running
from maml_tune.dashboard.state import View

__all__ = [
    "CURVE_STYLES",
    "STATE_STYLE",
    "WIDE",
    "best_trials",
    "curves",
    "dashboard",
    "duration",
    "header",
    "history",
    "importance",
    "local",
    "num",
    "pareto",
    "running",
    "short",
    "study_list",
    "trial_data",
    "trial_detail",
    "with_ci",
]

WIDE = 140


def dashboard(view: View, width: int, height: int | None = None) -> RenderableType:
    """The whole dashboard for a terminal ``width`` columns wide (``height``: fit charts to it)."""
    wide = width >= WIDE
    chart_h = 8
    if height is not None:  # watching: keep it on one screen where possible
        chart_h = max(3, min(8, (height - 30) // (2 if wide else 3)))
    half = (width - 1) // 2 if wide else width
    shown = [p for p in PANELS.values() if p.shown(view)]
    top = [p.render(view, width, chart_h) for p in shown if p.column == "top"]
    footer = Text(
        f"updated {local(view.now)} · read in {view.refresh_seconds * 1000:.0f} ms ({view.source_kind})",
        style="dim",
    )
    if not wide:
        body = sorted((p for p in shown if p.column != "top"), key=lambda p: p.narrow_order)
        return Group(*top, *(p.render(view, width, chart_h) for p in body), footer)
    columns = {"left": half, "right": width - half}
    grid = Table.grid(expand=True, padding=(0, 1))
    cells = []
    for column, column_width in columns.items():
        grid.add_column(ratio=1)
        panels = sorted((p for p in shown if p.column == column), key=lambda p: p.wide_order)
        cells.append(Group(*(p.render(view, column_width, chart_h) for p in panels)))
    grid.add_row(*cells)
    return Group(*top, grid, footer)


# ----------------------------------------------------------------------------- study list


def study_list(rows: list[dict[str, Any]], url: str) -> RenderableType:
    table = Table(
        title=Text(f"studies in {url}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 0),
    )
    table.add_column("study", style="bold", no_wrap=True, overflow="ellipsis")
    table.add_column("family", no_wrap=True, overflow="ellipsis")
    table.add_column("goal", no_wrap=True)
    for label, key in (
        ("done", "complete"),
        ("pruned", "pruned"),
        ("failed", "fail"),
        ("run", "running"),
        ("wait", "waiting"),
    ):
        table.add_column(label, justify="right", style=STATE_STYLE[key.upper()], no_wrap=True)
    table.add_column("best", justify="right", no_wrap=True)
    table.add_column("last", no_wrap=True)
    for row in rows:
        c = row["counts"]
        if row["best_value"] is not None:
            best = num(row["best_value"])
        else:
            best = "Pareto" if len(row["directions"]) > 1 else "-"
        last = "-"
        if row["last_activity"]:
            stamp = dt.datetime.fromisoformat(row["last_activity"]).replace(tzinfo=dt.timezone.utc)
            last = stamp.astimezone().strftime("%m-%d %H:%M")
        table.add_row(
            Text(row["name"]),
            Text(row["family"] or "-"),
            "/".join(d[:3] for d in row["directions"]),
            *(str(c.get(k, 0)) for k in ("complete", "pruned", "fail", "running", "waiting")),
            best,
            last,
        )
    return Group(table, Text("maml-tune dashboard STUDY shows one of them", style="dim"))
