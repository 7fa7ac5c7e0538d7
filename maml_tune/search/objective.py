"""The objective of a study: one trial = one short meta-training run plus a held-out evaluation.

Each trial samples its parameters (:mod:`maml_tune.search.space`), builds the run config
(family defaults ← fixed settings ← budget ← sampled parameters), meta-trains, reports
the meta-validation metric at every validation interval (single-objective studies, so
pruners can stop it early), evaluates on ``eval_tasks`` held-out test tasks and records
the user attributes of :class:`~maml_tune.search.record.TrialAttrs`.

Objective values (see :data:`maml_tune.search.spec.METRICS`): regression studies default to
``val_loss`` (post-adaptation meta-validation loss, minimised); classification studies
default to ``val_accuracy`` (maximised). The reported intermediate value is the validation
counterpart of the first objective metric (``val_loss`` for loss metrics, ``val_accuracy``
for accuracy metrics); cost/time objectives report nothing.

A diverging trial (non-finite loss or gradient, or a post-adaptation validation loss more
than ``budget.divergence_factor`` times the pre-adaptation loss) ends PRUNED with its
reason in the ``reason`` user attribute; an invalid sampled configuration or an error
ends FAILED with the reason recorded. Neither stops the study. A (CUDA) out-of-memory error
fails the trial with its reason and frees the cached memory before the next trial; an
interrupt (Ctrl-C, see :mod:`maml_tune.search.interrupt`) fails it with ``reason``
:data:`~maml_tune.search.interrupt.REASON` and stops the worker.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from pathlib import Path
from typing import Any

from maml_tune import __version__
from maml_tune.core.config import RunConfig
from maml_tune.core.trainer import TrainerCallback
from maml_tune.errors import ConfigError, DivergenceError, StudyError
from maml_tune.search import backoff, interrupt
from maml_tune.search.events import EventSink, IterationDone, TrialStarted, Validated
from maml_tune.search.identity import process_identity
from maml_tune.search.record import write
from maml_tune.search.space import suggest
from maml_tune.search.spec import StudySpec


class TrialFailed(StudyError):
    """A trial cannot run (e.g. its sampled configuration is invalid); the study goes on."""


def pruning_metric(spec: StudySpec) -> str | None:
    """The validation metric reported for pruning, or ``None`` (multi-objective, cost objectives)."""
    if spec.objective.multi:
        return None
    first = spec.objective.metrics[0]
    if first.endswith("_loss"):
        return "val_loss"
    if first.endswith("_accuracy"):
        return "val_accuracy"
    return None


def checkpoint_dir(root: str | Path, study_name: str, number: int) -> Path:
    return Path(root) / _safe(study_name) / f"trial-{number}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class TrialObjective:
    """Callable objective for ``study.optimize``; one instance per worker process."""

    def __init__(
        self,
        spec: StudySpec,
        family: Any,
        device: Any,
        *,
        study_name: str,
        checkpoint_root: str | Path | None = "studies/checkpoints",
        events: EventSink | None = None,
        worker: int = 0,
    ):
        self.spec, self.family, self.device = spec, family, device
        self.study_name, self.worker = study_name, worker
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root is not None else None
        self.events = events or (lambda event: None)
        self.base_overrides = spec.base_overrides()
        self.base = family.run_config(self.base_overrides).settings()
        self.report_metric = pruning_metric(spec)
        self.trial_id: int | None = None
        """Storage id of the trial this objective ran last (the runner re-queues it on interrupt)."""

    def __call__(self, trial: Any) -> float | tuple[float, ...]:
        import optuna

        started = time.perf_counter()
        self.trial_id = trial._trial_id
        try:
            write(
                trial.set_user_attr,
                process=process_identity(),
                version=__version__,
                device=str(self.device),
                worker=self.worker,
            )
            params = suggest(trial, self.spec.space, self.base)
        except Exception as exc:  # e.g. the study database connection was lost
            _try_set_reason(trial, _error_reason(exc))
            raise
        self.events(TrialStarted(self.worker, trial.number, params))
        try:
            config = self.family.run_config({**self.base_overrides, **params})
        except ConfigError as exc:
            reason = f"invalid configuration: {exc}"
            write(trial.set_user_attr, reason=reason)
            raise TrialFailed(reason) from None
        try:
            write(trial.set_user_attr, config=config.to_dict())
        except Exception as exc:  # e.g. the study database connection was lost
            _try_set_reason(trial, _error_reason(exc))
            raise
        callback = _TrialCallback(self, trial, config)
        out_of_memory = None
        try:
            return self._run(trial, config, callback, started)
        except KeyboardInterrupt:
            write(trial.set_user_attr, reason=interrupt.REASON)
            raise
        except DivergenceError as exc:
            reason = f"diverged: {exc}"
            write(trial.set_user_attr, reason=reason)
            raise optuna.TrialPruned(reason) from None
        except optuna.TrialPruned as exc:
            write(trial.set_user_attr, reason=str(exc))
            raise
        except TrialFailed as exc:
            write(trial.set_user_attr, reason=str(exc))
            raise
        except _out_of_memory_errors() as exc:
            out_of_memory = f"out of memory on {self.device}: {_first_line(exc)}"
            write(trial.set_user_attr, reason=out_of_memory)
        except Exception as exc:
            _try_set_reason(trial, _error_reason(exc))
            raise
        finally:
            _try_set(trial, wall_seconds=time.perf_counter() - started)
            _try_set(trial, iterations_done=callback.iteration)
            _try_set(trial, val_history=callback.history)
        # Outside the except block, so the error's frames (holding tensors) are already gone.
        _free_memory(self.device)
        raise TrialFailed(out_of_memory)

    def _run(self, trial: Any, config: RunConfig, callback: _TrialCallback, started: float):
        from maml_tune.core.checkpoint import save_checkpoint
        from maml_tune.core.run import train_and_test

        interrupt.check()
        run = train_and_test(config, self.family, self.device, [callback], between=interrupt.check)
        summary = run.summary
        if not math.isfinite(run.test.loss_after.mean):
            raise DivergenceError(f"test loss became {run.test.loss_after.mean}", summary.iterations)
        metrics = dict(summary.metrics)
        write(
            trial.set_user_attr,
            metrics=metrics,
            n_params=summary.n_params,
            n_adapted_params=summary.n_adapted_params,
            train_seconds=summary.train_seconds,
            tasks_per_sec=summary.tasks_per_sec,
        )
        if run.training.peak_gpu_mb is not None:
            write(trial.set_user_attr, peak_gpu_mb=run.training.peak_gpu_mb)
        values = []
        for metric in self.spec.objective.metrics:
            if metric not in metrics:
                raise TrialFailed(f"metric {metric!r} was not measured")
            values.append(float(metrics[metric]))
        if self.checkpoint_root is not None and self.spec.study.top_k_checkpoints > 0:
            target = checkpoint_dir(self.checkpoint_root, self.study_name, trial.number)
            origin = dataclasses.replace(summary, study=self.study_name, trial=trial.number)
            save_checkpoint(target, run.learner, config, origin)
            write(trial.set_user_attr, checkpoint=str(target.resolve()))
        return values[0] if len(values) == 1 else tuple(values)


def _error_reason(exc: BaseException) -> str:
    """``Type: first line``; for a storage error, the database driver's message."""
    cause = exc.__cause__ if type(exc).__name__ == "StorageInternalError" and exc.__cause__ else exc
    cause = getattr(cause, "orig", None) or cause
    if cause is not exc:
        from maml_tune.search.storage import mask_url

        return f"study database error: {mask_url(_first_line(cause))}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _try_set_reason(trial: Any, reason: str) -> None:
    _try_set(trial, reason=reason)


