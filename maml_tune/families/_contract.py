"""The task-family contract: what every family (built-in or plugin) provides.

A family describes a *distribution over tasks* (e.g. all sinusoids with amplitude in
[0.1, 5]) and samples batches of tasks from it. The engine never sees the family itself,
only the :class:`~maml_tune.core.tasks.TaskBatch` it returns.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from maml_tune.core.config import RunConfig, coerce_value, family_settings, type_name
from maml_tune.core.tasks import TaskBatch
from maml_tune.errors import ConfigError, FamilyError, MamlTuneError

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, what)``: how a family reports slow one-off work (e.g. decoding data)."""

_GUARDED = (
    "input_shape",
    "output_size",
    "default_architecture",
    "sample",
    "prepare",
    "preprocess",
    "literature_config",
    "default_search_space",
)
"""What the engine calls on a family: an exception that is not a maml-tune error becomes a
:class:`FamilyError` naming the family and the method, so a plugin's bug is one line, not a crash."""


def _guarded(name: str, function: Callable) -> Callable:
    if getattr(function, "_family_guard", False):
        return function

    @functools.wraps(function)
    def call(self, *args, **kwargs):
        try:
            return function(self, *args, **kwargs)
        except (MamlTuneError, torch.OutOfMemoryError):  # out of memory is the device's, not a bug
            raise
        except Exception as exc:
            shown = ", ".join(repr(a) for a in args if isinstance(a, (str, int, float)))
            where = name if name in ("input_shape", "output_size") else f"{name}({shown})"
            raise FamilyError(
                f"task family {getattr(self, 'name', type(self).__name__)!r} failed in {where}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc

    call._family_guard = True
    return call


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a family that has none."""


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A typed family option: ``n_way: int = option(5, "classes per task", min=2)``."""
    return dataclasses.field(
        default=default, metadata={"help": help, "min": min, "max": max, "choices": choices}
    )


class TaskFamily(abc.ABC):
    """A distribution over tasks that MAML meta-learns across.

    Subclasses set the class attributes ``name`` (unique, lower-case, ``[a-z0-9_-]``),
    ``description`` (one line), ``kind`` (``"regression"`` or ``"classification"``) and
    ``Options`` (a frozen dataclass whose fields, declared with :func:`option`, are the
    family's typed options with their defaults).

    ``self.options`` is an instance of ``Options`` holding the validated option values
    (``self.options.k_shot``); the constructor sets it and it never changes.

    Lifecycle: the registry instantiates the family with validated options; the caller
    then calls :meth:`prepare` once (it may be slow: loading or decoding data) and then
    :meth:`sample` as often as it likes. A family instance must not change after
    :meth:`prepare`: sampling depends only on its options and the generator passed in.

    :meth:`sample` returns a ``TaskBatch`` (``from maml_tune.families import TaskBatch``):
    ``TaskBatch(support_x, support_y, query_x, query_y)`` with inputs ``(T, S, *input_shape)``
    and ``(T, Q, *input_shape)`` float32, targets ``(T, S, output_size)`` float32 for
    regression or ``(T, S)`` int64 labels in ``[0, output_size)`` for classification.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    data: ClassVar[str] = ""
    """Where the family's data comes from and the layout it expects (``plugins info`` shows it;
    empty for families that generate their tasks)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _GUARDED:
            member = vars(cls).get(name)
            if isinstance(member, property) and member.fget is not None:
                setattr(cls, name, property(_guarded(name, member.fget), doc=member.__doc__))
            elif callable(member):
                setattr(cls, name, _guarded(name, member))

    def __init__(self, options: Any = None):
        if options is None or isinstance(options, Mapping):
            options = parse_options(type(self), options or {})
        self.options = options

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example (e.g. ``(1,)`` or ``(1, 28, 28)``). Fixed by the options."""

    @property
    @abc.abstractmethod
    def output_size(self) -> int:
        """Regression: target dimension. Classification: number of classes per task (N-way)."""

    @abc.abstractmethod
    def default_architecture(self) -> dict[str, Any]:
        """The architecture the literature uses for this family, as ``ArchConfig`` fields.

        Called when a run does not specify one. Must be pure: no I/O, no state change.
        """

    @abc.abstractmethod
    def sample(self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device) -> TaskBatch:
        """Sample ``n_tasks`` tasks of ``split`` (``"train"``, ``"val"`` or ``"test"``).

        Called every meta-iteration (``"train"``) and for validation / test sets. The
        ``generator`` lives on ``device`` (the run's: a CUDA generator on a GPU), so draw with
        ``torch.rand(..., generator=generator, device=device)``. Must:
        draw all randomness from ``generator`` (same generator state → same tasks), put
        every tensor on ``device``, return float32 inputs, keep the splits disjoint (no
        task of one split can be drawn in another), and work in one batched call (no
        per-task Python loop on the hot path). Must not mutate the family.
        """

    def prepare(self, progress: ProgressCallback | None = None) -> None:  # noqa: B027 - optional hook, no-op default
        """Load whatever the family needs (data sets, caches). Called once before sampling.

        Raises :class:`~maml_tune.errors.DataError` with what is expected where data is missing.
        """

    def preprocess(self, images: list[str]) -> torch.Tensor:
        """Optional, for image families: the files ``images`` (paths) as inputs
        ``(len(images), *input_shape)`` float32, exactly as :meth:`sample` presents images.

        Called by ``maml-tune predict`` after :meth:`prepare`, on a user's own support and
        query folders; a family without it cannot be used with ``predict``.
        """
        raise NotImplementedError(f"task family {self.name!r} does not read image files")

    @classmethod
    def reads_images(cls) -> bool:
        """Whether the family implements :meth:`preprocess`."""
        return cls.preprocess is not TaskFamily.preprocess

    def literature_config(self) -> dict[str, Any]:
        """The published hyperparameters for this family, as dotted run-config overrides.

        Used for the baseline trial of a search and as the defaults of ``maml-tune train``.
        """
        return {}

    def default_search_space(self) -> dict[str, dict[str, Any]]:
        """The search space a study uses when its spec names none (spec-form parameter table)."""
        from maml_tune.families._spaces import default_space

        return default_space(self.default_architecture().get("kind", "mlp"))

    def run_config(self, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """The full run config for this family: library defaults, then the family's default
        architecture and :meth:`literature_config`, then ``overrides`` (dotted keys), with
        every option value of this instance recorded so the run can be reproduced."""
        # Through override, so the family's architecture is checked and coerced like user settings.
        arch = {f"arch.{key}": value for key, value in self.default_architecture().items()}
        try:
            config = RunConfig(family=self.name).override(arch)
        except ConfigError as exc:
            raise FamilyError(f"task family {self.name!r}: default_architecture(): {exc}") from exc
        config = config.override(self.literature_config()).override(dict(overrides or {}))
        return config.override(family_settings(dataclasses.asdict(self.options)))

    def describe_options(self) -> list[dict[str, Any]]:
        """One entry per option: name, type, default, current value, help, min/max/choices."""
        return describe_options(type(self), self.options)


def _option_types(family: type[TaskFamily]) -> dict[str, Any]:
    return typing.get_type_hints(family.Options)


def describe_options(family: type[TaskFamily], values: Any) -> list[dict[str, Any]]:
    hints = _option_types(family)
    rows = []
    for field in dataclasses.fields(family.Options):
        meta = field.metadata
        rows.append(
            {
                "name": field.name,
                "type": type_name(hints[field.name]),
                "default": field.default,
                "value": getattr(values, field.name),
                "help": meta.get("help", ""),
                "min": meta.get("min"),
                "max": meta.get("max"),
                "choices": list(meta["choices"]) if meta.get("choices") else None,
            }
        )
    return rows


def parse_options(family: type[TaskFamily], values: Mapping[str, Any]) -> Any:
    """Validate ``values`` against ``family.Options``: names, types, ranges and choices."""
    hints = _option_types(family)
    fields = {f.name: f for f in dataclasses.fields(family.Options)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"family {family.name!r} has no option {unknown[0]!r} (options: {known})")
    parsed = {}
    for name, raw in values.items():
        where = f"family {family.name!r} option {name!r}"
        value = coerce_value(raw, hints[name], where)
        meta = fields[name].metadata
        if value is not None:
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{where}: expected >= {meta['min']}, got {value!r}")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{where}: expected <= {meta['max']}, got {value!r}")
            if meta.get("choices") and value not in meta["choices"]:
                choices = ", ".join(map(str, meta["choices"]))
                raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
        parsed[name] = value
    return family.Options(**parsed)
