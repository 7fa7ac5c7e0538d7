"""The Pareto-front chart of the first two objectives (several objectives)."""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel

from maml_tune.dashboard.charts import Chart, Series
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def pareto(view: View, height: int) -> Panel:
    names = view.objective_names
    rest = [(a, b) for a, b, _, on in view.front if not on]
    front = sorted((a, b) for a, b, _, on in view.front if on)
    chart = Chart(
        [
            Series(rest, style="bright_black", label="dominated"),
            Series(front, style="green", line=True, label="Pareto front"),
        ],
        height=height,
        x_label=f"x: {names[0]} · y: {names[1] if len(names) > 1 else ''}",
        log_y=False,
        empty="no completed trial yet",
    )
    return Panel(chart, title=f"Pareto front ({names[0]} vs {names[1]})", title_align="left")


@register
class ParetoPanel(DashboardPanel):
    name = "pareto"
    column = "left"
    wide_order, narrow_order = 1, 2

    def shown(self, view: View) -> bool:
        return view.pareto

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return pareto(view, chart_height)
