"""The running trials: last reported step and value, elapsed time, heartbeat age."""

from __future__ import annotations

from rich import box
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.dashboard._format import duration, num
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def running(view: View) -> Panel:
    if not view.running:
        return Panel(Text("no running trial", style="dim"), title="running trials", title_align="left")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for name in ("#", "step", "latest", "elapsed", "heartbeat", "params"):
        table.add_column(name, justify="right" if name != "params" else "left", no_wrap=name != "params")
    for row in view.running:
        params = row["params"]
        text = " ".join(f"{k}={v}" for k, v in params.items() if k in ("inner lr", "meta lr", "arch"))
        table.add_row(
            str(row["number"]),
            num(row["step"]),
            num(row["value"]),
            duration(row["elapsed"]),
            f"{duration(row['heartbeat_age'])} ago" if row["heartbeat_age"] is not None else "-",
            text or "-",
        )
    return Panel(table, title=f"running trials ({len(view.running)})", title_align="left")


@register
class RunningPanel(DashboardPanel):
    name = "running trials"
    column = "right"
    wide_order, narrow_order = 2, 1

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return running(view)
