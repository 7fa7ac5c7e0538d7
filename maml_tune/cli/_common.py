"""Helpers shared by the commands: consoles, option types, ``--set`` parsing, JSON output."""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from maml_tune.core.config import QUERY_NORMS
from maml_tune.errors import ConfigError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        envvar="MAML_TUNE_DEVICE",
        help="auto, cpu, cuda or cuda:N (auto picks CUDA when present).",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a setting: KEY=VALUE, e.g. algo.inner_lr=0.05 or family.k_shot=5 (repeatable).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print plain JSON on stdout.")]


QueryNorm = enum.Enum("QueryNorm", {name: name for name in QUERY_NORMS}, type=str)
"""The choices of ``--query-norm`` (``maml_tune.core.config.QUERY_NORMS``)."""


def query_norm_option(default_text: str):
    """``--query-norm``: how batch-statistics norms treat the query images after adaptation."""
    return typer.Option(
        "--query-norm",
        help="support (normalise queries with the support set's statistics: each prediction "
        "independent of the others) or transductive (the query batch's own statistics, as in "
        f"Finn et al.). Default: {default_text}.",
    )


QUERY_NORM_TEXT = {
    "support": "normalised with the support set's statistics",
    "transductive": "normalised with the query batch's statistics (transductive)",
}


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": "1", "c": "x"}``; an item without ``=`` is a usage error."""
    parsed: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        parsed[key.strip()] = value.strip()
    return parsed


@contextmanager
def live_progress(progress: Any) -> Iterator[Any]:
    """Show a rich ``progress`` display; when the command fails it is cleared (not printed),
    so the one-line error stands alone on stderr."""
    with progress:
        try:
            yield progress
        except BaseException:
            progress.live.transient = True
            raise


def at_least(minimum: float, what: str = "an integer", maximum: float | None = None):
    """Option callback: refuse values below ``minimum`` (or above ``maximum``), and NaN or
    infinity, naming the value (a usage error, exit 2)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if not math.isfinite(value) or value < minimum:
            raise typer.BadParameter(f"expected {what} >= {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise typer.BadParameter(f"expected {what} <= {maximum:g}, got {value:g}")
        return value

    return check


def printable(value: str | None) -> str | None:
    """Option callback: refuse text with newlines or control characters (a usage error)."""
    if value is not None and any(not ch.isprintable() for ch in value):
        raise typer.BadParameter(f"expected printable text (no newline or control code), got {value!r}")
    return value


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_format(ctx: typer.Context) -> str:
    """How this invocation reports progress: ``rich``, ``text``, ``json`` or ``quiet``
    (``--quiet``, ``--log-format``; see :mod:`maml_tune.cli._logs`)."""
    from maml_tune.cli._logs import LogFormat, resolve_format

    options = ctx.find_root().obj or {}
    if options.get("quiet"):
        return "quiet"
    return resolve_format(options.get("log_format", LogFormat.auto), err.file).value


def progress_log(ctx: typer.Context):
    """The :class:`~maml_tune.cli._logs.ProgressLog` of a ``text`` or ``json`` invocation."""
    from maml_tune.cli._logs import STEADY_SECONDS, ProgressLog

    options = ctx.find_root().obj or {}
    return ProgressLog(
        err.file, as_json=progress_format(ctx) == "json", interval=options.get("log_interval", STEADY_SECONDS)
    )


@contextmanager
def work_progress(ctx: typer.Context, what: str) -> Iterator[Any]:
    """``report(done, total)`` for one piece of work (``what``: "meta-test" …): a rich bar on a
    terminal, steady log lines otherwise, nothing with ``--quiet``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    chosen = progress_format(ctx)
    if chosen == "quiet":
        yield lambda done, total: None
    elif chosen == "rich":
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        )
        with live_progress(bar):
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        log = progress_log(ctx)
        yield lambda done, total: log.steady(
            what, done, total, what, f"{done}/{total}", tasks_done=done, tasks_total=total
        )


def registry(ctx: typer.Context):
    """The family registry for this invocation (honours ``--plugins-dir``)."""
    from maml_tune.families.registry import Registry

    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    if "registry" not in root.obj:
        root.obj["registry"] = Registry(root.obj.get("plugins_dir"))
    return root.obj["registry"]


def fmt(value: float | None, ci: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}g}"
    return text if ci is None else f"{text} ± {ci:.2g}"


def params_text(params: dict[str, Any]) -> str:
    """``inner_lr=0.01, steps=5``: the last part of each parameter's name, floats short."""
    return ", ".join(f"{k.split('.')[-1]}={fmt(v) if isinstance(v, float) else v}" for k, v in params.items())


def given_up_text(entry: dict[str, Any]) -> str:
    """One line for a configuration given up on (``results.given_up_trials``): which, and why."""
    return (
        f"gave up on the configuration of trial {entry['first_trial']} ({params_text(entry['params'])}): "
        f"its worker was lost in all {entry['runs']} runs, the last trial {entry['number']} "
        f"({entry['reason']}); a new trial took its place"
    )
