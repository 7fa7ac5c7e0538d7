"""Learning curves (meta-validation by step) of the best and the running trials."""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel

from maml_tune.dashboard._format import CURVE_STYLES
from maml_tune.dashboard.charts import Chart, Series
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def curves(view: View, height: int) -> Panel:
    series = [
        Series(
            [(float(s), v) for s, v in points],
            style=CURVE_STYLES[i % len(CURVE_STYLES)],
            line=True,
            label=label,
        )
        for i, (label, points) in enumerate(view.curves)
    ]
    metric = view.objective_names[0] if not view.pareto else "val loss"
    chart = Chart(series, height=height, x_label="meta-iteration", empty="no validation reported yet")
    return Panel(chart, title=f"learning curves ({metric}, best and running)", title_align="left")


@register
class CurvesPanel(DashboardPanel):
    name = "learning curves"
    column = "right"
    wide_order, narrow_order = 1, 4

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return curves(view, chart_height)
