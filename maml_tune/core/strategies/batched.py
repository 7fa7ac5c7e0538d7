"""All tasks of a chunk stacked through one grouped network pass (:mod:`maml_tune.core.batched`)."""

from __future__ import annotations

import torch

from maml_tune.core.batched import stack_params
from maml_tune.core.strategies._base import Strategy


class BatchedStrategy(Strategy):
    name = "batched"

    def meta_loss(self, learner, chunk, step_weights) -> torch.Tensor:
        stacked = stack_params(learner.weights(), chunk.n_tasks)
        return learner.task_objective(
            stacked, learner.inner_lrs(), *chunk.tensors(), step_weights, batched=True
        ).sum()

    def outcome(self, learner, batch, steps, query_norm) -> tuple[torch.Tensor, ...]:
        stacked = stack_params(learner.weights(), batch.n_tasks)
        return learner.task_outcome(
            stacked, learner.inner_lrs(), *batch.tensors(), steps, query_norm, batched=True
        )


STRATEGY = BatchedStrategy()
