"""``train.strategy`` → the strategy to run, with its task chunk and the reason for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maml_tune.core.strategies._base import Strategy
from maml_tune.core.strategies._registry import STRATEGIES
from maml_tune.errors import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class Choice:
    """The strategy to run, how many tasks it back-propagates at once (0: the whole
    meta-batch) and one line saying why."""

    strategy: Strategy
    task_chunk: int
    reason: str


def choose(arch, device: torch.device, algo=None, requested: str = AUTO, task_chunk: int = 0) -> Choice:
    """The strategy for ``requested`` (``train.strategy``) on this architecture, device and
    algorithm config (``None``: no algorithm constraint).

    ``auto`` picks the one measured fastest (benchmarks/RESULTS.md): on CPU one batched pass
    for MLPs and, one task per pass, for conv nets (grouping tasks gains nothing there and
    multiplies memory; vmap is slower and far more memory-hungry); on CUDA vmap, or batched
    when ``algo.checkpoint_inner`` rules vmap out. ``task_chunk`` (``train.task_chunk``)
    overrides the chunk of ``auto``.
    """
    checkpointed = algo is not None and algo.checkpoint_inner
    if requested != AUTO:
        strategy = strategy_named(requested)
        if checkpointed and not strategy.supports_checkpoint_inner:
            raise ConfigError(
                f"algo.checkpoint_inner needs train.strategy {', '.join(checkpointable())} or auto, "
                f"not {requested} "
                "(torch.func transforms do not support the checkpoint's saved-tensor hooks)"
            )
        others = ", ".join(name for name in STRATEGIES if name != requested)
        return Choice(strategy, task_chunk, f"requested (alternatives: {others})")
    where = "CUDA" if device.type == "cuda" else device.type.upper()
    if arch.kind == "mlp" and device.type != "cuda":
        return Choice(STRATEGIES["batched"], task_chunk, (
            f"auto: mlp on {where}: one batched pass for all tasks (measured fastest: "
            "about 1.3-2x vmap and over 10x the per-task loop; vmap and loop are the alternatives)"
        ))
    if device.type == "cuda":
        if checkpointed:
            return Choice(STRATEGIES["batched"], task_chunk, (
                f"auto: {arch.kind} on {where} would vmap, but algo.checkpoint_inner "
                "cannot run under vmap, so batched (one grouped pass)"
            ))
        return Choice(STRATEGIES["vmap"], task_chunk, (
            f"auto: {arch.kind} on {where}: tasks vectorised with torch.func.vmap "
            "(one kernel per op for all tasks; loop and batched are the alternatives)"
        ))
    if arch.kind == "resnet12":
        measured = "all three strategies within 7% of each other, vmap at twice the memory"
    else:
        measured = "measured fastest at less than the per-task loop's memory; vmap is slower, memory-hungry"
    fused = " with fused conv-norm-pool blocks" if arch.kind == "conv" and arch.pools else ""
    return Choice(STRATEGIES["batched"], task_chunk or 1, (
        f"auto: {arch.kind} on {where}: batched, one task per pass, channels-last{fused} ({measured})"
    ))


def strategy_named(name: str) -> Strategy:
    """The strategy called ``name`` (not ``auto``); :class:`ConfigError` naming the choices otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"train.strategy: expected one of {', '.join((AUTO, *STRATEGIES))}, got {name!r}"
        ) from None


def checkpointable() -> list[str]:
    """The strategies that can run ``algo.checkpoint_inner``."""
    return [name for name, s in STRATEGIES.items() if s.supports_checkpoint_inner]
