"""The meta-learner: a network's initial weights plus the inner learning rates, and the
meta-objective computed over a batch of tasks by an interchangeable execution strategy.

One code path serves every algorithm: MAML and first-order MAML differ by a flag, ANIL by
the set of adapted parameters, Meta-SGD and LSLR by the shape of the learned rates, and
MAML++'s multi-step loss by the per-step weights of the query loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.inner import LossFn, Params, adapt, inner_trajectory, make_forward
from maml_tune.core.nets import HEAD_PREFIX, build_network
from maml_tune.core.tasks import TaskBatch


def loss_function(kind: str) -> LossFn:
    """Mean squared error for regression, cross-entropy on logits for classification."""
    return F.mse_loss if kind == "regression" else F.cross_entropy


def resolve_strategy(strategy: str, arch: ArchConfig, device: torch.device) -> str:
    """``auto`` → the strategy measured fastest for this architecture and device.

    On CPU, vmapping the tasks is several times faster than a loop for MLPs but slower
    and far more memory-hungry for conv nets (benchmarks/RESULTS.md); on CUDA, batching
    pays for both.
    """
    if strategy != "auto":
        return strategy
    if arch.kind == "mlp" or device.type == "cuda":
        return "vmap"
    return "loop"


@dataclass(frozen=True)
class BatchOutcome:
    """Per-task results of adapting to a batch: query losses and accuracies (``None`` for regression)."""

    loss_before: torch.Tensor
    loss_after: torch.Tensor
    accuracy_before: torch.Tensor | None
    accuracy_after: torch.Tensor | None


class MetaLearner(nn.Module):
    """Initial weights θ (``net``) and, for Meta-SGD / LSLR, the learned inner rates (``lrs``)."""

    def __init__(
        self,
        arch: ArchConfig,
        algo: AlgoConfig,
        input_shape: Sequence[int],
        output_size: int,
        kind: str,
    ):
        super().__init__()
        self.arch, self.algo, self.kind = arch, algo, kind
        self.input_shape, self.output_size = tuple(input_shape), output_size
        self.net = build_network(arch, self.input_shape, output_size)
        names = [name for name, _ in self.net.named_parameters()]
        if algo.algorithm == "anil":
            names = [name for name in names if name.startswith(HEAD_PREFIX)]
        self.adapted_names = names
        shapes = dict((name, p.shape) for name, p in self.net.named_parameters())
        self.lrs = nn.ParameterList()
        if algo.algorithm == "metasgd":
            for name in names:
                self.lrs.append(nn.Parameter(torch.full((1, *shapes[name]), algo.inner_lr)))
        elif algo.algorithm == "lslr":
            for name in names:
                self.lrs.append(nn.Parameter(torch.full((algo.inner_steps,), algo.inner_lr)))
        self.loss_fn = loss_function(kind)
        self.functional_forward = make_forward(self.net, dict(self.net.named_buffers()))

    def weights(self) -> Params:
        """θ: the network's meta-learned initial weights, by name."""
        return dict(self.net.named_parameters())

    def inner_lrs(self) -> dict[str, torch.Tensor | float]:
        """The inner learning rate of each adapted parameter (fixed floats or learned tensors)."""
        if len(self.lrs):
            return dict(zip(self.adapted_names, self.lrs))
        return {name: float(self.algo.inner_lr) for name in self.adapted_names}

    def adapt(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, first_order: bool = False
    ) -> Params:
        """Adapted weights for one task's support set (unbatched: ``(S, *input_shape)``)."""
        return adapt(
            self.functional_forward, self.weights(), self.inner_lrs(), support_x, support_y,
            self.loss_fn, steps, first_order,
        )

    def task_objective(
        self,
        params: Params,
        lrs: dict[str, torch.Tensor | float],
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        step_weights: Sequence[float] | None,
    ) -> torch.Tensor:
        """One task's meta-loss: the query loss after adaptation (or MAML++'s weighted sum over steps)."""
        steps, first_order = self.algo.inner_steps, self.algo.is_first_order
        if step_weights is None:
            adapted = adapt(
                self.functional_forward, params, lrs, support_x, support_y, self.loss_fn,
                steps, first_order,
            )
            return self.loss_fn(self.functional_forward(adapted, query_x), query_y)
        trajectory = inner_trajectory(
            self.functional_forward, params, lrs, support_x, support_y, self.loss_fn,
            steps, first_order,
        )
        losses = [
            weight * self.loss_fn(self.functional_forward(adapted, query_x), query_y)
            for weight, adapted in zip(step_weights, trajectory, strict=True)
        ]
        return torch.stack(losses).sum()

    def accumulate_meta_gradient(
        self, batch: TaskBatch, strategy: str, step_weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """Add ∇(mean meta-loss over the batch) to the meta-parameters' ``.grad``; return the mean loss.

        ``vmap`` computes all tasks in one vectorised graph; ``loop`` back-propagates
        task by task, so at most one task's graph is alive at a time.
        """
        params, lrs = self.weights(), self.inner_lrs()

        def objective(sx, sy, qx, qy):
            return self.task_objective(params, lrs, sx, sy, qx, qy, step_weights)

        if strategy == "vmap":
            loss = vmap(objective)(*batch.tensors()).mean()
            loss.backward()
            return loss.detach()
        if strategy != "loop":
            raise ValueError(f"unknown execution strategy {strategy!r}; resolve 'auto' first")
        total = torch.zeros((), dtype=batch.query_x.dtype, device=batch.query_x.device)
        for index in range(batch.n_tasks):
            loss = objective(*(t[index] for t in batch.tensors())) / batch.n_tasks
            loss.backward()
            total += loss.detach()
        return total

    @torch.no_grad()
    def outcome(self, batch: TaskBatch, steps: int, strategy: str) -> BatchOutcome:
        """Per-task query loss (and accuracy) before and after ``steps`` adaptation steps."""
        params, lrs = self.weights(), self.inner_lrs()
        classify = self.kind == "classification"

        def per_task(sx, sy, qx, qy):
            before = self.functional_forward(params, qx)
            adapted = adapt(self.functional_forward, params, lrs, sx, sy, self.loss_fn, steps)
            after = self.functional_forward(adapted, qx)
            results = [self.loss_fn(before, qy), self.loss_fn(after, qy)]
            if classify:
                results += [_accuracy(before, qy), _accuracy(after, qy)]
            return tuple(results)

        stacked = map_tasks(per_task, batch, strategy)
        if classify:
            return BatchOutcome(*stacked)
        return BatchOutcome(stacked[0], stacked[1], None, None)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()


def map_tasks(
    fn: Callable[..., tuple[torch.Tensor, ...]], batch: TaskBatch, strategy: str
) -> tuple[torch.Tensor, ...]:
    """Apply a per-task function to every task of ``batch``; stack its outputs along dim 0."""
    if strategy == "vmap":
        return vmap(fn)(*batch.tensors())
    outputs = [fn(*(t[index] for t in batch.tensors())) for index in range(batch.n_tasks)]
    return tuple(torch.stack(column) for column in zip(*outputs))
