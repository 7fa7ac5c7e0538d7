"""The optimisation history chart: each trial's value and the best so far (one objective)."""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel

from maml_tune.dashboard.charts import Chart, Series
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def history(view: View, height: int) -> Panel:
    names = view.objective_names
    chart = Chart(
        [
            Series([(float(n), v) for n, v in view.history], style="cyan", label=f"{names[0]} per trial"),
            Series(_steps(view.best_so_far), style="green", line=True, label="best so far"),
        ],
        height=height,
        x_label="trial number",
        empty="no completed trial yet",
    )
    return Panel(chart, title="optimisation history", title_align="left")


def _steps(points: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """A best-so-far series as a step line (flat until the next improvement)."""
    out: list[tuple[float, float]] = []
    for number, value in points:
        if out and value != out[-1][1]:
            out.append((float(number), out[-1][1]))
        out.append((float(number), value))
    return out


@register
class HistoryPanel(DashboardPanel):
    name = "history"
    column = "left"
    wide_order, narrow_order = 1, 2

    def shown(self, view: View) -> bool:
        return not view.pareto

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return history(view, chart_height)