def _try_set(trial: Any, **values: Any) -> None:
    """Record user attributes, retrying a lost database briefly; a bookkeeping write that
    still fails must not turn the trial's outcome into an error."""
    try:
        backoff.retry(
            lambda: write(trial.set_user_attr, **values),
            retries=3,
            first_pause=0.2,
            retry_if=lambda exc: True,
        )
    except Exception:
        pass


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.OutOfMemoryError,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _free_memory(device: Any) -> None:
    """Collect garbage and return the CUDA allocator's cached blocks after an out-of-memory error."""
    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()


class _TrialCallback(TrainerCallback):
    """Reports validations to the trial (pruning), detects divergence, forwards progress events."""

    def __init__(self, objective: TrialObjective, trial: Any, config: RunConfig):
        self.objective, self.trial = objective, trial
        self.factor = objective.spec.budget.divergence_factor
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self._last_event = 0.0
        self._every = max(1, config.train.iterations // 100)

    def on_iteration(self, report: Any) -> None:
        interrupt.check()  # Ctrl-C stops the trial here, between two meta-iterations
        self.iteration = report.iteration
        now = time.monotonic()
        if report.iteration == report.iterations or (
            report.iteration % self._every == 0 and now - self._last_event > 0.25
        ):
            self._last_event = now
            self.objective.events(
                IterationDone(
                    worker=self.objective.worker,
                    trial=self.trial.number,
                    iteration=report.iteration,
                    iterations=report.iterations,
                    meta_loss=report.meta_loss,
                )
            )

    def on_validation(self, iteration: int, result: Any) -> None:
        import optuna

        interrupt.check()
        row = {"iteration": iteration, **{k: v for k, v in result.to_dict().items() if k not in ("split",)}}
        self.history.append(row)
        before, after = result.loss_before.mean, result.loss_after.mean
        if after > self.factor * max(before, 1e-12):
            raise DivergenceError(
                f"validation loss after adaptation {after:.4g} is more than {self.factor:g}x the loss "
                f"before adaptation {before:.4g} at iteration {iteration}",
                iteration,
            )
        metric = self.objective.report_metric
        if metric is None:
            return
        value = after if metric == "val_loss" else result.accuracy_after.mean
        self.objective.events(
            Validated(worker=self.objective.worker, trial=self.trial.number, iteration=iteration, value=value)
        )
        self.trial.report(value, iteration)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at iteration {iteration} by the {self.objective.spec.study.pruner} pruner "
                f"({metric} {value:.4g})"
            )


def baseline_params(spec: StudySpec, family: Any) -> dict[str, Any]:
    """The family's literature configuration as parameter values of ``spec.space`` (conditions applied)."""
    from maml_tune.search.space import active_params

    literature = family.run_config({**spec.base_overrides(), **family.literature_config()}).settings()
    if "algo.test_inner_steps" in spec.space and literature.get("algo.test_inner_steps") is None:
        literature["algo.test_inner_steps"] = literature["algo.inner_steps"]
    return active_params(spec.space, literature, literature)


__all__ = [
    "TrialFailed",
    "TrialObjective",
    "baseline_params",
    "checkpoint_dir",
    "pruning_metric",
]
