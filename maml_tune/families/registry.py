"""One registry of task families from three sources.

1. Built-in families, declared under the entry-point group ``maml_tune.task_families``
   by maml-tune's own distribution — exactly like third-party ones.
2. Installed packages declaring that entry-point group.
3. ``*.py`` files in a local plugins folder (``./plugins`` by default), each imported
   under its own module name ``maml_tune_plugins.<stem>``; the file ``NAME.py`` must
   define a :class:`TaskFamily` subclass whose ``name`` is ``NAME``. Files starting with
   ``_`` are skipped (use them for helpers). The folder is never put on ``sys.path``.

Discovery (:meth:`Registry.discover`) only lists what exists, importing nothing; loading
imports each plugin on its own and records any failure (import error, missing contract
method, wrong types) as an error naming the plugin, its source and the cause, so one
broken plugin never takes the others (or the CLI) down. Two plugins with the same name
are both marked as errors naming both sources. ``MAML_TUNE_LOAD_PLUGINS``
(comma-separated names; empty means none) limits what is loaded from sources 2 and 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import os
import re
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from maml_tune.core.config import RunConfig, coerce_value, split_family
from maml_tune.core.tasks import KINDS
from maml_tune.errors import FamilyError, MamlTuneError, PluginError
from maml_tune.families._contract import TaskFamily

ENTRY_POINT_GROUP = "maml_tune.task_families"
BUILTIN_DISTRIBUTION = "maml-tune"
LOCAL_MODULE_PREFIX = "maml_tune_plugins"
PLUGINS_DIR_ENV = "MAML_TUNE_PLUGINS_DIR"
LOAD_PLUGINS_ENV = "MAML_TUNE_LOAD_PLUGINS"
DEFAULT_PLUGINS_DIR = "plugins"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from.

    ``kind`` is ``builtin``, ``package`` or ``local``; ``distribution`` and ``version`` name
    the installed distribution (sources 1 and 2); ``path`` is the file of a local plugin;
    ``target`` is the entry point's ``module:attr`` (or the file path).
    """

    kind: str
    target: str
    distribution: str | None = None
    version: str | None = None
    path: str | None = None

    @property
    def origin(self) -> str:
        """``maml-tune 0.1.0``, ``my-families 1.2`` or the local file path."""
        if self.kind == "local":
            return self.path or self.target
        return f"{self.distribution} {self.version}"

    def __str__(self) -> str:
        if self.kind == "builtin":
            return "built-in"
        if self.kind == "package":
            return f"package {self.origin}"
        return f"local file {self.origin}"


@dataclass
class Plugin:
    """A discovered plugin; after loading, ``family`` or ``error`` is set."""

    name: str
    source: PluginSource
    family: type[TaskFamily] | None = None
    error: str | None = None
    loaded: bool = False
    _loader: Any = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.family is not None and self.error is None

    @property
    def status(self) -> str:
        """``ok``, the one-line error, or ``not loaded``."""
        if self.error is not None:
            return self.error
        return "ok" if self.ok else "not loaded"

    @property
    def kind(self) -> str | None:
        """The family's kind (``regression`` / ``classification``) once loaded."""
        return self.family.kind if self.family is not None else None

    @property
    def description(self) -> str | None:
        return self.family.description if self.family is not None else None

    def describe_error(self) -> str:
        return f"task family {self.name!r} ({self.source}) is broken: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form, as ``maml-tune plugins list --json`` prints it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": str(self.source),
            "source_kind": self.source.kind,
            "origin": self.source.origin,
            "distribution": self.source.distribution,
            "version": self.source.version,
            "path": self.source.path,
            "target": self.source.target,
            "status": "ok" if self.ok else "error",
            "error": self.error,
            "description": self.description,
        }


def plugins_dir_from_env(explicit: str | os.PathLike | None = None) -> Path:
    """The local plugins folder: ``explicit``, else ``$MAML_TUNE_PLUGINS_DIR``, else ``./plugins``."""
    return Path(explicit or os.environ.get(PLUGINS_DIR_ENV) or DEFAULT_PLUGINS_DIR)


def allowed_from_env() -> set[str] | None:
    """Names allowed by ``MAML_TUNE_LOAD_PLUGINS`` (``None``: no limit; empty set: none)."""
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


class Registry:
    """Discovers and loads task families. Create one per command; it caches what it loaded.

    ``plugins_dir`` defaults to ``$MAML_TUNE_PLUGINS_DIR`` or ``./plugins``; ``allowed``
    (names loaded from packages and local files) defaults to ``$MAML_TUNE_LOAD_PLUGINS``.
    With ``use_env=False`` the environment is ignored.
    """

    def __init__(
        self,
        plugins_dir: str | os.PathLike | None = None,
        allowed: set[str] | None = None,
        *,
        use_env: bool = True,
    ):
        self.plugins_dir = (
            plugins_dir_from_env(plugins_dir) if use_env else Path(plugins_dir or DEFAULT_PLUGINS_DIR)
        )
        self.allowed = allowed_from_env() if (allowed is None and use_env) else allowed
        self._discovered: list[Plugin] | None = None

    def discover(self) -> list[Plugin]:
        """Every plugin that exists, without importing any; duplicates are marked as errors.

        Built-ins come first, then packages, then local files (sorted by file name).
        """
        if self._discovered is None:
            self._discovered = self._scan()
        return self._discovered

    def _scan(self) -> list[Plugin]:
        found: list[Plugin] = []
        try:
            eps = list(entry_points(group=ENTRY_POINT_GROUP))
        except Exception as exc:  # broken metadata of some installed distribution
            eps = []
            found.append(
                Plugin(
                    "<entry points>",
                    PluginSource("package", ENTRY_POINT_GROUP, "?", "?"),
                    error=f"cannot read installed entry points: {type(exc).__name__}: {exc}",
                )
            )
        packages: list[Plugin] = []
        for ep in eps:
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            builtin = dist_name is not None and _normalise(dist_name) == BUILTIN_DISTRIBUTION
            source = PluginSource(
                "builtin" if builtin else "package", ep.value, dist_name or "unknown", version or "?"
            )
            (found if builtin else packages).append(Plugin(ep.name, source, _loader=ep.load))
        found.extend(sorted(packages, key=lambda p: (p.name, p.source.distribution or "")))
        if self.plugins_dir.is_dir():
            for path in sorted(self.plugins_dir.glob("*.py")):
                if path.name.startswith(("_", ".")) or not path.is_file():
                    continue
                source = PluginSource("local", str(path), path=str(path))
                found.append(Plugin(path.stem, source, _loader=_file_loader(path)))
        if self.allowed is not None:
            found = [p for p in found if p.source.kind == "builtin" or p.name in self.allowed]
        by_name: dict[str, list[Plugin]] = {}
        for plugin in found:
            by_name.setdefault(plugin.name, []).append(plugin)
        for name, group in by_name.items():
            if len(group) > 1:
                sources = " and ".join(str(p.source) for p in group)
                for plugin in group:
                    plugin.error = f"duplicate family name {name!r}: defined by {sources}"
        return found

    def plugins(self) -> list[Plugin]:
        """All plugins, each loaded on its own (failures recorded in ``Plugin.error``)."""
        plugins = self.discover()
        for plugin in plugins:
            _load(plugin)
        return plugins

    def names(self) -> list[str]:
        """Names of the families that load without error."""
        return sorted({p.name for p in self.plugins() if p.ok})

    def plugin(self, name: str) -> Plugin:
        """The loaded plugin ``name`` (perhaps broken); unknown names raise :class:`FamilyError`.

        Only this plugin is imported, so a broken one elsewhere cannot get in the way.
        """
        candidates = [p for p in self.discover() if p.name == name]
        if not candidates:
            known = ", ".join(sorted({p.name for p in self.discover()})) or "none"
            hint = ""
            if self.allowed is not None:
                hint = f"; ${LOAD_PLUGINS_ENV} limits plugins to: {', '.join(sorted(self.allowed)) or 'none'}"
            raise FamilyError(f"unknown task family {name!r} (available: {known}){hint}")
        plugin = candidates[0]
        _load(plugin)
        return plugin

    def get(self, name: str) -> type[TaskFamily]:
        """The family class ``name``; an unknown or broken family raises :class:`FamilyError`."""
        plugin = self.plugin(name)
        if not plugin.ok:
            raise PluginError(plugin.describe_error())
        return plugin.family

    def create(self, name: str, options: dict[str, Any] | None = None) -> TaskFamily:
        """An instance of family ``name`` with validated ``options``.

        Invalid options raise :class:`~maml_tune.errors.ConfigError`; any other exception
        from the plugin's constructor becomes a :class:`PluginError` naming it.
        """
        family = self.get(name)
        try:
            instance = family(options or {})
        except MamlTuneError:
            raise
        except Exception as exc:
            plugin = self.plugin(name)
            raise PluginError(
                f"task family {name!r} ({plugin.source}) failed to initialise: {type(exc).__name__}: {exc}"
            ) from exc
        return instance

    def configure(self, name: str, settings: Mapping[str, Any]) -> tuple[TaskFamily, RunConfig]:
        """Family ``name`` and its run config from dotted ``settings``: the ``family.*`` ones
        are the family's options, the rest override its :meth:`~TaskFamily.run_config`."""
        options, overrides = split_family(settings)
        family = self.create(name, options)
        return family, family.run_config(overrides)

    def family_of(self, config: RunConfig) -> TaskFamily:
        """The family instance ``config`` was made with (its recorded name and options)."""
        return self.create(config.family, dict(config.family_options))


