"""The ``maml-tune`` command: a Typer app whose group turns library errors into one line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup, TyperOption
from typer.exceptions import TyperException

from maml_tune import __version__
from maml_tune.cli._common import err
from maml_tune.cli._logs import STEADY_SECONDS, LogFormat
from maml_tune.errors import MamlTuneError


def _flag_type(self: TyperOption, ctx) -> str | None:
    # Typer 0.29 labels every flag "<bool>" in help (``--debug <bool>``), as if it took a value.
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type


class _Group(TyperGroup):
    """Prints a :class:`MamlTuneError` as ``error: …`` on stderr and exits with its code
    (2 for usage errors, 1 otherwise); the traceback appears only with ``--debug``."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MamlTuneError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Like Typer's, but a usage error (bad option value, unknown option, …) is one line
        ``error: …`` on stderr with exit code 2, instead of a multi-line box."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError:  # bare ``maml-tune`` / ``maml-tune studies``: show the help
            return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
        except TyperException as exc:
            lines = [line.strip() for line in exc.format_message().splitlines() if line.strip()]
            message = " ".join(lines) or type(exc).__name__
            context = getattr(exc, "ctx", None)
            if context is not None:
                message += f" (see: {context.command_path} --help)"
            err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[red]error:[/red] aborted", markup=True, highlight=False)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="maml-tune",
    help="Automatic hyperparameter search for MAML (Model-Agnostic Meta-Learning).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maml-tune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    plugins_dir: Annotated[
        str | None,
        typer.Option(
            "--plugins-dir",
            envvar="MAML_TUNE_PLUGINS_DIR",
            help="Folder of local task-family plugins (*.py). Default: ./plugins",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="MAML_TUNE_DEBUG", help="Show tracebacks for errors.")
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="MAML_TUNE_LOG_FORMAT",
            help="Progress as a live view (rich), timestamped lines (text) or JSON lines (json); "
            "auto: rich on a terminal, else text.",
        ),
    ] = LogFormat.auto,
    log_interval: Annotated[
        float,
        typer.Option(
            "--log-interval",
            envvar="MAML_TUNE_LOG_INTERVAL",
            min=0.0,
            help="Seconds at least between repeated progress lines of --log-format text|json.",
        ),
    ] = STEADY_SECONDS,
    quiet: Annotated[
        bool, typer.Option("--quiet", envvar="MAML_TUNE_QUIET", help="No progress; results and errors only.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    ctx.obj = {
        "plugins_dir": plugins_dir,
        "debug": debug,
        "log_format": log_format,
        "quiet": quiet,
        "log_interval": log_interval,
    }
    if plugins_dir:  # worker processes started by this command inherit the choice
        os.environ["MAML_TUNE_PLUGINS_DIR"] = plugins_dir


def _register() -> None:
    from maml_tune.cli import dashboard, plugins, predict, search, studies, train

    train.register(app)
    plugins.register(app)
    predict.register(app)
    search.register(app)
    studies.register(app)
    dashboard.register(app)


_register()


def main() -> None:
    app()
