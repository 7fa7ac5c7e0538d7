"""Reptile (Nichol et al. 2018, "On first-order meta-learning algorithms").

Each task adapts on its support set; the meta-gradient of θ is the mean over tasks of
θ − θ'_task, so the outer optimiser moves θ towards the adapted weights (with plain SGD
at rate ε this is Reptile's batched update θ ← θ + ε·mean(θ' − θ)). No gradient flows
through the inner loop or the query set; the query loss after adaptation is only
reported (it is what validation and the search measure anyway).
"""

from collections.abc import Iterator, Sequence

import torch

from maml_tune.core.algorithms._base import Algorithm, QueryLoss
from maml_tune.core.inner import Params, final_params
from maml_tune.errors import ConfigError


class Reptile(Algorithm):
    name = "reptile"
    summary = "Reptile (Nichol et al. 2018): θ moves towards each task's adapted weights"
    always_first_order = True

    def validate(self, algo) -> None:
        if algo.multi_step_loss:
            raise ConfigError("algo.multi_step_loss needs a query-loss meta-objective; reptile has none")

    def meta_loss(
        self,
        params: Params,
        trajectory: Iterator[Params],
        query_loss: QueryLoss,
        step_weights: Sequence[float] | None,
        task_dim: int,
    ) -> torch.Tensor:
        adapted = final_params(trajectory, params)
        with torch.no_grad():
            reported = query_loss(adapted)
        # ½‖θ − θ'‖² with θ' held constant has gradient θ − θ'; adding it minus its own
        # value leaves the reported loss as the value and that pull as the gradient.
        pull = sum(
            0.5 * (params[name] - adapted[name].detach()).square().flatten(task_dim).sum(-1)
            for name in params
        )
        return reported + pull - pull.detach()


ALGORITHM = Reptile()
