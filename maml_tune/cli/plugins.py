"""``maml-tune plugins``: list, inspect, scaffold and check task-family plugins."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from maml_tune.cli._common import JsonOption, SetOption, err, out, parse_sets, print_json, registry
from maml_tune.errors import ConfigError, DataError, MamlTuneError, PluginError

plugins_app = typer.Typer(
    name="plugins",
    help="Task-family plugins: list, inspect, create and check them.",
    no_args_is_help=True,
)


class Kind(str, enum.Enum):
    regression = "regression"
    classification = "classification"


NameArgument = Annotated[str, typer.Argument(help="Task-family name, e.g. spirals.")]


def _call(plugin, what: str, fn, *args):
    """Run a plugin method; any exception it raises becomes a one-line :class:`PluginError`."""
    try:
        return fn(*args)
    except MamlTuneError:
        raise
    except Exception as exc:
        raise PluginError(
            f"task family {plugin.name!r} ({plugin.source}): {what} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


@plugins_app.command("list")
def list_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every discovered task family: name, kind, source and status (ok or the error)."""
    reg = registry(ctx)
    plugins = reg.plugins()
    if as_json:
        print_json([p.to_dict() for p in plugins])
        return
    table = Table(title="maml-tune task families")
    for column in ("name", "kind", "source", "status"):
        table.add_column(column, overflow="fold")
    for plugin in plugins:
        status = "[green]ok[/green]" if plugin.ok else f"[red]error:[/red] {_escape(plugin.error)}"
        table.add_row(plugin.name, plugin.kind or "-", _escape(str(plugin.source)), status)
    table.caption = f"local plugins folder: {reg.plugins_dir}" + (
        "" if reg.plugins_dir.is_dir() else " (absent)"
    )
    out.print(table)


def _escape(text: str | None) -> str:
    from rich.markup import escape

    return escape(text or "")


def _range(row: dict[str, Any]) -> str:
    if row["choices"]:
        return "one of " + ", ".join(map(str, row["choices"]))
    low, high = row["min"], row["max"]
    if low is not None and high is not None:
        return f"[{low}, {high}]"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def _space_text(spec: dict[str, Any]) -> str:
    if spec.get("type") == "categorical":
        text = "{" + ", ".join(map(str, spec.get("choices", []))) + "}"
    else:
        text = f"{spec.get('type')} [{spec.get('low')}, {spec.get('high')}]"
        if spec.get("log"):
            text += " log"
    if spec.get("when"):
        text += "  when " + ", ".join(f"{k}={v}" for k, v in spec["when"].items())
    return text


def _set_by_data(plugin, what: str, fn):
    """``fn()``, or None when it depends on data or options not given here (an image folder's
    channels, a table's columns)."""
    try:
        return _call(plugin, what, fn)
    except (DataError, ConfigError):
        return None


@plugins_app.command("info")
def info(ctx: typer.Context, name: NameArgument, as_json: JsonOption = False) -> None:
    """A family's description, options (types, defaults, ranges), default architecture,
    literature config and default search space."""
    reg = registry(ctx)
    plugin = reg.plugin(name)
    if not plugin.ok:
        raise PluginError(plugin.describe_error())
    family = reg.create(name)
    data = {
        "name": plugin.name,
        "kind": plugin.kind,
        "description": plugin.description,
        "source": str(plugin.source),
        "data": getattr(family, "data", ""),
        "input_shape": _set_by_data(plugin, "input_shape", lambda: list(family.input_shape)),
        "output_size": _set_by_data(plugin, "output_size", lambda: family.output_size),
        "options": [
            {k: v for k, v in row.items() if k != "value"}
            for row in _call(plugin, "describe_options()", family.describe_options)
        ],
        "default_architecture": _call(plugin, "default_architecture()", family.default_architecture),
        "literature_config": _call(plugin, "literature_config()", family.literature_config),
        "default_search_space": _call(plugin, "default_search_space()", family.default_search_space),
    }
    if as_json:
        print_json(data)
        return
    out.print(f"[bold]{data['name']}[/bold] — {_escape(data['description'])}")
    out.print(f"kind: {data['kind']}   source: {_escape(data['source'])}")
    if data["data"]:
        out.print(f"data: {_escape(data['data'])}")
    unknown = "set by the data and options (found when it is read)"
    shape = tuple(data["input_shape"]) if data["input_shape"] else unknown
    size = unknown if data["output_size"] is None else data["output_size"]
    out.print(
        f"input shape: {shape}   output size: {size}"
        + (" (classes per task)" if data["kind"] == "classification" else "")
    )
    options = Table(title=_escape("options (set with --set family.NAME=VALUE or [family.options] in a spec)"))
    for column in ("option", "type", "default", "allowed", "help"):
        options.add_column(column, overflow="fold")
    for row in data["options"]:
        options.add_row(row["name"], row["type"], repr(row["default"]), _range(row), _escape(row["help"]))
    if not data["options"]:
        options.add_row("-", "", "", "", "this family has no options")
    out.print(options)
    arch = ", ".join(f"{k}={v}" for k, v in data["default_architecture"].items())
    out.print(f"default architecture: {arch}")
    literature = ", ".join(f"{k}={v}" for k, v in data["literature_config"].items()) or "-"
    out.print(f"literature config: {literature}")
    space = Table(title="default search space")
    space.add_column("parameter")
    space.add_column("range")
    for key, spec in data["default_search_space"].items():
        space.add_row(key, _escape(_space_text(spec)))
    out.print(space)


