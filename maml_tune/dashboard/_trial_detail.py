"""One trial in full: as JSON data (``maml-tune trial --json``) and rendered."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maml_tune.dashboard._format import STATE_STYLE, duration, local, num, with_ci
from maml_tune.dashboard.charts import Chart, Series
from maml_tune.dashboard.source import TrialRecord, finite
from maml_tune.dashboard.state import curve
from maml_tune.search.record import TrialAttrs


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
        "checkpoint": record.attrs.checkpoint,
        "intermediate_values": {str(k): v for k, v in (record.intermediate or {}).items()},
        "metrics": record.attrs.metrics or None,
        "config": record.attrs.config,
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
    attrs = TrialAttrs.from_user_attrs(data["user_attrs"])
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
        if getattr(attrs, key) is not None:
            summary.add_row(key.replace("_", " "), num(getattr(attrs, key)))
    if attrs.baseline:
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
        fake = TrialRecord(0, 0, "COMPLETE", user_attrs=data["user_attrs"])
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
