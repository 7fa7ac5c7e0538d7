"""The meta-trainer: the outer optimiser on the meta-parameters over sampled batches of tasks.

It reports through callbacks and knows nothing of logging, Optuna or the terminal; a
callback may raise to stop training (the search uses this to prune).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from maml_tune.core.config import AlgoConfig, RunConfig, TrainConfig
from maml_tune.core.evaluation import EvalResult, evaluate
from maml_tune.core.learner import MetaLearner
from maml_tune.core.strategies import choose
from maml_tune.core.tasks import TaskSampler, check_batch, check_declared_shapes, split_generator
from maml_tune.errors import ConfigError, DivergenceError

SPLITS = ("train", "val", "test")
PREFLIGHT_SEED = 0
"""The seed of :meth:`MetaTrainer.check_splits`' one task per split."""


@dataclass(frozen=True)
class IterationReport:
    """Sent after every meta-iteration (``iteration`` counts completed iterations from 1)."""

    iteration: int
    iterations: int
    meta_loss: float
    meta_lr: float
    tasks_per_sec: float


class TrainerCallback:
    """Receives the trainer's progress. Both methods run inside the training loop.

    They may read the reports but must not change the learner; raising any exception
    stops training and propagates out of :meth:`MetaTrainer.run`.
    """

    def on_iteration(self, report: IterationReport) -> None:
        """Called after each meta-iteration."""

    def on_validation(self, iteration: int, result: EvalResult) -> None:
        """Called after each meta-validation (every ``train.val_interval`` iterations and at the end)."""


@dataclass
class TrainResult:
    learner: MetaLearner
    iterations: int
    wall_seconds: float
    train_seconds: float
    tasks_per_sec: float
    strategy: str
    validations: list[tuple[int, EvalResult]] = field(default_factory=list)
    peak_gpu_mb: float | None = None
    """Peak CUDA memory allocated during the run (``torch.cuda.max_memory_allocated`` after a
    reset at its start), in MiB; ``None`` on CPU."""
    skipped_steps: int = 0
    """fp16 only: meta-iterations whose scaled gradients overflowed (the step was skipped)."""


MAX_PARAMETERS = 2**30
"""The largest network trained: 4 GiB of float32 weights, several times that with the optimiser's
state and a second-order meta-gradient."""


def build_learner(config: RunConfig, family: TaskSampler, device: torch.device) -> MetaLearner:
    """The initial meta-learner for ``config``, seeded by ``config.train.seed``; one of more than
    :data:`MAX_PARAMETERS` parameters raises :class:`ConfigError` before any memory is taken."""
    check_declared_shapes(family)
    with torch.device("meta"):  # shapes only: counts the parameters without allocating them
        probe = MetaLearner(config.arch, config.algo, family.input_shape, family.output_size, family.kind)
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"arch: this network has {count:,} parameters, more than the {MAX_PARAMETERS:,} supported;"
            " lower arch.width, arch.depth, arch.channels or arch.blocks"
        )
    torch.manual_seed(config.train.seed)
    learner = MetaLearner(
        config.arch, config.algo, family.input_shape, family.output_size, family.kind
    )
    return learner.to(device)


