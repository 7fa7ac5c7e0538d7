"""Meta-SGD (Li et al. 2017): a learned inner rate for every element of every weight,
initialised at ``algo.inner_lr`` and the same at every inner step."""

import torch

from maml_tune.core.algorithms._base import Algorithm


class MetaSGD(Algorithm):
    name = "metasgd"
    summary = "Meta-SGD (Li et al. 2017): learned per-element inner rates"

    def learned_rate_shape(self, shape: torch.Size, inner_steps: int) -> tuple[int, ...]:
        # One row: every step reuses it (inner.step_lr).
        return (1, *shape)


ALGORITHM = MetaSGD()
