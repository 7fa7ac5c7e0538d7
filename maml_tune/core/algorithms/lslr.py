"""LSLR, MAML++'s learned per-layer per-step inner rates (Antoniou et al. 2019): one
scalar rate for each weight tensor and inner step, initialised at ``algo.inner_lr``."""

import torch

from maml_tune.core.algorithms._base import Algorithm


class LSLR(Algorithm):
    name = "lslr"
    summary = "MAML++ LSLR (Antoniou et al. 2019): learned per-layer, per-step inner rates"

    def learned_rate_shape(self, shape: torch.Size, inner_steps: int) -> tuple[int, ...]:
        return (inner_steps,)


ALGORITHM = LSLR()
