"""``maml-tune search``: run (or resume) an Optuna study over MAML hyperparameters."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from maml_tune.cli._common import (
    DeviceOption,
    JsonOption,
    SetOption,
    at_least,
    err,
    fmt,
    given_up_text,
    live_progress,
    out,
    parse_sets,
    print_json,
    printable,
    progress_format,
    progress_log,
    registry,
)
from maml_tune.errors import MamlTuneError
from maml_tune.search.catalog import METRIC_MEANINGS
from maml_tune.search.events import (
    Event,
    FamilyPreparing,
    IterationDone,
    Status,
    StorageFailed,
    StudyOpened,
    TrialEnded,
    TrialStarted,
    Validated,
    WorkerFailed,
)

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="MAML_TUNE_STORAGE",
        help="Study database: any SQLAlchemy URL (postgresql://…, mysql://…). Default: sqlite:///studies/maml-tune.db",
    ),
]
StudyNameOption = Annotated[
    str | None,
    typer.Option(
        "--study-name", envvar="MAML_TUNE_STUDY", callback=printable, help="Study name (default: the spec's)."
    ),
]


MAX_WORKERS = 64
"""Each worker process holds a model, its data and a study connection (~350 MB on CPU)."""

DEFAULT_SEED = 0
"""The sampler and training seed of a study made from a family's defaults (``--family X``)."""

RETRAIN_ITERATIONS = 20000
"""The retraining length the closing hint (and the README's quick start) suggests."""

INTERRUPTED = "run the same command again to resume the study"
INTERRUPTED_AGAIN = (
    "interrupted: stopped at once (second signal); the next search recovers the trial(s) left running"
)


class _RunningTrials:
    """Passes the runner's events on to ``display`` and keeps the trials this search has running,
    so that an interrupted search can say what became of them."""

    def __init__(self, display: Any):
        self.display, self.study, self.running = display, None, set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, StudyOpened):
            self.study = event.study
        elif isinstance(event, TrialStarted):
            self.running.add(event.trial)
        elif isinstance(event, TrialEnded):
            self.running.discard(event.trial)
        self.display(event)

    def interrupted(self, storage: str | None) -> str:
        """What the stop did to the running trials, read back from the study (not assumed)."""
        from maml_tune.search.results import trial_states

        said = "stopped by a signal (SIGINT or SIGTERM)"
        if self.study is None or not self.running:
            return f"{said}; no trial was running: {INTERRUPTED}"
        try:
            states = trial_states(storage, self.study, self.running)
        except MamlTuneError:
            return f"{said}; the study could not be read back: {INTERRUPTED} (it recovers any trial left)"
        closed = sorted(n for n, state in states.items() if state != "RUNNING")
        left = sorted(n for n, state in states.items() if state == "RUNNING")
        parts = [said]
        if closed:
            parts.append(f"trial(s) {', '.join(map(str, closed))} failed and re-queued")
        if left:
            parts.append(f"trial(s) {', '.join(map(str, left))} still RUNNING: the next search recovers them")
        return f"{'; '.join(parts)}: {INTERRUPTED}"


