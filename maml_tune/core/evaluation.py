"""Meta-testing: adapt to held-out tasks and report the query loss (and accuracy) with 95% intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import TaskSampler, check_batch, check_declared_shapes, split_generator

EVAL_CHUNK = 50
"""Tasks sampled and adapted per chunk; fixed so a seed always means the same tasks."""


@dataclass(frozen=True)
class Estimate:
    """A mean over tasks with its 95% interval half-width (1.96·std/√N)."""

    mean: float
    ci95: float

    @classmethod
    def of(cls, values: torch.Tensor) -> Estimate:
        values = values.double()
        n = values.numel()
        std = values.std(unbiased=True).item() if n > 1 else 0.0
        return cls(values.mean().item(), 1.96 * std / math.sqrt(n))


@dataclass(frozen=True)
class EvalResult:
    """Before/after-adaptation query metrics over ``tasks`` tasks of ``split``, the query
    normalised as ``query_norm`` says (``transductive`` or ``support``)."""

    split: str
    tasks: int
    steps: int
    query_norm: str
    loss_before: Estimate
    loss_after: Estimate
    accuracy_before: Estimate | None
    accuracy_after: Estimate | None

    def to_dict(self) -> dict:
        """Flat JSON form: ``loss_after``, ``loss_after_ci95``, ``accuracy_after`` …"""
        out: dict = {
            "split": self.split, "tasks": self.tasks, "steps": self.steps, "query_norm": self.query_norm,
        }
        for name in ("loss_before", "loss_after", "accuracy_before", "accuracy_after"):
            estimate = getattr(self, name)
            if estimate is not None:
                out[name], out[f"{name}_ci95"] = estimate.mean, estimate.ci95
        return out


def evaluate(
    learner: MetaLearner,
    sampler: TaskSampler,
    *,
    split: str,
    tasks: int,
    steps: int,
    seed: int,
    strategy: str,
    device: torch.device,
    precision: str = "fp32",
    query_norm: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Adapt ``learner`` with ``steps`` inner steps to ``tasks`` seeded tasks of ``split``.

    The same ``seed`` always yields the same tasks, so validation during training and
    comparisons between trials see an identical set. ``precision`` autocasts the forward
    passes (``train.precision``; the default ``fp32`` is exact). ``query_norm``
    (default: the mode the learner was trained with, ``algo.query_norm``) is how query
    sets are normalised (:meth:`~maml_tune.core.learner.MetaLearner.query_outputs`).
    ``progress(done, tasks)`` is called after each chunk of tasks.
    """
    query_norm = learner.algo.query_norm if query_norm is None else query_norm
    check_declared_shapes(sampler)
    generator = split_generator(split, seed, device)
    outcomes = []
    for start in range(0, tasks, EVAL_CHUNK):
        size = min(EVAL_CHUNK, tasks - start)
        batch = sampler.sample(split, size, generator, device)
        check_batch(batch, sampler, split, size)
        outcomes.append(learner.outcome(batch, steps, strategy, precision=precision, query_norm=query_norm))
        if progress is not None:
            progress(start + size, tasks)

    def gather(name: str) -> Estimate | None:
        parts = [getattr(o, name) for o in outcomes]
        return None if parts[0] is None else Estimate.of(torch.cat(parts))

    return EvalResult(
        split, tasks, steps, query_norm, gather("loss_before"), gather("loss_after"),
        gather("accuracy_before"), gather("accuracy_after"),
    )
