"""Sinusoid regression, exactly as in Finn et al. 2017 (MAML), section 5.1."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from maml_tune.core.tasks import TaskBatch
from maml_tune.errors import ConfigError
from maml_tune.families._contract import TaskFamily, option

MAX_POINTS = 100_000
"""Most support (or query) points per task: a task of this many is already far past few-shot."""


@dataclass(frozen=True)
class SinusoidOptions:
    k_shot: int = option(10, "support points per task (K)", min=1, max=MAX_POINTS)
    k_query: int = option(10, "query points per task", min=1, max=MAX_POINTS)
    amplitude_min: float = option(0.1, "smallest amplitude", min=0.0)
    amplitude_max: float = option(5.0, "largest amplitude", min=0.0)
    phase_max: float = option(math.pi, "phases are drawn from [0, phase_max]", min=0.0)
    x_range: float = option(5.0, "inputs are drawn from [-x_range, x_range]", min=0.0)


class Sinusoid(TaskFamily):
    """Each task is y = A·sin(x − φ) with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]; MSE loss."""

    name = "sinusoid"
    description = "Sinusoid regression (Finn et al. 2017): y = A sin(x - phase), K-shot"
    kind = "regression"
    Options = SinusoidOptions

    def __init__(self, options: Any = None):
        super().__init__(options)
        if self.options.amplitude_min > self.options.amplitude_max:
            raise ConfigError(
                f"family 'sinusoid' option 'amplitude_min': expected <= amplitude_max"
                f" ({self.options.amplitude_max}), got {self.options.amplitude_min}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1,)

    @property
    def output_size(self) -> int:
        return 1

    def default_architecture(self) -> dict[str, Any]:
        return {"kind": "mlp", "depth": 2, "width": 40, "activation": "relu"}

    def literature_config(self) -> dict[str, Any]:
        # Finn et al. 2017: 1-40-40-1 ReLU, alpha 0.01, one step, 25 tasks per batch, Adam 1e-3.
        return {
            "algo.algorithm": "maml",
            "algo.inner_lr": 0.01,
            "algo.inner_steps": 1,
            "train.meta_batch": 25,
            "train.meta_lr": 1e-3,
        }

    def sample(self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device) -> TaskBatch:
        # Splits differ by the caller's generator streams (split_generator); the task
        # parameters are continuous, so no task is shared between splits.
        o = self.options
        n_points = o.k_shot + o.k_query

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            draw = torch.rand(*shape, generator=generator, device=device)
            return low + (high - low) * draw

        amplitude = uniform(o.amplitude_min, o.amplitude_max, n_tasks, 1, 1)
        phase = uniform(0.0, o.phase_max, n_tasks, 1, 1)
        x = uniform(-o.x_range, o.x_range, n_tasks, n_points, 1)
        y = amplitude * torch.sin(x - phase)
        return TaskBatch(x[:, : o.k_shot], y[:, : o.k_shot], x[:, o.k_shot :], y[:, o.k_shot :])
