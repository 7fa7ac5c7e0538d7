"""``maml-tune studies list|show|delete|export`` and ``maml-tune best``: reading study databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from maml_tune.cli._common import JsonOption, fmt, given_up_text, out, params_text, print_json
from maml_tune.cli.search import StorageOption
from maml_tune.search.record import TrialAttrs

StudyArgument = Annotated[
    str | None,
    typer.Argument(envvar="MAML_TUNE_STUDY", help="Study name (default: the only study in the database)."),
]

studies_app = typer.Typer(
    help="List, show, delete and export the studies in a study database.", no_args_is_help=True
)


def _objective_text(data: dict[str, Any], sep: str) -> str:
    pairs = zip(data["metrics"] or [], data["directions"], strict=False)
    return sep.join(f"{metric} ({direction})" for metric, direction in pairs)


def _values(values: list[Any] | None) -> str:
    return ", ".join(fmt(v) if isinstance(v, (int, float)) else str(v) for v in values) if values else "-"


@studies_app.command("list")
def list_command(storage: StorageOption = None, as_json: JsonOption = False) -> None:
    """Every study in the database with its trial counts and best value."""
    from maml_tune.search.results import list_studies

    rows = list_studies(storage)
    if as_json:
        print_json(rows)
        return
    table = Table(title="studies")
    for column in ("name", "family", "metrics"):
        table.add_column(column, overflow="fold")
    for column in ("complete", "pruned", "failed", "running"):  # headers never cut
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("best", overflow="fold")
    for row in rows:
        c = row["counts"]
        best = (
            _values(row["best_values"])
            if row["best_values"]
            else (f"Pareto set of {row['pareto_size']}" if row.get("pareto_size") else "-")
        )
        table.add_row(
            Text(row["name"]),
            Text(row["family"] or "-"),
            Text(", ".join(row["metrics"] or []) or "-"),
            str(c["complete"]),
            str(c["pruned"]),
            str(c["fail"]),
            str(c["running"]),
            best,
        )
    out.print(table)


@studies_app.command("show")
def show_command(
    study: StudyArgument = None, storage: StorageOption = None, as_json: JsonOption = False
) -> None:
    """A study's spec, counts and trials."""
    from maml_tune.search.results import show

    data = show(storage, study)
    if as_json:
        print_json(data)
        return
    c = data["counts"]
    out.print(
        f"[bold]{escape(data['name'])}[/bold]: family {escape(data['family'] or '-')}, "
        f"{_objective_text(data, ' / ')}; "
        f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, {c['running']} running",
        markup=True,
    )
    table = Table()
    for column in ("#", "state", "values", "duration s", "params / reason"):
        table.add_column(column)
    for trial in data["trials"]:
        detail = (
            trial["reason"]
            if trial["state"] in ("PRUNED", "FAIL") and trial["reason"]
            else params_text(trial["params"])
        )
        number = f"{trial['number']}{' (baseline)' if trial['baseline'] else ''}"
        duration = f"{trial['duration_seconds']:.1f}" if trial["duration_seconds"] else "-"
        table.add_row(number, trial["state"], _values(trial["values"]), duration, Text(detail))
    out.print(table)
    for entry in data["given_up"]:
        out.print(given_up_text(entry), markup=False, highlight=False)


@studies_app.command("delete")
def delete_command(
    study: Annotated[str, typer.Argument(envvar="MAML_TUNE_STUDY", help="Study name.")],
    storage: StorageOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    checkpoints: Annotated[
        Path, typer.Option("--checkpoints", help="Checkpoint folder of the studies.")
    ] = Path("studies/checkpoints"),
    as_json: JsonOption = False,
) -> None:
    """Delete a study (its trials and kept checkpoints)."""
    from maml_tune.search.results import delete

    if not yes and not typer.confirm(f"delete study {study!r} and all its trials?"):
        raise typer.Exit(1)
    data = delete(storage, study, checkpoints)
    if as_json:
        print_json(data)
    else:
        out.print(f"deleted study {data['deleted']} from {data['storage']}")


@studies_app.command("export")
def export_command(
    study: StudyArgument = None,
    storage: StorageOption = None,
    output: Annotated[
        str | None, typer.Option("--out", "-o", help="File to write (.json or .csv); - for stdout.")
    ] = None,
    fmt_name: Annotated[
        str | None, typer.Option("--format", help="json or csv (default: from --out).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Export every trial (params, values, metrics, config) to JSON or CSV."""
    import csv
    import sys

    from maml_tune.search.results import export

    data = export(storage, study, output, fmt_name)
    if "data" in data:
        if data["format"] == "json":
            print_json(data["data"])
        else:
            rows = data["data"]
            columns: list[str] = []
            for row in rows:
                columns.extend(k for k in row if k not in columns)
            writer = csv.DictWriter(sys.stdout, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return
    if as_json:
        print_json(data)
    else:
        out.print(f"wrote {data['trials']} trials of {data['study']} to {data['path']}")


def best_command(
    study: StudyArgument = None, storage: StorageOption = None, as_json: JsonOption = False
) -> None:
    """The best trial (or the Pareto set of a multi-objective study) with its configuration."""
    from maml_tune.search.results import best

    data = best(storage, study)
    if as_json:
        print_json(data)
        return
    title = f"{data['study']}: " + ("Pareto set" if data["pareto"] else "best trial")
    out.print(
        f"[bold]{escape(title)}[/bold] ({escape(_objective_text(data, ', '))})",
        markup=True,
    )
    for trial in data["trials"]:
        attrs = TrialAttrs.from_user_attrs(trial["user_attrs"])
        metrics = attrs.metrics
        table = Table(
            title=f"trial {trial['number']}{' (baseline)' if trial['baseline'] else ''}: "
            f"{_values(trial['values'])}",
            show_header=False,
        )
        table.add_column("", style="bold", no_wrap=True)
        table.add_column("", overflow="fold")  # a checkpoint path is shown whole
        for key, value in trial["params"].items():
            table.add_row(key, fmt(value) if isinstance(value, float) else str(value))
        for name in ("val_loss", "test_loss", "val_accuracy", "test_accuracy"):
            if name in metrics:
                table.add_row(name, fmt(metrics[name], metrics.get(f"{name}_ci95")))
        for key in ("n_params", "wall_seconds", "tasks_per_sec", "device", "checkpoint"):
            value = getattr(attrs, key)
            if value is not None:
                table.add_row(key, Text(fmt(value) if isinstance(value, float) else str(value)))
        out.print(table)
    if data["trials"] and "config" in data["trials"][0]["user_attrs"]:
        out.print(
            "config: " + json.dumps(data["trials"][0]["user_attrs"]["config"], sort_keys=True), markup=False
        )


def register(app: typer.Typer) -> None:
    app.add_typer(studies_app, name="studies")
    app.command("best")(best_command)
