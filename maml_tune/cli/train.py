"""``maml-tune train``, ``evaluate`` and ``bench``: one configuration at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from maml_tune.cli._common import (
    QUERY_NORM_TEXT,
    DeviceOption,
    JsonOption,
    QueryNorm,
    SetOption,
    err,
    fmt,
    live_progress,
    out,
    parse_sets,
    print_json,
    progress_format,
    progress_log,
    query_norm_option,
    registry,
    work_progress,
)
from maml_tune.errors import Interrupted, MamlTuneError


def _progress_callback(progress: Progress):
    from maml_tune.core.trainer import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.task = progress.add_task("meta-training", total=None, loss="-", val="-", rate="-")

        def on_iteration(self, report) -> None:
            progress.update(
                self.task,
                completed=report.iteration,
                total=report.iterations,
                loss=f"{report.meta_loss:.4g}",
                rate=f"{report.tasks_per_sec:,.0f}",
            )

        def on_validation(self, iteration, result) -> None:
            text = f"loss {result.loss_after.mean:.4g}"
            if result.accuracy_after is not None:
                text += f", acc {result.accuracy_after.mean:.3f}"
            progress.update(self.task, val=text)

    return ProgressCallback()


def _family_prepare_progress(progress: Progress):
    state: dict = {}

    def report(done: int, total: int, what: str) -> None:
        if "task" not in state:
            state["task"] = progress.add_task(what, total=total, loss="", val="", rate="")
        progress.update(state["task"], completed=done, total=total, description=what)

    return report


class _LogCallback:
    """Meta-training progress as :class:`~maml_tune.cli._logs.ProgressLog` lines."""

    def __init__(self, log):
        self.log = log
        self.iterations: int | None = None

    def on_iteration(self, report) -> None:
        self.iterations = report.iterations
        self.log.steady(
            "train",
            report.iteration,
            report.iterations,
            "train",
            f"iteration {report.iteration}/{report.iterations}, meta-loss {report.meta_loss:.4g}, "
            f"{report.tasks_per_sec:,.0f} tasks/s",
            iteration=report.iteration,
            iterations=report.iterations,
            meta_loss=report.meta_loss,
            tasks_per_sec=report.tasks_per_sec,
        )

    def on_validation(self, iteration, result) -> None:
        text = f"iteration {iteration}: val loss {result.loss_after.mean:.4g}"
        if result.accuracy_after is not None:
            text += f", accuracy {result.accuracy_after.mean:.3f}"
        fields = {"iteration": iteration, **result.to_dict()}
        self.log.steady("validation", iteration, self.iterations, "validation", text, **fields)


def _log_prepare(log):
    def report(done: int, total: int, what: str) -> None:
        log.steady(
            "prepare", done, total, "prepare", f"{what}: {done}/{total}", what=what, done=done, total=total
        )

    return report


@contextmanager
def training_progress(ctx: typer.Context) -> Iterator[tuple]:
    """(the family's prepare-progress callback, the trainer callbacks) for this invocation's
    progress format: a rich live view, log lines, or nothing."""
    chosen = progress_format(ctx)
    if chosen == "rich":
        with live_progress(_make_progress()) as progress:
            yield _family_prepare_progress(progress), [_progress_callback(progress)]
    elif chosen == "quiet":
        yield None, []
    else:
        log = progress_log(ctx)
        yield _log_prepare(log), [_LogCallback(log)]


def _make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("meta-loss {task.fields[loss]}"),
        TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[rate]} tasks/s"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _results_table(title: str, result) -> Table:
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("before adaptation", justify="right")
    table.add_column("after adaptation", justify="right")
    table.add_row(
        "query loss",
        fmt(result.loss_before.mean, result.loss_before.ci95),
        fmt(result.loss_after.mean, result.loss_after.ci95),
    )
    if result.accuracy_after is not None:
        table.add_row(
            "accuracy",
            fmt(result.accuracy_before.mean, result.accuracy_before.ci95),
            fmt(result.accuracy_after.mean, result.accuracy_after.ci95),
        )
    steps = f"{result.steps} inner step{'' if result.steps == 1 else 's'}"
    table.caption = (
        f"{result.tasks} {result.split} tasks, {steps}, ± 95% interval; "
        f"queries {QUERY_NORM_TEXT[result.query_norm]}"
    )
    return table


def train(
    ctx: typer.Context,
    spec: Annotated[
        Path | None, typer.Argument(help="Study spec (TOML): its family and fixed settings.")
    ] = None,
    family: Annotated[
        str | None, typer.Option("--family", help="Task family (default: the spec's, else sinusoid).")
    ] = None,
    sets: SetOption = None,
    iterations: Annotated[int | None, typer.Option("--iterations", min=0, help="Meta-iterations.")] = None,
    device: DeviceOption = "auto",
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (weights, tasks).")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Checkpoint directory (default runs/FAMILY-TIME).")
    ] = None,
    from_study: Annotated[
        str | None, typer.Option("--from-study", help="Retrain a trial's configuration from this study.")
    ] = None,
    trial: Annotated[
        str, typer.Option("--trial", help="With --from-study: a trial number or best.")
    ] = "best",
    storage: Annotated[
        str | None,
        typer.Option("--storage", envvar="MAML_TUNE_STORAGE", help="Study database (with --from-study)."),
    ] = None,
) -> None:
    """Meta-train one configuration and write its checkpoint directory."""
    from maml_tune.core.checkpoint import save_checkpoint
    from maml_tune.core.config import family_settings
    from maml_tune.core.device import resolve_device
    from maml_tune.core.run import train_and_test
    from maml_tune.search.storage import mask_url, storage_url

    settings: dict = {}
    family_name = family
    if from_study is not None:
        from maml_tune.search.results import trial_config

        source = trial_config(storage, from_study, trial)
        family_name = source.config.family
        settings.update(source.config.settings())
        values = ", ".join(fmt(v) for v in source.values or ()) or "no value"
        params = ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in source.params.items())
        err.print(
            f"retraining trial {source.trial} of study {source.study} ({values}): "
            f"{params or 'no sampled parameters'}",
            markup=False,
            highlight=False,
        )
    if spec is not None:
        from maml_tune.search.spec import load_spec

        loaded = load_spec(spec, registry(ctx))
        family_name = family_name or loaded.family
        settings.update(family_settings(loaded.family_options))
        settings.update(loaded.fixed)
    settings.update(parse_sets(sets))
    if iterations is not None:
        settings["train.iterations"] = iterations
    if seed is not None:
        settings["train.seed"] = seed
    torch_device = resolve_device(device)
    task_family, config = registry(ctx).configure(family_name or "sinusoid", settings)
    target = out_dir or Path("runs") / f"{task_family.name}-{datetime.now():%Y%m%d-%H%M%S}"

    def save_untested(learner) -> None:
        save_checkpoint(target, learner, config)
        saved.append(target)

    saved: list[Path] = []
    try:
        with training_progress(ctx) as (prepare_progress, callbacks):
            task_family.prepare(prepare_progress)
            run = train_and_test(config, task_family, torch_device, callbacks, trained=save_untested)
    except (KeyboardInterrupt, MamlTuneError) as exc:
        if not saved:
            raise
        # The weights are safe; say where, and how to get the meta-test that did not finish.
        interrupted = isinstance(exc, KeyboardInterrupt)
        why = "interrupted" if interrupted else str(exc).strip().splitlines()[0]
        error = Interrupted if interrupted else MamlTuneError
        raise error(
            f"{why} during the meta-test; the meta-trained checkpoint is in {target}"
            f" (no test metrics): maml-tune evaluate {target}"
        ) from exc
    summary = run.summary
    if from_study is not None:
        origin = {"study": source.study, "trial": source.trial, "storage": mask_url(storage_url(storage))}
        summary = dataclasses.replace(summary, retrained_from=origin)
    save_checkpoint(target, run.learner, config, summary)
    out.print(_results_table(f"{task_family.name}: meta-test", run.test))
    out.print(
        f"checkpoint: {target}  ({summary.iterations} iterations, {summary.wall_seconds:.1f} s, "
        f"{summary.tasks_per_sec:,.0f} tasks/s, {summary.strategy} on {torch_device})"
    )


def evaluate_command(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory written by train.")],
    tasks: Annotated[
        int | None,
        typer.Option("--tasks", min=1, help="Held-out test tasks (default: the config's eval_tasks)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=0, help="Inner steps (default: the config's test-time steps)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the test tasks (default: the config's).")
    ] = None,
    query_norm: Annotated[
        QueryNorm | None, query_norm_option("the mode the checkpoint was trained with")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="fp32, bf16 or fp16 (default: the precision it was trained in)."),
    ] = None,
    n_way: Annotated[
        int | None,
        typer.Option(
            "--n-way",
            min=2,
            help="Classes per test task (default: the trained N; another N needs arch.head zero or shared).",
        ),
    ] = None,
    k_shot: Annotated[
        int | None,
        typer.Option("--k-shot", min=1, help="Support examples per class (default: the trained K)."),
    ] = None,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Meta-test a checkpoint: query loss (and accuracy) before and after adaptation, with 95% intervals."""
    from maml_tune.core.checkpoint import load_checkpoint
    from maml_tune.core.device import resolve_device
    from maml_tune.core.run import meta_test

    torch_device = resolve_device(device)
    loaded = load_checkpoint(checkpoint, torch_device)
    config = loaded.config
    overrides = {"train.precision": precision, "family.n_way": n_way, "family.k_shot": k_shot}
    config = config.override({key: value for key, value in overrides.items() if value is not None})
    task_family = registry(ctx).family_of(config)
    if n_way is not None:
        loaded.learner.resized(n_way)  # a fixed head refuses another N before any data is read
    with training_progress(ctx) as (prepare_progress, _):
        task_family.prepare(prepare_progress)
    learner = loaded.learner.resized(task_family.output_size)
    with work_progress(ctx, "meta-test") as report:
        result = meta_test(
            learner, config, task_family, torch_device, tasks=tasks, steps=steps, seed=seed,
            query_norm=None if query_norm is None else query_norm.value, progress=report,
        )
    shape = {"n_way": n_way, "k_shot": k_shot}
    shape = {key: value for key, value in shape.items() if value is not None}
    if as_json:
        print_json({"family": config.family, "checkpoint": str(checkpoint), **shape, **result.to_dict()})
    else:
        told = "".join(f", {key.replace('_', '-')} {value}" for key, value in shape.items())
        out.print(_results_table(f"{config.family}: meta-test of {checkpoint}{told}", result))


def bench(
    ctx: typer.Context,
    family: Annotated[str, typer.Option("--family", help="Task family.")] = "sinusoid",
    sets: SetOption = None,
    meta_batch: Annotated[int | None, typer.Option("--meta-batch", min=1)] = None,
    inner_steps: Annotated[int | None, typer.Option("--inner-steps", min=1)] = None,
    first_order: Annotated[bool, typer.Option("--first-order", help="First-order MAML.")] = False,
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="auto, vmap, loop or batched (default: the config's, auto)."),
    ] = None,
    task_chunk: Annotated[
        int | None,
        typer.Option("--task-chunk", min=0, help="Tasks back-propagated at once by vmap/batched (0: all)."),
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast forward passes).")
    ] = None,
    device: DeviceOption = "auto",
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="Timed seconds after warm-up.")] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Measure meta-training throughput (median tasks/s over timed windows) and peak memory."""
    from maml_tune.core.bench import measure_throughput
    from maml_tune.core.device import resolve_device
    from maml_tune.core.strategies import choose

    overrides = parse_sets(sets)
    if meta_batch is not None:
        overrides["train.meta_batch"] = meta_batch
    if inner_steps is not None:
        overrides["algo.inner_steps"] = inner_steps
    if first_order:
        overrides["algo.first_order"] = True
    if strategy is not None:
        overrides["train.strategy"] = strategy
    if task_chunk is not None:
        overrides["train.task_chunk"] = task_chunk
    if precision is not None:
        overrides["train.precision"] = precision
    torch_device = resolve_device(device)
    task_family, config = registry(ctx).configure(family, overrides)
    with training_progress(ctx) as (prepare_progress, _):
        task_family.prepare(prepare_progress)
    t = config.train
    reason = choose(config.arch, torch_device, config.algo, t.strategy, t.task_chunk).reason
    with work_progress(ctx, "bench windows") as report:
        result = measure_throughput(config, task_family, torch_device, seconds, progress=report)
    requested = config.train.strategy
    if as_json:
        print_json(
            {
                "family": family,
                "requested_strategy": requested,
                "strategy_reason": reason,
                **result.to_dict(),
            }
        )
        return
    table = Table(title=Text(f"maml-tune bench: {family}"))
    columns = (
        "strategy",
        "device",
        "precision",
        "meta-batch",
        "task chunk",
        "inner steps",
        "order",
        "tasks/s",
        "peak RSS MiB",
    )
    if result.peak_gpu_mb is not None:
        columns += ("peak GPU MiB",)
    for column in columns:
        table.add_column(column, justify="right")
    order = "first" if result.first_order else "second"
    if result.second_order_steps is not None and not result.first_order:
        order += f" (last {result.second_order_steps})"
    row = [
        f"{result.strategy}{' (auto)' if requested == 'auto' else ''}",
        result.device,
        result.precision,
        str(result.meta_batch),
        str(result.task_chunk or "all"),
        str(result.inner_steps) + (" ckpt" if result.checkpoint_inner else ""),
        order,
        f"{result.tasks_per_sec:,.0f}",
        f"{result.peak_rss_mb:,.0f}",
    ]
    if result.peak_gpu_mb is not None:
        row.append(f"{result.peak_gpu_mb:,.0f}")
    table.add_row(*row)
    table.caption = f"strategy: {reason}; override with --strategy"
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate_command)
    app.command("bench")(bench)
