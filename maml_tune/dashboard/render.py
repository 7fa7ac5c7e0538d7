"""Rendering a :class:`~maml_tune.dashboard.state.View` (and the study list, and one trial) with rich.

Panels are laid out for the width they get: two columns from :data:`WIDE` columns up, one
column below; the best-trials table drops its least useful columns on narrow terminals.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.core.algorithms import ALGORITHMS
from maml_tune.dashboard.charts import Chart, Series, bar
from maml_tune.dashboard.source import TrialRecord, finite
from maml_tune.dashboard.state import View, ci95, curve, key_params

WIDE = 140
STATE_STYLE = {
    "COMPLETE": "green",
    "PRUNED": "yellow",
    "FAIL": "red",
    "RUNNING": "cyan",
    "WAITING": "dim",
}
CURVE_STYLES = ("green", "magenta", "blue", "cyan", "yellow", "red", "bright_white")


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def with_ci(value: Any, ci: float | None) -> str:
    text = num(value)
    return f"{text} ± {ci:.2g}" if ci is not None and finite(value) else text


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def local(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.replace(tzinfo=dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


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


# ----------------------------------------------------------------------------- panels


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


_TOP_COLUMNS = ("algo", "inner lr", "steps", "arch", "meta lr", "batch", "time", "state")
_DROP_ORDER = ("state", "time", "algo", "batch", "meta lr", "arch", "steps")
"""Columns left out, in this order, until the table fits the width it gets."""


def short(value: Any) -> str:
    """A compact number for table cells: ``0.0268``, ``7.0e-4``, ``1.2e+03``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.3g}"


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
    raw = record.user_attrs.get("config", {}) if record.user_attrs else {}
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


def dashboard(view: View, width: int, height: int | None = None) -> RenderableType:
    """The whole dashboard for a terminal ``width`` columns wide (``height``: fit charts to it)."""
    wide = width >= WIDE
    chart_h = 8
    if height is not None:  # watching: keep it on one screen where possible
        chart_h = max(3, min(8, (height - 30) // (2 if wide else 3)))
    half = (width - 1) // 2 if wide else width
    first = best_trials(view, half if wide else width)
    main_chart = pareto(view, chart_h) if view.pareto else history(view, chart_h)
    left = [first, main_chart]
    right = [importance(view, (width - half) if wide else width), curves(view, chart_h), running(view)]
    footer = Text(
        f"updated {local(view.now)} · read in {view.refresh_seconds * 1000:.0f} ms ({view.source_kind})",
        style="dim",
    )
    if wide:
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(Group(*left), Group(*right))
        return Group(header(view), grid, footer)
    return Group(header(view), first, right[2], main_chart, right[0], right[1], footer)


# ----------------------------------------------------------------------------- study list


def study_list(rows: list[dict[str, Any]], url: str) -> RenderableType:
    table = Table(
        title=f"studies in {url}",
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
            row["name"],
            row["family"] or "-",
            "/".join(d[:3] for d in row["directions"]),
            *(str(c.get(k, 0)) for k in ("complete", "pruned", "fail", "running", "waiting")),
            best,
            last,
        )
    return Group(table, Text("maml-tune dashboard STUDY shows one of them", style="dim"))


# ----------------------------------------------------------------------------- one trial


def trial_data(record: TrialRecord, info: Any) -> dict[str, Any]:
    """A trial in full as plain JSON data."""
    attrs = dict(record.user_attrs or {})
    names = info.objective_names()
    return {
        "study": info.name,
        "number": record.number,
        "state": record.state,
        "values": list(record.values) if record.values is not None else None,
        "objectives": names,
        "directions": info.directions,
        "params": record.params,
        "datetime_start": local(record.start) if record.start else None,
        "datetime_complete": local(record.complete) if record.complete else None,
        "duration_seconds": record.duration(),
        "reason": record.reason(),
        "checkpoint": attrs.get("checkpoint"),
        "intermediate_values": {str(k): v for k, v in (record.intermediate or {}).items()},
        "metrics": attrs.get("metrics"),
        "config": attrs.get("config"),
        "user_attrs": json.loads(json.dumps(attrs, default=str)),
        "system_attrs": json.loads(json.dumps(record.system_attrs or {}, default=str)),
    }


def trial_detail(data: dict[str, Any], width: int) -> RenderableType:
    parts: list[RenderableType] = []
    summary = Table.grid(padding=(0, 1))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    state = data["state"]
    summary.add_row("state", Text(state.lower(), style=STATE_STYLE.get(state, "")))
    if data["values"] is not None:
        metrics = data.get("metrics") or {}
        for name, value in zip(data["objectives"], data["values"], strict=False):
            summary.add_row(name, with_ci(value, metrics.get(f"{name}_ci95")))
    summary.add_row("started", data["datetime_start"] or "-")
    summary.add_row("completed", data["datetime_complete"] or "-")
    summary.add_row("duration", duration(data["duration_seconds"]))
    attrs = data["user_attrs"]
    for key in (
        "n_params",
        "n_adapted_params",
        "wall_seconds",
        "train_seconds",
        "tasks_per_sec",
        "iterations_done",
        "device",
        "worker",
        "version",
    ):
        if key in attrs:
            summary.add_row(key.replace("_", " "), num(attrs[key]))
    if attrs.get("baseline"):
        summary.add_row("baseline", "literature configuration")
    summary.add_row("checkpoint", data["checkpoint"] or "-")
    if data["reason"]:
        summary.add_row("reason", Text(data["reason"], style="yellow" if state == "PRUNED" else "red"))
    elif state in ("FAIL", "PRUNED"):
        summary.add_row("reason", Text("none recorded (see the worker's log)", style="dim"))
    parts.append(Panel(summary, title=f"trial #{data['number']} of {data['study']}", title_align="left"))
    if data["params"]:
        params = Table(box=box.SIMPLE_HEAD, show_edge=False)
        params.add_column("parameter", style="bold")
        params.add_column("value", justify="right")
        for key, value in data["params"].items():
            params.add_row(key, num(value))
        parts.append(Panel(params, title="sampled parameters", title_align="left"))
    metrics = data.get("metrics") or {}
    if metrics:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("metric", style="bold")
        table.add_column("value ± 95%", justify="right")
        for key, value in metrics.items():
            if key.endswith("_ci95"):
                continue
            table.add_row(key, with_ci(value, metrics.get(f"{key}_ci95")) if finite(value) else str(value))
        parts.append(Panel(table, title="metrics", title_align="left"))
    steps = [(int(k), v) for k, v in data["intermediate_values"].items()]
    if not steps:  # multi-objective studies report nothing; the validation history has it
        fake = TrialRecord(0, 0, "COMPLETE", user_attrs=attrs)
        steps = curve(fake, data["objectives"][0] if data["objectives"] else None)
    if steps:
        chart = Chart(
            [Series([(float(s), v) for s, v in steps], style="cyan", line=True)],
            height=6,
            x_label="meta-iteration",
        )
        listing = Text("  ".join(f"{s}: {num(v)}" for s, v in steps[-12:]), style="dim", overflow="fold")
        parts.append(
            Panel(Group(chart, listing), title="intermediate values (meta-validation)", title_align="left")
        )
    if data.get("config"):
        from rich.pretty import Pretty

        parts.append(Panel(Pretty(data["config"], expand_all=False), title="config", title_align="left"))
    return Group(*parts)
