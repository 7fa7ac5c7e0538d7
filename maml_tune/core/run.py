"""The run workflow: one configuration meta-trained, meta-tested and summarised.

``maml-tune train`` and every search trial call :func:`train_and_test`; ``evaluate`` and
``predict`` meta-test a checkpoint with :func:`meta_test`, so a configuration gives the same
numbers whichever way it is run: the same seeded test tasks, test-time inner steps,
strategy (:func:`~maml_tune.core.strategies.choose`) and precision (``train.precision``,
the one validation used while training). :class:`RunSummary` is what a run measured and
what its checkpoint records.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maml_tune.core.config import RunConfig
from maml_tune.core.evaluation import EvalResult, evaluate
from maml_tune.core.learner import MetaLearner
from maml_tune.core.strategies import choose
from maml_tune.core.tasks import TaskSampler
from maml_tune.core.trainer import MetaTrainer, TrainerCallback, TrainResult


@dataclass(frozen=True)
class RunSummary:
    """What one run measured; stored in its checkpoint (:meth:`to_dict` / :meth:`from_dict`)."""

    iterations: int
    wall_seconds: float
    """Meta-training, its validations and the meta-test."""
    train_seconds: float
    tasks_per_sec: float
    device: str
    strategy: str
    n_params: int
    """Meta-parameters: the network plus learned inner rates."""
    n_adapted_params: int
    metrics: Mapping[str, Any]
    """Flat metrics (:func:`run_metrics`): ``val_loss``, ``test_accuracy_ci95``, ``adaptation_cost`` …"""
    validation: tuple[Mapping[str, Any], ...]
    """``{"iteration": i, **EvalResult.to_dict()}`` at every meta-validation."""
    test: Mapping[str, Any]
    """The meta-test's :meth:`EvalResult.to_dict`."""
    study: str | None = None
    """The study and trial that ran it, for a search trial's checkpoint."""
    trial: int | None = None
    retrained_from: Mapping[str, Any] | None = None
    """``{"study", "trial", "storage"}`` of the trial whose configuration ``train --from-study`` retrained."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"], data["test"] = dict(self.metrics), dict(self.test)
        data["validation"] = [dict(v) for v in self.validation]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["validation"] = tuple(values.get("validation", ()))
        return cls(**values)


def meta_test(
    learner: MetaLearner,
    config: RunConfig,
    sampler: TaskSampler,
    device: torch.device,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    query_norm: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Adapt ``learner`` to held-out test tasks as ``config`` says: ``eval_tasks`` tasks seeded
    ``eval_seed``, the test-time inner steps, its strategy and ``train.precision``; ``tasks``,
    ``steps`` and ``seed`` replace those settings, ``query_norm`` the learner's own mode;
    ``progress(done, tasks)`` follows the tasks."""
    t = config.train
    return evaluate(
        learner, sampler, split="test",
        tasks=config.eval_tasks if tasks is None else tasks,
        steps=config.algo.eval_inner_steps if steps is None else steps,
        seed=config.eval_seed if seed is None else seed,
        strategy=choose(config.arch, device, config.algo, t.strategy, t.task_chunk).strategy.name,
        device=device, precision=t.precision, query_norm=query_norm, progress=progress,
    )


def run_metrics(
    validation: EvalResult | None, test: EvalResult, adaptation_cost: int, adaptation_time: float
) -> dict[str, Any]:
    """``val_``/``test_`` metrics (``loss_after`` → ``val_loss`` …), the last validation's and
    the meta-test's, plus the adaptation cost (steps × adapted parameters) and seconds per task."""
    metrics: dict[str, Any] = {}
    for prefix, result in (("val", validation), ("test", test)):
        if result is None:
            continue
        for key, value in result.to_dict().items():
            name = key.replace("loss_after", "loss").replace("accuracy_after", "accuracy")
            metrics[f"{prefix}_{name}"] = value
    metrics["adaptation_cost"] = adaptation_cost
    metrics["adaptation_time"] = adaptation_time
    return metrics


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: the meta-trained learner, the trainer's result, the meta-test and the summary."""

    learner: MetaLearner
    training: TrainResult
    test: EvalResult
    summary: RunSummary


def train_and_test(
    config: RunConfig,
    sampler: TaskSampler,
    device: torch.device,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    between: Callable[[], None] = lambda: None,
    trained: Callable[[MetaLearner], None] = lambda learner: None,
) -> RunOutcome:
    """Meta-train ``config`` on ``sampler`` (reporting to ``callbacks``), then meta-test it.

    ``trained`` is called with the meta-trained learner before the meta-test, which can be long
    or fail (``train`` writes its checkpoint there). ``between`` runs before and after the
    meta-test and may raise to stop the run (the search checks for Ctrl-C there). A non-finite
    meta-loss, gradient or validation loss raises :class:`~maml_tune.errors.DivergenceError`
    from the trainer.
    """
    started = time.perf_counter()
    training = MetaTrainer(config, sampler, device, callbacks).run()
    learner = training.learner
    trained(learner)
    between()
    test_started = time.perf_counter()
    test = meta_test(learner, config, sampler, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the meta-test's time is the kernels', not their launch
    adaptation_time = (time.perf_counter() - test_started) / test.tasks
    between()
    weights = learner.weights()
    n_adapted = sum(weights[name].numel() for name in learner.adapted_names)
    validation = training.validations[-1][1] if training.validations else None
    summary = RunSummary(
        iterations=training.iterations,
        wall_seconds=time.perf_counter() - started,
        train_seconds=training.train_seconds,
        tasks_per_sec=training.tasks_per_sec,
        device=str(device),
        strategy=training.strategy,
        n_params=sum(p.numel() for p in learner.parameters()),
        n_adapted_params=n_adapted,
        metrics=run_metrics(validation, test, test.steps * n_adapted, adaptation_time),
        validation=tuple({"iteration": i, **v.to_dict()} for i, v in training.validations),
        test=test.to_dict(),
    )
    return RunOutcome(learner, training, test, summary)
