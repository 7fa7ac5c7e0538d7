"""Run configuration: small frozen dataclasses, validated on construction.

A :class:`RunConfig` fully determines a meta-training run (with the seed); it is stored
beside every checkpoint and in every trial, so a result can always be reproduced from it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maml_tune.errors import ConfigError

ACTIVATIONS = ("relu", "tanh", "gelu", "silu", "leaky_relu")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd")
_ADAM_ONLY = ("beta1", "beta2", "eps")
_SGD_ONLY = ("momentum", "nesterov")
QUERY_NORMS = ("transductive", "support")


MAX_SEED = 2**32 - 1
"""Seeds are 0 … 2³²−1: what every sampler and generator accepts."""
MAX_INNER_STEPS = 1000
"""Most adaptation steps (``algo.inner_steps``, ``algo.test_inner_steps``); MAML uses 1-10."""
MAX_TASKS = 1_000_000
"""Most tasks in a meta-batch, a validation or a meta-test (the literature meta-tests on 600)."""
MAX_LAYERS = 1000
"""Most hidden layers (``arch.depth``) or conv blocks (``arch.blocks``)."""

DOWNSAMPLES = {
    "pool": "2x2 max-pool keeping partial windows (28 -> 14 -> 7 -> 4)",
    "pool_valid": "2x2 max-pool dropping partial windows, Finn et al.'s VALID (84 -> 42 -> 21 -> 10 -> 5)",
    "stride": "stride-2 convolutions, no pooling",
}
"""How a conv block (or residual stage) halves its input (``arch.downsample``)."""

KINDS = {
    "mlp": "depth x (linear -> activation), linear head",
    "conv": "blocks x (3x3 conv -> norm -> activation -> downsample), linear head (Finn et al.'s conv4)",
    "resnet12": "ResNet-12: 4 residual stages of three 3x3 convs (widths channels x 1, 2.5, 5, 10), "
    "global average pooling, linear head",
}
"""The networks (``arch.kind``)."""

HEADS = {
    "fixed": "one meta-learned row per output: a checkpoint serves only the N it was trained with",
    "zero": "reset to zero before every task's inner loop (no meta-parameters): any N, "
    "and adaptation is invariant to the order of the classes",
    "shared": "one meta-learned row copied to every output before the inner loop (UnicornMAML): any N",
}
"""The output layer a task's inner loop starts from (``arch.head``).

