"""The best-trials table (the Pareto set for several objectives), narrowed to the width it gets."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.core.algorithms import ALGORITHMS
from maml_tune.dashboard._format import STATE_STYLE, duration, num, short
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.source import TrialRecord
from maml_tune.dashboard.state import View, ci95, key_params

_TOP_COLUMNS = ("algo", "inner lr", "steps", "arch", "meta lr", "batch", "time", "state")
_DROP_ORDER = ("state", "time", "algo", "batch", "meta lr", "arch", "steps")
"""Columns left out, in this order, until the table fits the width it gets."""


def _top_cells(record: TrialRecord) -> dict[str, Any]:
    params = key_params(record)
    algo = params.get("algorithm", "-")
    known = ALGORITHMS.get(algo)
    if "order" in params and known is not None and not known.always_first_order:
        algo += f" {params['order']}"
    steps = params.get("steps", "-")
    test_steps = params.get("test steps") or steps
    if steps != "-":
        steps = f"{steps}/{test_steps}"
    raw = record.attrs.config or {}
    algo_cfg, train_cfg = raw.get("algo", {}), raw.get("train", {})
    return {
        "algo": algo,
        "inner lr": short(algo_cfg.get("inner_lr", record.params.get("algo.inner_lr", "-"))),
        "steps": steps,
        "arch": params.get("arch", "-"),
        "meta lr": short(train_cfg.get("meta_lr", record.params.get("train.meta_lr", "-"))),
        "batch": params.get("meta-batch", "-"),
        "time": duration(record.duration()),
        "state": Text(record.state.lower(), style=STATE_STYLE.get(record.state, "")),
    }


def _top_table(view: View, columns: list[str]) -> Table:
    names = view.objective_names
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, show_edge=False)
    table.add_column("#", justify="right", style="bold", no_wrap=True)
    objectives = names if view.pareto else names[:1]
    for name in objectives:
        table.add_column(name, justify="right", no_wrap=True)
        table.add_column("±95%", justify="left", no_wrap=True, style="dim")
    for name in columns:
        table.add_column(name, justify="left" if name in ("algo", "arch", "state") else "right", no_wrap=True)
    for record in view.top:
        row: list[Any] = [str(record.number)]
        for value, name in zip(record.values or (), objectives, strict=False):
            ci = ci95(record, name)
            row += [num(value), f"±{ci:.2g}" if ci is not None else ""]
        cells = _top_cells(record)
        row += [cells[name] for name in columns]
        table.add_row(*row)
    return table


def best_trials(view: View, width: int) -> Panel:
    import io

    from rich.console import Console
    from rich.measure import Measurement

    title = "Pareto set" if view.pareto else f"best trials (top {len(view.top)})"
    if not view.top:
        return Panel(Text("no completed trial yet", style="dim"), title=title, title_align="left")
    columns = list(_TOP_COLUMNS)
    inner = max(width - 4, 20)
    probe = Console(width=inner, file=io.StringIO())
    table = _top_table(view, columns)
    for name in _DROP_ORDER:
        if Measurement.get(probe, probe.options.update_width(10_000), table).maximum <= inner:
            break
        columns.remove(name)
        table = _top_table(view, columns)
    note = Text("steps: inner steps train/test · time: trial duration", style="dim")
    return Panel(Group(table, note), title=title, title_align="left")


@register
class BestTrialsPanel(DashboardPanel):
    name = "best trials"
    column = "left"
    wide_order, narrow_order = 0, 0

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return best_trials(view, width)
