"""The header: study, storage, objectives, trial counts, best value, pace."""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.dashboard._format import STATE_STYLE, duration, local, with_ci
from maml_tune.dashboard.panels._base import DashboardPanel, register
from maml_tune.dashboard.state import View


def _counts_text(counts: dict[str, int]) -> Text:
    text = Text()
    for i, (key, label) in enumerate(
        (
            ("complete", "complete"),
            ("pruned", "pruned"),
            ("fail", "failed"),
            ("running", "running"),
            ("waiting", "waiting"),
        )
    ):
        if i:
            text.append(" · ", style="dim")
        text.append(str(counts.get(key, 0)), style=f"bold {STATE_STYLE[key.upper()]}")
        text.append(f" {label}")
    return Text(f"{counts.get('total', 0)} = ", style="bold") + text


def header(view: View) -> Panel:
    info = view.info
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("study", Text(f"{info.name}  (family {info.family or '-'})"))
    grid.add_row("storage", Text(view.url))
    names = view.objective_names
    grid.add_row(
        "objective",
        Text(", ".join(f"{n} ({d})" for n, d in zip(names, info.directions, strict=False))),
    )
    grid.add_row("trials", _counts_text(view.counts))
    if view.pareto:
        best = Text(f"Pareto set of {len(view.top)} trial(s)" if view.top else "no completed trial yet")
    elif view.best is not None:
        best = Text()
        best.append(with_ci(view.best.value, view.best_ci[0] if view.best_ci else None), style="bold green")
        best.append(f"  {names[0]} · trial #{view.best.number}")
        if view.best_ci and view.best_ci[0] is not None:
            best.append("  (± 95% interval)", style="dim")
    else:
        best = Text("no completed trial yet", style="dim")
    grid.add_row("best", best)
    per_hour = view.trials_per_hour
    pace = (
        "-"
        if per_hour is None
        else f"{per_hour:.0f} trials/h"
        if per_hour >= 10
        else f"{per_hour:.2g} trials/h"
    )
    grid.add_row(
        "elapsed",
        Text(f"{duration(view.elapsed_s)} · {pace} · started {local(view.started)}"),
    )
    return Panel(grid, title="[bold]maml-tune dashboard[/bold]", title_align="left", border_style="blue")


@register
class HeaderPanel(DashboardPanel):
    name = "header"
    column = "top"
    wide_order, narrow_order = 0, 0

    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        return header(view)