def _class_name(name: str) -> str:
    words = "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part)
    return words if words[:1].isalpha() else f"Family{words}"  # an identifier cannot start with a digit


def render_template(name: str, kind: str) -> str:
    """The source of a new plugin ``name`` of ``kind`` (from the packaged templates)."""
    from importlib.resources import files

    template = files("maml_tune.families").joinpath("templates", f"{kind}.py.tmpl").read_text("utf-8")
    return template.replace("{{name}}", name).replace("{{class_name}}", _class_name(name))


@plugins_app.command("new")
def new(
    ctx: typer.Context,
    name: NameArgument,
    kind: Annotated[
        Kind, typer.Option("--kind", help="Regression or classification skeleton.")
    ] = Kind.regression,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a working, documented plugin skeleton NAME.py into the plugins folder."""
    from maml_tune.families.registry import NAME_PATTERN

    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"plugin name {name!r}: expected lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
    reg = registry(ctx)
    target = reg.plugins_dir / f"{name}.py"
    clash = [p for p in reg.discover() if p.name == name and p.source.path != str(target)]
    if clash:
        raise ConfigError(
            f"a task family named {name!r} already exists ({clash[0].source}); choose another name"
        )
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists (use --force to overwrite it)")
    source = render_template(name, kind.value)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    flag = "" if Path(reg.plugins_dir) == Path("plugins") else f" --plugins-dir {reg.plugins_dir}"
    out.print(f"wrote {target} ({kind.value} family {name!r})")
    out.print("next steps:")
    out.print(f"  maml-tune{flag} plugins check {name}")
    out.print(f"  maml-tune{flag} train --family {name} --iterations 200")
    out.print(f"  maml-tune{flag} search --family {name}")


@plugins_app.command("check")
def check(
    ctx: typer.Context,
    name: NameArgument,
    sets: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the conformance suite on a family and print a pass/fail table with each failure's reason.

    Exits with status 1 when any check fails.
    """
    from maml_tune.core.config import FAMILY_PREFIX

    reg = registry(ctx)
    plugin = reg.plugin(name)
    results: list[dict[str, Any]] = []
    if plugin.ok:
        from maml_tune.families.testing import CHECKS, run_conformance

        options = {k.removeprefix(FAMILY_PREFIX): v for k, v in parse_sets(sets).items()}
        family_cls = plugin.family
        results.append({"check": "load", "passed": True, "reason": ""})
        if not as_json:
            err.print(
                f"checking {name} ({plugin.source}): {len(CHECKS) + 1} checks (it loads, then the "
                "conformance suite)…",
                markup=False, highlight=False,
            )
        for result in run_conformance(lambda: family_cls(options)):
            results.append({"check": result.name, "passed": result.passed, "reason": result.reason})
    else:
        from maml_tune.families.testing import CHECKS

        results.append({"check": "load", "passed": False, "reason": plugin.error})
        for check_name in CHECKS:
            reason = "not run: the plugin did not load"
            results.append({"check": check_name, "passed": False, "skipped": True, "reason": reason})
    failed = [r for r in results if not r["passed"]]
    if as_json:
        print_json({"name": name, "source": str(plugin.source), "passed": not failed, "checks": results})
    else:
        table = Table(title=f"conformance of {name} ({_escape(str(plugin.source))})")
        table.add_column("check")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        for row in results:
            verdict = "[green]pass[/green]" if row["passed"] else (
                "[yellow]skip[/yellow]" if row.get("skipped") else "[red]FAIL[/red]"
            )
            table.add_row(row["check"], verdict, _escape(row["reason"]))
        out.print(table)
        passed = len(results) - len(failed)
        out.print(f"{passed}/{len(results)} checks passed" + ("" if failed else f": {name} conforms"))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")