class _Display:
    """Turns the runner's events into a rich progress display on stderr."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.overall: TaskID | None = None
        self.workers: dict[int, TaskID] = {}
        self.multi = False
        self.counts: dict[str, int] = {}
        self.running: set[int] = set()

    def __call__(self, event: Event) -> None:
        p = self.progress
        if isinstance(event, StudyOpened):
            self.multi = len(event.directions) > 1
            verb = "created" if event.created else f"resumed ({event.existing} trials so far)"
            err.print(
                f"study [bold]{escape(event.study)}[/bold] in {escape(event.storage)}: {verb}; "
                f"target {event.n_trials} trials, {event.workers} worker(s)",
                markup=True,
            )
            if event.recovered:
                numbers = ", ".join(str(n) for n in event.recovered)
                err.print(f"re-queued trial(s) {numbers}: interrupted, or their workers are gone")
            if event.baseline:
                err.print("baseline (literature configuration) enqueued as the next trial")
            self.overall = p.add_task(
                "trials", total=event.n_trials, completed=event.existing, info="", best="best -"
            )
        elif isinstance(event, Status) and self.overall is not None:
            summary = event.summary
            c = summary["counts"]
            done = c["complete"] + c["pruned"] + c["fail"]
            best = "-"
            if summary.get("best_values"):
                best = ", ".join(fmt(v) for v in summary["best_values"]) + f" (#{summary['best_trial']})"
            elif summary.get("pareto_size"):
                best = f"Pareto set of {summary['pareto_size']}"
            self.counts = c
            p.update(
                self.overall, completed=min(done, p.tasks[self.overall].total or done), best=f"best {best}"
            )
            self._show_counts()
        elif isinstance(event, FamilyPreparing):
            task = self._worker(event.worker)
            p.update(
                task,
                description=f"worker {event.worker}: {event.what}",
                completed=event.done,
                total=event.total,
            )
        elif isinstance(event, TrialStarted):
            self.running.add(event.trial)
            self._show_counts()
            task = self._worker(event.worker)
            label = f"worker {event.worker}: trial {event.trial}"
            # reset, not update: a finished bar keeps its stopped clock otherwise
            p.reset(task, description=label, total=None, info="", best="")
        elif isinstance(event, IterationDone):
            task = self._worker(event.worker)
            p.update(
                task,
                completed=event.iteration,
                total=event.iterations,
                info=f"meta-loss {event.meta_loss:.4g}",
            )
        elif isinstance(event, Validated):
            task = self._worker(event.worker)
            p.update(task, best=f"last val {event.value:.4g}")  # this trial's, not the study's best
        elif isinstance(event, TrialEnded):
            self.running.discard(event.trial)
            self._show_counts()
            if event.state != "COMPLETE" and event.reason:
                p.console.print(
                    f"trial {event.trial} {event.state.lower()}: {event.reason}",
                    markup=False,
                    highlight=False,
                )
        elif isinstance(event, StorageFailed):
            p.console.print(
                f"worker {event.worker}: study database error, retrying: {event.message}",
                markup=False,
                highlight=False,
            )
        elif isinstance(event, WorkerFailed):
            p.console.print(f"[red]worker {event.worker} stopped:[/red] {event.message}")

    def _show_counts(self) -> None:
        """The overall row's counts; running includes this command's trials as they start
        and end (the study's own count comes only with each status)."""
        if self.overall is None:
            return
        c = self.counts
        running = max(c.get("running", 0), len(self.running))
        self.progress.update(
            self.overall,
            info=f"done {c.get('complete', 0)}  pruned {c.get('pruned', 0)}  failed {c.get('fail', 0)}  "
            f"running {running}",
        )

    def _worker(self, worker: int) -> TaskID:
        if worker not in self.workers:
            self.workers[worker] = self.progress.add_task(f"worker {worker}", total=None, info="", best="")
        return self.workers[worker]


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{name}={fmt(value) if isinstance(value, float) else value}" for name, value in params.items()
    )


