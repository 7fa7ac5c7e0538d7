"""``maml-tune dashboard``, ``maml-tune trial`` and ``maml-tune plot``: inspecting studies in the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maml_tune.cli._common import JsonOption, out, print_json
from maml_tune.cli.search import StorageOption

StudyArgument = Annotated[
    str | None,
    typer.Argument(
        envvar="MAML_TUNE_STUDY",
        help="Study name (default: the only study; with several, the study list is shown).",
    ),
]


def dashboard(
    study: StudyArgument = None,
    storage: StorageOption = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh in place until Ctrl-C (reads only what changed).")
    ] = False,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.1, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    top: Annotated[int, typer.Option("--top", min=1, help="Best trials to list.")] = 5,
) -> None:
    """A study's dashboard: counts, best trials, history, importance, learning curves, running trials."""
    from maml_tune.dashboard.live import snapshot
    from maml_tune.dashboard.live import watch as watch_loop

    if watch:
        watch_loop(out, storage, study, refresh=refresh, top_k=top)
    else:
        snapshot(out, storage, study, top_k=top)


def trial_command(
    study: Annotated[str, typer.Argument(envvar="MAML_TUNE_STUDY", help="Study name.")],
    number: Annotated[int, typer.Argument(help="Trial number.")],
    storage: StorageOption = None,
    as_json: JsonOption = False,
) -> None:
    """One trial in full: config, metrics, intermediate values, checkpoint, failure or pruning reason."""
    from maml_tune.dashboard.live import trial
    from maml_tune.dashboard.render import trial_detail

    data = trial(storage, study, number)
    if as_json:
        print_json(data)
        return
    out.print(trial_detail(data, out.width))


def plot_command(
    study: Annotated[str | None, typer.Argument(envvar="MAML_TUNE_STUDY", help="Study name.")] = None,
    kind: Annotated[
        str,
        typer.Option("--kind", help="history, importance, parallel, slice, intermediate or pareto."),
    ] = "history",
    output: Annotated[
        Path, typer.Option("--out", "-o", help="File to write: .html (interactive) or .png/.svg/.pdf.")
    ] = Path("plot.html"),
    storage: StorageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one of Optuna's standard plots of a study to a file."""
    from maml_tune.dashboard.plots import write_plot

    data = write_plot(storage, study, kind, output)
    if as_json:
        print_json(data)
    else:
        out.print(f"wrote the {data['kind']} plot of {data['study']} to {data['path']}")


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)
    app.command("trial")(trial_command)
    app.command("plot")(plot_command)
