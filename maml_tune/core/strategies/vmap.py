"""Tasks vectorised with ``torch.func.vmap``: one kernel per op for all tasks."""

from __future__ import annotations

import torch
from torch.func import vmap

from maml_tune.core.strategies._base import Strategy


class VmapStrategy(Strategy):
    name = "vmap"
    supports_checkpoint_inner = False

    def meta_loss(self, learner, chunk, step_weights) -> torch.Tensor:
        params, lrs = learner.weights(), learner.inner_lrs()

        def objective(sx, sy, qx, qy):
            # Under vmap the support gradients need torch.func.grad (functional_grad).
            return learner.task_objective(params, lrs, sx, sy, qx, qy, step_weights, functional_grad=True)

        return vmap(objective)(*chunk.tensors()).sum()

    def outcome(self, learner, batch, steps, query_norm) -> tuple[torch.Tensor, ...]:
        params, lrs = learner.weights(), learner.inner_lrs()

        def per_task(sx, sy, qx, qy):
            return learner.task_outcome(params, lrs, sx, sy, qx, qy, steps, query_norm)

        return vmap(per_task)(*batch.tensors())


STRATEGY = VmapStrategy()