class _LogDisplay:
    """The runner's events as :class:`~maml_tune.cli._logs.ProgressLog` lines: the study, every
    trial's start and end (state, values, parameters, reason), steady meta-training progress."""

    def __init__(self, log):
        self.log = log
        self.params: dict[int, dict[str, Any]] = {}
        self.metrics: list[str] = []

    def __call__(self, event: Event) -> None:
        log = self.log
        if isinstance(event, StudyOpened):
            self.metrics = list(event.metrics)
            verb = "created" if event.created else f"resumed with {event.existing} trials"
            log.event(
                "study",
                f"{event.study} in {event.storage}: {verb}; target {event.n_trials} trials, "
                f"{event.workers} worker(s) on {event.device}",
                study=event.study,
                storage=event.storage,
                created=event.created,
                existing=event.existing,
                n_trials=event.n_trials,
                workers=event.workers,
                device=event.device,
                recovered=event.recovered,
                baseline=event.baseline is not None,
            )
            if event.recovered:
                numbers = ", ".join(str(n) for n in event.recovered)
                log.event(
                    "study.recovered",
                    f"re-queued trial(s) {numbers}: interrupted, or their workers are gone",
                    trials=event.recovered,
                )
            if event.baseline:
                log.event("study.baseline", "baseline (literature configuration) enqueued as the next trial")
        elif isinstance(event, FamilyPreparing):
            log.steady(
                f"prepare {event.worker}",
                event.done,
                event.total,
                "prepare",
                f"worker {event.worker}: {event.what}: {event.done}/{event.total}",
                worker=event.worker,
                what=event.what,
                done=event.done,
                total=event.total,
            )
        elif isinstance(event, TrialStarted):
            self.params[event.trial] = event.params
            log.forget(f"trial {event.trial}")
            log.event(
                "trial.start",
                f"trial {event.trial} (worker {event.worker}): {_params_text(event.params)}",
                trial=event.trial,
                worker=event.worker,
                params=event.params,
            )
        elif isinstance(event, IterationDone):
            log.steady(
                f"trial {event.trial}",
                event.iteration,
                event.iterations,
                "trial.progress",
                f"trial {event.trial}: iteration {event.iteration}/{event.iterations}, "
                f"meta-loss {event.meta_loss:.4g}",
                trial=event.trial,
                worker=event.worker,
                iteration=event.iteration,
                iterations=event.iterations,
                meta_loss=event.meta_loss,
            )
        elif isinstance(event, TrialEnded):
            names = (
                self.metrics
                if len(self.metrics) == len(event.values or ())
                else ["value"] * len(event.values or ())
            )
            values = "".join(f" {name} {fmt(v)}" for name, v in zip(names, event.values or ()))
            reason = f" ({event.reason})" if event.reason else ""
            baseline = " [baseline]" if event.baseline else ""
            params = self.params.pop(event.trial, {})
            log.event(
                "trial.end",
                f"trial {event.trial}{baseline} {event.state.lower()}{values}{reason}; "
                f"{_params_text(params)}",
                trial=event.trial,
                worker=event.worker,
                state=event.state,
                values=event.values,
                reason=event.reason,
                baseline=event.baseline,
                params=params,
            )
        elif isinstance(event, StorageFailed):
            log.event(
                "storage.retry",
                f"worker {event.worker}: study database error, retrying: {event.message}",
                worker=event.worker,
                message=event.message,
            )
        elif isinstance(event, WorkerFailed):
            log.event(
                "worker.stopped",
                f"worker {event.worker} stopped: {event.message}",
                worker=event.worker,
                message=event.message,
            )


@contextmanager
def search_display(ctx: typer.Context) -> Iterator[Any]:
    """The event consumer for this invocation's progress format (live view, log lines or none)."""
    chosen = progress_format(ctx)
    if chosen == "rich":
        with live_progress(_make_progress()) as progress:
            yield _Display(progress)
    elif chosen == "quiet":
        yield lambda event: None
    else:
        yield _LogDisplay(progress_log(ctx))


def _make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def load_search_spec(ctx: typer.Context, spec: Path | None, overrides: dict[str, Any]):
    """The spec to run: ``spec``, else the packaged default for the family, else the family's defaults."""
    from maml_tune.search.spec import apply_overrides, default_spec_path, load_spec, parse_spec

    if spec is not None:
        return load_spec(spec, registry(ctx), overrides)
    family = overrides.get("family") or "sinusoid"
    default = default_spec_path(family)
    if default is not None:
        loaded = load_spec(default, registry(ctx), {k: v for k, v in overrides.items() if k != "family"})
        return loaded
    # As the packaged sinusoid study: the literature configuration as baseline, seeded.
    defaults = {
        "family": {"name": family},
        "study": {"name": family, "baseline": True, "seed": DEFAULT_SEED},
        "fixed": {"train.seed": DEFAULT_SEED},
    }
    data = apply_overrides(defaults, overrides)
    return parse_spec(data, f"<defaults of family {family!r}>", registry(ctx))


