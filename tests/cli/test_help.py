"""Every command's help renders at 80 columns, and flags read as flags."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from maml_tune.cli.main import app


def _command_paths(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))


COMMANDS = [()] + list(_command_paths(typer.main.get_command(app)))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "maml-tune")
def test_help_fits_80_columns_without_bool_placeholders(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout
