"""One registry of task families from three sources.

1. Built-in families, declared under the entry-point group ``maml_tune.task_families``
   by maml-tune's own distribution — exactly like third-party ones.
2. Installed packages declaring that entry-point group.
3. ``*.py`` files in a local plugins folder (``./plugins`` by default), each imported
   under its own module name ``maml_tune_plugins.<stem>``; the file ``NAME.py`` must
   define a :class:`TaskFamily` subclass whose ``name`` is ``NAME``.

Discovery (:meth:`Registry.discover`) only lists what exists; loading imports each
plugin on its own and records any failure as an error naming the plugin, its source and
the cause, so one broken plugin never takes the others (or the CLI) down.
``MAML_TUNE_LOAD_PLUGINS`` (comma-separated names; empty means none) limits what is
loaded from sources 2 and 3.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from maml_tune.core.tasks import KINDS
from maml_tune.errors import FamilyError, PluginError
from maml_tune.families._contract import TaskFamily

ENTRY_POINT_GROUP = "maml_tune.task_families"
BUILTIN_DISTRIBUTION = "maml-tune"
LOCAL_MODULE_PREFIX = "maml_tune_plugins"
PLUGINS_DIR_ENV = "MAML_TUNE_PLUGINS_DIR"
LOAD_PLUGINS_ENV = "MAML_TUNE_LOAD_PLUGINS"
DEFAULT_PLUGINS_DIR = "plugins"


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from: ``builtin``, ``package`` (with distribution and version) or ``local``."""

    kind: str
    origin: str
    target: str

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
    _loader: Any = None

    @property
    def ok(self) -> bool:
        return self.family is not None and self.error is None


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
    """Discovers and loads task families. Create one per command; it caches what it loaded."""

    def __init__(
        self, plugins_dir: str | os.PathLike | None = None, allowed: set[str] | None = None,
        *, use_env: bool = True,
    ):
        self.plugins_dir = plugins_dir_from_env(plugins_dir) if use_env else Path(
            plugins_dir or DEFAULT_PLUGINS_DIR
        )
        self.allowed = allowed_from_env() if (allowed is None and use_env) else allowed
        self._plugins: list[Plugin] | None = None

    def discover(self) -> list[Plugin]:
        """Every plugin that exists, without importing any; duplicates are marked as errors."""
        found: list[Plugin] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            if dist is not None and dist_name == BUILTIN_DISTRIBUTION:
                source = PluginSource("builtin", BUILTIN_DISTRIBUTION, ep.value)
            else:
                version = dist.version if dist is not None else "?"
                source = PluginSource("package", f"{dist_name} {version}", ep.value)
            found.append(Plugin(ep.name, source, _loader=ep.load))
        if self.plugins_dir.is_dir():
            for path in sorted(self.plugins_dir.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                source = PluginSource("local", str(path), str(path))
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
        if self._plugins is None:
            self._plugins = self.discover()
            for plugin in self._plugins:
                if plugin.error is None:
                    _load(plugin)
        return self._plugins

    def names(self) -> list[str]:
        return sorted({p.name for p in self.plugins() if p.ok})

    def get(self, name: str) -> type[TaskFamily]:
        """The family class ``name``; an unknown or broken family raises :class:`FamilyError`."""
        candidates = [p for p in self.discover() if p.name == name]
        if not candidates:
            known = ", ".join(self.names()) or "none"
            raise FamilyError(f"unknown task family {name!r} (available: {known})")
        plugin = candidates[0]
        if plugin.error is None:
            _load(plugin)
        if not plugin.ok:
            raise PluginError(f"task family {name!r} ({plugin.source}) is broken: {plugin.error}")
        return plugin.family

    def create(self, name: str, options: dict[str, Any] | None = None) -> TaskFamily:
        """An instance of family ``name`` with validated ``options``."""
        return self.get(name)(options or {})


def _file_loader(path: Path):
    def load() -> Any:
        module_name = f"{LOCAL_MODULE_PREFIX}.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        classes = [
            obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, TaskFamily) and obj is not TaskFamily
            and obj.__module__ == module_name
        ]
        named = [cls for cls in classes if getattr(cls, "name", None) == path.stem]
        if len(named) != 1:
            found = ", ".join(repr(getattr(c, "name", "?")) for c in classes) or "none"
            raise PluginError(
                f"expected one TaskFamily subclass with name = {path.stem!r}, found {found}"
            )
        return named[0]

    return load


def _load(plugin: Plugin) -> None:
    try:
        family = plugin._loader()
        problem = contract_problem(family)
    except Exception as exc:  # a plugin may raise anything on import; record it, never crash
        problem = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        family = None
    if problem is None and family.name != plugin.name:
        problem = f"entry point {plugin.name!r} loads a family named {family.name!r}"
    if problem is not None:
        plugin.error, plugin.family = problem, None
    else:
        plugin.family = family


def contract_problem(family: Any) -> str | None:
    """Why ``family`` does not satisfy the :class:`TaskFamily` contract, or ``None``."""
    if not (inspect.isclass(family) and issubclass(family, TaskFamily)):
        return f"{family!r} is not a TaskFamily subclass"
    if inspect.isabstract(family):
        missing = ", ".join(sorted(family.__abstractmethods__))
        return f"missing contract method(s): {missing}"
    for attr in ("name", "description", "kind"):
        if not isinstance(getattr(family, attr, None), str):
            return f"class attribute {attr!r} must be a string"
    if family.kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {family.kind!r}"
    if not (is_dataclass(family.Options) and family.Options.__dataclass_params__.frozen):
        return "Options must be a frozen dataclass"
    return None


def load_family(name: str, options: dict[str, Any] | None = None, plugins_dir: str | None = None):
    """Shortcut: an instance of family ``name`` from a fresh :class:`Registry`."""
    return Registry(plugins_dir).create(name, options)