def search(
    ctx: typer.Context,
    spec: Annotated[
        Path | None, typer.Argument(help="Study spec (TOML). Default: the built-in sinusoid study.")
    ] = None,
    family: Annotated[str | None, typer.Option("--family", help="Task family (replaces the spec's).")] = None,
    n_trials: Annotated[
        int | None,
        typer.Option("--n-trials", callback=at_least(1), help="Total trials the study should have."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", callback=at_least(0, "a number"), help="Stop starting trials after S seconds."
        ),
    ] = None,
    storage: StorageOption = None,
    study_name: StudyNameOption = None,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="tpe, random, gp, cmaes, qmc or nsga2.")
    ] = None,
    pruner: Annotated[
        str | None, typer.Option("--pruner", help="median, hyperband, sha, wilcoxon or none.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            callback=at_least(1, maximum=MAX_WORKERS),
            help=f"Worker processes on this machine (at most {MAX_WORKERS}; each loads the model and data).",
        ),
    ] = 1,
    device: DeviceOption = "auto",
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed (worker i uses seed + i).")] = None,
    sets: SetOption = None,
    baseline: Annotated[
        bool | None,
        typer.Option("--baseline/--no-baseline", help="Enqueue the family's literature configuration first."),
    ] = None,
    checkpoints: Annotated[
        Path, typer.Option("--checkpoints", help="Folder for the top-k trials' checkpoints.")
    ] = Path("studies/checkpoints"),
    as_json: JsonOption = False,
) -> None:
    """Search MAML hyperparameters with Optuna; re-running resumes the study up to --n-trials."""
    from maml_tune.search import interrupt
    from maml_tune.search.runner import SearchOptions, run_search

    overrides: dict[str, Any] = {
        "family": family,
        "n_trials": n_trials,
        "timeout": timeout,
        "sampler": sampler,
        "pruner": pruner,
        "seed": seed,
        "baseline": baseline,
        "sets": parse_sets(sets),
    }
    loaded = load_search_spec(ctx, spec, overrides)
    options = SearchOptions(
        storage=storage,
        study_name=study_name,
        workers=workers,
        device=device,
        checkpoint_root=str(checkpoints),
        plugins_dir=(ctx.find_root().obj or {}).get("plugins_dir"),
    )
    tracked: _RunningTrials | None = None
    try:
        with (
            interrupt.handling(hard_exit=True, message=INTERRUPTED_AGAIN, signals=interrupt.STOP_SIGNALS),
            search_display(ctx) as display,
        ):
            tracked = _RunningTrials(display)
            result = run_search(loaded, options, tracked)
    except KeyboardInterrupt:
        said = tracked.interrupted(storage) if tracked else f"stopped by a signal: {INTERRUPTED}"
        err.print(f"[red]interrupted:[/red] {escape(said)}", markup=True, highlight=False)
        raise typer.Exit(interrupt.EXIT_CODE) from None
    if as_json:
        print_json(result.to_dict())
        return
    _print_result(result, storage)


def next_commands(study: str, storage: str | None) -> str:
    """The commands to look at and retrain a study's best trial, with its ``--storage`` when
    one was given (password masked; names quoted for the shell)."""
    from maml_tune.search.storage import mask_url

    where = "" if storage is None else f" --storage {shlex.quote(mask_url(storage))}"
    name = shlex.quote(study)
    return (
        f"see: maml-tune best {name}{where}   |   retrain: maml-tune train --from-study {name}{where} "
        f"--trial best --iterations {RETRAIN_ITERATIONS}"
    )


def _print_result(result, storage: str | None) -> None:
    s = result.summary
    c = s["counts"]
    table = Table(title=Text(f"study {result.study}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("storage", Text(result.storage))
    table.add_row(
        "trials",
        f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed "
        f"({result.added} added this run, target {result.n_trials})",
    )
    metrics = ", ".join(s.get("metrics") or [])
    if s.get("best_values"):
        table.add_row(
            f"best {metrics}", f"{', '.join(fmt(v) for v in s['best_values'])} (trial {s['best_trial']})"
        )
        test = s.get("best_test") or {}
        tested = [
            f"{name} {fmt(test[name], test.get(f'{name}_ci95'))}"
            for name in ("test_loss", "test_accuracy")
            if test.get(name) is not None
        ]
        if tested:
            table.add_row("its meta-test", ", ".join(tested))
        if s.get("best_params"):
            params = ", ".join(
                f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in s["best_params"].items()
            )
            table.add_row("its parameters", Text(params))
        if s.get("baseline_values"):
            base = s["baseline_values"][0]
            best = s["best_values"][0]
            change = (best - base) / abs(base) * 100 if isinstance(base, float) and base else None
            text = fmt(base) + (f"  (best is {change:+.1f}%)" if change is not None else "")
            table.add_row("baseline", f"{text} (trial {s['baseline_trial']})")
    elif s.get("pareto_size"):
        table.add_row("Pareto set", f"{s['pareto_size']} trial(s) over {metrics}")
    table.add_row("wall time", f"{result.wall_seconds:.1f} s")
    meanings = [f"{m}: {METRIC_MEANINGS[m]}" for m in s.get("metrics") or [] if m in METRIC_MEANINGS]
    if meanings:
        table.caption = Text("; ".join(meanings) + " (± 95% intervals)")
    out.print(table)
    for entry in s["given_up"]:
        err.print(Text.assemble(("warning: ", "yellow"), given_up_text(entry)))
    for message in result.worker_errors:
        err.print(f"[yellow]warning:[/yellow] {message}")
    out.print(next_commands(result.study, storage), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
