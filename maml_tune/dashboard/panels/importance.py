"""Hyperparameter importance as bars (or why it is not evaluated yet)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.dashboard.charts import bar
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def importance(view: View, width: int) -> Panel:
    imp = view.importance
    title = f"hyperparameter importance ({imp.evaluator})"
    if not imp.values:
        return Panel(Text(imp.note, style="dim"), title=title, title_align="left")
    label_w = min(max(len(k) for k in imp.values), 24)
    bar_w = max(width - label_w - 12, 8)
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, max_width=label_w)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    top = max(imp.values.values()) or 1.0
    for name, value in imp.values.items():
        table.add_row(name, Text(bar(value / top, bar_w), style="magenta"), f"{value:.2f}")
    note = Text(f"over {imp.note}", style="dim")
    return Panel(Group(table, note), title=title, title_align="left")


@register
class ImportancePanel(DashboardPanel):
    name = "importance"
    column = "right"
    wide_order, narrow_order = 0, 3

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return importance(view, width)