def build_optimizer(parameters, train: TrainConfig) -> torch.optim.Optimizer:
    """The outer optimiser ``train.optimizer`` with its settings (see :class:`TrainConfig`)."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=train.meta_lr, momentum=train.momentum, nesterov=train.nesterov,
            weight_decay=train.weight_decay,
        )
    adam = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return adam(
        parameters, lr=train.meta_lr, betas=(train.beta1, train.beta2), eps=train.eps,
        weight_decay=train.weight_decay,
    )


def multi_step_weights(algo: AlgoConfig, iteration: int) -> list[float] | None:
    """MAML++'s per-step query-loss weights at ``iteration``: uniform, annealed onto the last step."""
    steps = algo.inner_steps
    if not algo.multi_step_loss or steps == 1:
        return None
    decay = 1.0 / steps / algo.msl_anneal_iterations
    floor = 0.03 / steps
    early = max(1.0 / steps - iteration * decay, floor)
    last = min(1.0 / steps + iteration * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


@dataclass
class TrainingRun:
    """The state of a meta-training run between two :meth:`MetaTrainer.step` calls."""

    learner: MetaLearner
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    overflowed: int = 0
    """fp16: consecutive meta-iterations whose scaled gradients overflowed."""
    skipped_steps: int = 0


MAX_OVERFLOWED_STEPS = 30
"""fp16: consecutive overflowing meta-iterations (each halves the loss scale) before giving up."""


class MetaTrainer:
    """Meta-trains ``config`` on ``family`` on ``device``; see :meth:`run`."""

    def __init__(
        self,
        config: RunConfig,
        family: TaskSampler,
        device: torch.device,
        callbacks: Sequence[TrainerCallback] = (),
    ):
        self.config, self.family, self.device = config, family, device
        self.callbacks = list(callbacks)
        self.choice = choose(config.arch, device, config.algo, config.train.strategy, config.train.task_chunk)
        self.strategy, self.task_chunk = self.choice.strategy.name, self.choice.task_chunk

    def validate(self, learner: MetaLearner) -> EvalResult:
        t = self.config.train
        return evaluate(
            learner, self.family, split="val", tasks=t.val_tasks,
            steps=self.config.algo.eval_inner_steps, seed=t.val_seed,
            strategy=self.strategy, device=self.device, precision=t.precision,
        )

    def check_splits(self) -> None:
        """Sample one task of every split, so that a split which cannot give a task (fewer
        classes than N-way, say) fails now rather than at the first validation or the meta-test,
        after all the training. Its own generators: the run's tasks are unchanged."""
        check_declared_shapes(self.family)
        for split in SPLITS:
            generator = split_generator(split, PREFLIGHT_SEED, self.device)
            check_batch(self.family.sample(split, 1, generator, self.device), self.family, split, 1)

    def start(self) -> TrainingRun:
        """A fresh run: the initial learner (seeded by ``train.seed``), its optimiser and schedule."""
        cfg, t = self.config, self.config.train
        learner = build_learner(cfg, self.family, self.device)
        optimizer = build_optimizer(learner.parameters(), t)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t.iterations, 1))
            if t.cosine
            else None
        )
        # fp16: a dynamic loss scale keeps small gradients from flushing to zero.
        scaler = torch.amp.GradScaler(self.device.type) if t.precision == "fp16" else None
        generator = split_generator("train", t.seed, self.device)
        return TrainingRun(learner, optimizer, scheduler, scaler, generator)

    def step(self, run: TrainingRun, iteration: int) -> float:
        """Meta-iteration ``iteration`` (from 1): sample a meta-batch, accumulate its
        meta-gradient, check it is finite, clip it and step the optimiser and schedule.
        Returns the meta-loss; raises :class:`DivergenceError` when it is not finite."""
        cfg, t = self.config, self.config.train
        batch = self.family.sample("train", t.meta_batch, run.generator, self.device)
        check_batch(batch, self.family, "train", t.meta_batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss = run.learner.accumulate_meta_gradient(
            batch, self.choice.strategy, multi_step_weights(cfg.algo, iteration - 1), self.task_chunk,
            precision=t.precision, grad_scaler=run.scaler,
        ).item()
        if not math.isfinite(loss):
            raise DivergenceError(f"meta-loss became {loss} at iteration {iteration}", iteration)
        if run.scaler is None:
            self._clip_or_fail(run.learner, iteration)
            run.optimizer.step()
        else:
            run.scaler.unscale_(run.optimizer)
            if self._clip_or_fail(run.learner, iteration, allow_overflow=True):
                run.overflowed = 0
            else:
                run.overflowed += 1
                run.skipped_steps += 1
                if run.overflowed > MAX_OVERFLOWED_STEPS:
                    raise DivergenceError(
                        f"fp16 meta-gradients overflowed {run.overflowed} iterations in a row "
                        f"(at iteration {iteration})", iteration,
                    )
            run.scaler.step(run.optimizer)  # skipped when the gradients overflowed
            run.scaler.update()
        if run.scheduler is not None:
            run.scheduler.step()
        return loss

    def run(self) -> TrainResult:
        """Meta-train for ``train.iterations`` iterations and return the learner.

        Raises :class:`DivergenceError` as soon as the meta-loss, the meta-gradient or a
        validation loss is not finite.
        """
        t = self.config.train
        self.check_splits()
        run = self.start()
        result = TrainResult(run.learner, 0, 0.0, 0.0, 0.0, self.strategy)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        for iteration in range(1, t.iterations + 1):
            step_started = time.perf_counter()
            meta_lr = run.optimizer.param_groups[0]["lr"]
            loss = self.step(run, iteration)
            result.train_seconds += time.perf_counter() - step_started
            result.iterations = iteration
            result.skipped_steps = run.skipped_steps
            rate = iteration * t.meta_batch / result.train_seconds
            report = IterationReport(iteration, t.iterations, loss, meta_lr, rate)
            for callback in self.callbacks:
                callback.on_iteration(report)
            if iteration % t.val_interval == 0 or iteration == t.iterations:
                self._validate(run.learner, iteration, result)
        result.wall_seconds = time.perf_counter() - started
        if cuda:
            result.peak_gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        if result.train_seconds > 0:
            result.tasks_per_sec = result.iterations * t.meta_batch / result.train_seconds
        return result

    def _clip_or_fail(self, learner: MetaLearner, iteration: int, allow_overflow: bool = False) -> bool:
        """Clip the meta-gradient; False when it is not finite and ``allow_overflow`` (fp16)."""
        params = [p for p in learner.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            if allow_overflow:
                return False
            raise DivergenceError(
                f"meta-gradient norm became {norm.item()} at iteration {iteration}", iteration
            )
        if self.config.train.grad_clip is not None:
            # Takes the parameters (it scales their .grad), not the gradients.
            torch.nn.utils.clip_grads_with_norm_(params, self.config.train.grad_clip, norm)
        return True

    def _validate(self, learner: MetaLearner, iteration: int, result: TrainResult) -> None:
        validation = self.validate(learner)
        if not math.isfinite(validation.loss_after.mean):
            raise DivergenceError(
                f"validation loss became {validation.loss_after.mean} at iteration {iteration}",
                iteration,
            )
        result.validations.append((iteration, validation))
        for callback in self.callbacks:
            callback.on_validation(iteration, validation)