def _file_loader(path: Path):
    def load() -> Any:
        module_name = f"{LOCAL_MODULE_PREFIX}.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        classes = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, TaskFamily)
            and obj is not TaskFamily
            and obj.__module__ == module_name
        ]
        named = [cls for cls in classes if getattr(cls, "name", None) == path.stem]
        if len(named) != 1:
            found = ", ".join(repr(getattr(c, "name", "?")) for c in classes) or "none"
            raise PluginError(f"expected one TaskFamily subclass with name = {path.stem!r}, found {found}")
        return named[0]

    return load


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _HardExit(Exception):
    def __str__(self) -> str:
        return f"called os._exit({self.args[0]}) while being imported"


@contextlib.contextmanager
def _no_hard_exit() -> Iterator[None]:
    """``os._exit`` raises instead while a plugin is imported: it would end the CLI silently,
    skipping every handler (the study's trials could not even be closed)."""

    def refuse(code: int) -> None:
        raise _HardExit(code)

    hard_exit, os._exit = os._exit, refuse
    try:
        yield
    finally:
        os._exit = hard_exit


def _load(plugin: Plugin) -> None:
    """Import ``plugin`` once and check its class; never lets a plugin's exception escape."""
    if plugin.loaded or plugin.error is not None:
        return
    plugin.loaded = True
    try:
        with _no_hard_exit():
            family = plugin._loader()
        problem = contract_problem(family)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a plugin may raise anything on import
        problem = str(exc) if isinstance(exc, (PluginError, _HardExit)) else _one_line(exc)
        family = None
    if problem is None and family.name != plugin.name:
        problem = f"entry point {plugin.name!r} loads a family named {family.name!r}"
    if problem is not None:
        plugin.error, plugin.family = problem, None
    else:
        plugin.family = family


def contract_problem(family: Any) -> str | None:
    """Why ``family`` does not satisfy the :class:`TaskFamily` contract, or ``None``.

    Checks what can be checked without instantiating: the base class, the abstract
    methods, the class attributes, and that ``Options`` is a frozen dataclass whose every
    field has a type maml-tune can parse and a default of that type.
    """
    if not (inspect.isclass(family) and issubclass(family, TaskFamily)):
        return f"{family!r} is not a TaskFamily subclass"
    if inspect.isabstract(family):
        missing = ", ".join(sorted(family.__abstractmethods__))
        return f"missing contract method(s): {missing}"
    for attr in ("name", "description", "kind"):
        if not isinstance(getattr(family, attr, None), str):
            return f"class attribute {attr!r} must be a string, got {getattr(family, attr, None)!r}"
    if not NAME_PATTERN.match(family.name):
        return f"name must be lower-case letters, digits, '_' or '-', got {family.name!r}"
    if family.kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {family.kind!r}"
    options = family.Options
    if not (inspect.isclass(options) and is_dataclass(options) and options.__dataclass_params__.frozen):
        return "Options must be a frozen dataclass"
    try:
        hints = typing.get_type_hints(options)
    except Exception as exc:
        return f"Options: cannot resolve the option types ({_one_line(exc)})"
    for field in dataclasses.fields(options):
        if field.default is dataclasses.MISSING:
            return f"option {field.name!r} has no default (declare it with option(default, help))"
        try:
            coerce_value(field.default, hints[field.name], f"option {field.name!r}")
        except MamlTuneError as exc:
            return f"default of {exc}"
    return None