Under softmax cross-entropy a shared row adds the same logit to every class, which cancels
in every loss and gradient: for classification ``shared`` computes exactly what ``zero``
does and its row gets no meta-gradient (tests/core/test_meta_gradient.py checks both). The
two differ where outputs are not shift-invariant, as in regression."""


@dataclass(frozen=True)
class ArchConfig:
    """The network, one of :data:`KINDS`. ``mlp`` uses depth/width/activation; ``conv`` uses
    blocks/channels/norm/activation/downsample (one of :data:`DOWNSAMPLES`); ``resnet12`` uses
    channels (its first stage's width), norm, activation and downsample, and always has four
    stages. Settings a kind does not use are ignored (so one search space can hold several
    kinds). ``head`` is one of :data:`HEADS`."""

    kind: str = "mlp"
    depth: int = 2
    width: int = 40
    activation: str = "relu"
    blocks: int = 4
    channels: int = 64
    norm: str = "batch"
    downsample: str = "pool"
    head: str = "fixed"

    def __post_init__(self) -> None:
        _choice("arch.kind", self.kind, tuple(KINDS))
        _choice("arch.head", self.head, tuple(HEADS))
        _choice("arch.activation", self.activation, ACTIVATIONS)
        _choice("arch.norm", self.norm, ("batch", "none"))
        _choice("arch.downsample", self.downsample, tuple(DOWNSAMPLES))
        _at_least("arch.depth", self.depth, 0, MAX_LAYERS)
        _at_least("arch.width", self.width, 1)
        _at_least("arch.blocks", self.blocks, 1, MAX_LAYERS)
        _at_least("arch.channels", self.channels, 1)
        if self.head == "zero" and self.kind == "mlp" and self.depth == 0:
            raise ConfigError("arch.head zero with arch.depth 0 leaves no weights to meta-learn")

    @property
    def head_fits_any_outputs(self) -> bool:
        """Whether a checkpoint serves any number of outputs (classes), not only its own."""
        return self.head != "fixed"

    @property
    def pools(self) -> bool:
        """Whether conv blocks end in a max-pool (else they stride)."""
        return self.downsample != "stride"

    @property
    def pool_keeps_partial_windows(self) -> bool:
        """Whether a max-pool keeps the windows that overhang an odd-sized input (``ceil_mode``)."""
        return self.downsample == "pool"


@dataclass(frozen=True)
class AlgoConfig:
    """The MAML variant and its inner loop.

    ``algorithm`` names one of :data:`maml_tune.core.algorithms.ALGORITHMS` (``maml``,
    ``fomaml``, ``anil``, ``boil``, ``metasgd``, ``lslr``, ``reptile``: see each module);
    ``first_order`` drops the second-derivative terms of those that are not always first order.
    ``inner_lr`` is the (initial) inner learning rate; it may be negative.
    ``multi_step_loss`` is MAML++'s weighted sum of the query losses after every inner
    step, annealed to the final step over ``msl_anneal_iterations``.

    Memory controls for many inner steps (each tested against the float64 reference):
    ``second_order_steps`` (``None``: all) differentiates second order only through the
    last N inner steps; earlier steps are first order (their support gradient is
    detached, so their graphs are freed at once and memory grows only with N).
    ``checkpoint_inner`` recomputes each second-order inner step during the backward
    pass (``torch.utils.checkpoint``, non-reentrant) instead of keeping its activations:
    the same meta-gradient for about one more support forward/backward per step. It
    needs the ``loop`` or ``batched`` strategy (``auto`` picks one of them; ``vmap`` is
    refused: ``torch.func`` transforms do not support saved-tensor hooks).

    ``query_norm`` is how batch-statistics norms treat the query set in meta-training and,
    unless told otherwise, in validation and testing: ``transductive`` normalises it with
    its own batch's statistics (Finn et al.'s code), so one query example's output depends
    on the others; ``support`` uses the (adapted) support set's statistics, so it depends
    only on the support set and the example itself. The support set is always normalised
    with its own statistics. Networks without such norms are unaffected.
    """

    algorithm: str = "maml"
    first_order: bool = False
    inner_lr: float = 0.01
    inner_steps: int = 1
    test_inner_steps: int | None = None
    multi_step_loss: bool = False
    msl_anneal_iterations: int = 1000
    second_order_steps: int | None = None
    checkpoint_inner: bool = False
    query_norm: str = "transductive"

    def __post_init__(self) -> None:
        _algorithm(self.algorithm).validate(self)
        _choice("algo.query_norm", self.query_norm, QUERY_NORMS)
        if self.second_order_steps is not None:
            _at_least("algo.second_order_steps", self.second_order_steps, 0)
        _at_least("algo.inner_steps", self.inner_steps, 1, MAX_INNER_STEPS)
        if self.test_inner_steps is not None:
            _at_least("algo.test_inner_steps", self.test_inner_steps, 0, MAX_INNER_STEPS)
        _at_least("algo.msl_anneal_iterations", self.msl_anneal_iterations, 1)

    @property
    def is_first_order(self) -> bool:
        return self.first_order or _algorithm(self.algorithm).always_first_order

    @property
    def eval_inner_steps(self) -> int:
        return self.inner_steps if self.test_inner_steps is None else self.test_inner_steps


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop: the optimiser of the meta-parameters, validation, determinism.

    ``optimizer`` is ``adam`` (default), ``adamw`` (decoupled weight decay) or ``sgd``, at
    rate ``meta_lr`` (annealed to 0 with ``cosine``); ``beta1``, ``beta2`` and ``eps`` are
    Adam(W)'s, ``momentum`` (with ``nesterov``) is SGD's, ``weight_decay`` applies to all
    three (L2 for Adam and SGD, decoupled for AdamW). Setting one the chosen optimiser does
    not use is an error. ``grad_clip`` clips the meta-gradient's total norm before each step.

    ``strategy`` picks how the tasks of a meta-batch are executed (``auto``: measured
    fastest for the architecture and device); ``task_chunk`` bounds how many tasks a
    vectorised strategy back-propagates at once (0: the whole meta-batch).
    ``precision`` runs the network's forward passes (meta-training and validation) under
    ``torch.autocast`` in ``bf16`` or ``fp16`` on the run's device; the meta-parameters,
    the inner-loop weights and the meta-gradients stay float32. ``fp16`` adds a dynamic
    gradient scaler (steps with overflowing gradients are skipped).
    """

    meta_lr: float = 1e-3
    optimizer: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    meta_batch: int = 25
    iterations: int = 1000
    cosine: bool = False
    grad_clip: float | None = None
    val_interval: int = 100
    val_tasks: int = 100
    val_seed: int = 1
    seed: int = 0
    strategy: str = "auto"
    task_chunk: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not self.meta_lr > 0:
            raise ConfigError(f"train.meta_lr: expected a number > 0, got {self.meta_lr!r}")
        self._check_optimizer()
        _at_least("train.meta_batch", self.meta_batch, 1, MAX_TASKS)
        _at_least("train.iterations", self.iterations, 0)
        _at_least("train.val_interval", self.val_interval, 1)
        _at_least("train.val_tasks", self.val_tasks, 1, MAX_TASKS)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip: expected a number > 0, got {self.grad_clip!r}")
        _choice("train.strategy", self.strategy, _strategy_names())
        _at_least("train.task_chunk", self.task_chunk, 0)
        _choice("train.precision", self.precision, PRECISIONS)
        for key in ("seed", "val_seed"):
            _seed(f"train.{key}", getattr(self, key))

    def _check_optimizer(self) -> None:
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: expected a number in [0, 1), got {getattr(self, key)!r}")
        if not self.eps > 0:
            raise ConfigError(f"train.eps: expected a number > 0, got {self.eps!r}")
        for key in ("momentum", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"train.{key}: expected a number >= 0, got {getattr(self, key)!r}")
        if self.nesterov and not self.momentum > 0:
            raise ConfigError("train.nesterov needs train.momentum > 0")
        defaults = TrainConfig.__dataclass_fields__
        unused = _ADAM_ONLY if self.optimizer == "sgd" else _SGD_ONLY
        for key in unused:
            if getattr(self, key) != defaults[key].default:
                raise ConfigError(f"train.{key} does not apply to train.optimizer {self.optimizer}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: family (with options), network, algorithm, training."""

    family: str = "sinusoid"
    family_options: Mapping[str, Any] = field(default_factory=dict)
    arch: ArchConfig = field(default_factory=ArchConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_tasks: int = 600
    eval_seed: int = 2

    def __post_init__(self) -> None:
        _at_least("eval_tasks", self.eval_tasks, 1, MAX_TASKS)
        _seed("eval_seed", self.eval_seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form; :meth:`from_dict` inverts it exactly."""
        out = dataclasses.asdict(self)
        out["family_options"] = dict(self.family_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return _build(cls, data, "")

    def settings(self) -> dict[str, Any]:
        """Every setting as a dotted key (``{"arch.kind": "mlp", …, "family.k_shot": 10}``);
        ``RunConfig(family=…).override(settings)`` rebuilds this config."""
        data = self.to_dict()
        out = {f"{s}.{name}": value for s in _SECTIONS for name, value in data[s].items()}
        out.update({name: data[name] for name in _TOP_FIELDS if name != "family"})
        out.update(family_settings(data["family_options"]))
        return out

    def override(self, values: Mapping[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"algo.inner_lr": "0.1"}``.

        ``family.KEY`` sets a family option (validated later by the family itself); a bare
        field name is accepted when exactly one section has it (``inner_lr``).
        """
        data = self.to_dict()
        for key, value in values.items():
            section, name = resolve_key(key)
            if section == "family":
                data["family_options"][name] = value
            elif section == "":
                data[name] = value
            else:
                data[section][name] = value
        return RunConfig.from_dict(data)


_SECTIONS = {"arch": ArchConfig, "algo": AlgoConfig, "train": TrainConfig}
_TOP_FIELDS = ("family", "eval_tasks", "eval_seed")


def resolve_key(key: str) -> tuple[str, str]:
    """``"algo.inner_lr"`` or ``"inner_lr"`` → ``("algo", "inner_lr")``; unknown keys raise."""
    if "." in key:
        section, name = key.split(".", 1)
        if section == "family" and name:
            return section, name
        cls = _SECTIONS.get(section)
        if cls is None or name not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"unknown setting {key!r} (expected one of: {', '.join(all_keys())})")
        return section, name
    if key in _TOP_FIELDS:
        return "", key
    owners = [s for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) != 1:
        raise ConfigError(f"unknown setting {key!r} (expected one of: {', '.join(all_keys())})")
    return owners[0], key


def all_keys() -> list[str]:
    keys = [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]
    return keys + list(_TOP_FIELDS) + [f"{FAMILY_PREFIX}<option>"]


def field_type(key: str) -> Any:
    """The annotated type of setting ``key`` (``"algo.inner_lr"`` → ``float``); family options → ``Any``."""
    section, name = resolve_key(key)
    if section == "family":
        return Any
    return typing.get_type_hints(_SECTIONS[section] if section else RunConfig)[name]


FAMILY_PREFIX = "family."
"""Dotted settings under this prefix are options of the task family, not of the run."""


def split_family(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"family.ways": 5, "algo.inner_lr": 0.1}`` → ``({"ways": 5}, {"algo.inner_lr": 0.1})``."""
    options = {k[len(FAMILY_PREFIX):]: v for k, v in overrides.items() if k.startswith(FAMILY_PREFIX)}
    rest = {k: v for k, v in overrides.items() if not k.startswith(FAMILY_PREFIX)}
    return options, rest


def family_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Family options as dotted settings: ``{"ways": 5}`` → ``{"family.ways": 5}``."""
    return {f"{FAMILY_PREFIX}{k}": v for k, v in options.items()}


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix + unknown[0]!r} (expected one of: {', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        elif name == "family_options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name}: expected a table, got {value!r}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = coerce_value(value, tp, prefix + name)
    return cls(**kwargs)


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a TOML/JSON value or a ``--set`` string) to the annotated type ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        allowed = typing.get_args(tp)
        if type(None) in allowed and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        ):
            return None
        for candidate in allowed:
            if candidate is type(None):
                continue
            try:
                return coerce_value(value, candidate, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        what = "a finite number" if number is not None else "a number"
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " | ".join(type_name(a) for a in args)
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


# The registries import torch; importing them on first use keeps `maml-tune --help` (which
# imports this module for the settings' names) fast and torch-free.
def _algorithm(name: str):
    from maml_tune.core.algorithms import algorithm

    return algorithm(name)


def _strategy_names() -> tuple[str, ...]:
    from maml_tune.core.strategies import AUTO, STRATEGIES

    return (AUTO, *STRATEGIES)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


def _seed(key: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key}: expected a seed from 0 to {MAX_SEED}, got {value!r}")


def _at_least(key: str, value: int, low: int, most: int | None = None) -> None:
    if most is not None and not low <= value <= most:
        raise ConfigError(f"{key}: expected an integer from {low} to {most:,}, got {value!r}")
    if value < low:
        raise ConfigError(f"{key}: expected an integer >= {low}, got {value!r}")
