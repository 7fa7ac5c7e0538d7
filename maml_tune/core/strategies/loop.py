"""The per-task loop: one task's graph alive at a time; the plain PyTorch baseline."""

from __future__ import annotations

import torch

from maml_tune.core.strategies._base import Strategy


class LoopStrategy(Strategy):
    name = "loop"
    one_task_per_pass = True

    def meta_loss(self, learner, chunk, step_weights) -> torch.Tensor:
        return learner.task_objective(
            learner.weights(), learner.inner_lrs(), *(t[0] for t in chunk.tensors()), step_weights
        )

    def outcome(self, learner, batch, steps, query_norm) -> tuple[torch.Tensor, ...]:
        params, lrs = learner.weights(), learner.inner_lrs()
        per_task = [
            learner.task_outcome(params, lrs, *(t[index] for t in batch.tensors()), steps, query_norm)
            for index in range(batch.n_tasks)
        ]
        return tuple(torch.stack(column) for column in zip(*per_task))


STRATEGY = LoopStrategy()
