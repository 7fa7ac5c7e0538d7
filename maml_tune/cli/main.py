"""The ``maml-tune`` command: a Typer app whose group turns library errors into one line."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from maml_tune import __version__
from maml_tune.cli._common import err
from maml_tune.errors import MamlTuneError


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
            "--plugins-dir", envvar="MAML_TUNE_PLUGINS_DIR",
            help="Folder of local task-family plugins (*.py). Default: ./plugins",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="MAML_TUNE_DEBUG", help="Show tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    ctx.obj = {"plugins_dir": plugins_dir, "debug": debug}
    if plugins_dir:  # worker processes started by this command inherit the choice
        os.environ["MAML_TUNE_PLUGINS_DIR"] = plugins_dir


def _register() -> None:
    from maml_tune.cli import plugins, predict, search, studies, train

    train.register(app)
    plugins.register(app)
    predict.register(app)
    search.register(app)
    studies.register(app)


_register()


def main() -> None:
    app()
