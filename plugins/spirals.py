"""Spirals: N-way few-shot classification of points on interleaved 2-D spiral arms.

An example maml-tune task-family plugin (see ``plugins/README.md``). Each task is a
spiral galaxy of ``n_way`` arms: arm ``c`` holds the points at radius ``r`` in
``[0.15, 1]`` and angle ``θ = rotation + 2πc/n_way + 2π·turns·r``, jittered by Gaussian
``noise`` and magnified by a per-task ``scale``. Every task draws its own rotation, scale,
direction of winding (clockwise or not) and assignment of arms to labels, so no single
classifier solves them all: the model has to *adapt* to the ``k_shot`` labelled support
points of each arm to classify the ``k_query`` query points. ``turns = 0`` gives straight
rays (an easy, nearly linear problem); every extra half turn makes the decision
boundaries curlier.

Splits: task parameters and point positions are continuous, so train, val and test tasks
never share a point; they differ by the generator stream the engine passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from maml_tune.core.tasks import TaskBatch
from maml_tune.families import TaskFamily, option


@dataclass(frozen=True)
class SpiralsOptions:
    n_way: int = option(3, "spiral arms per task, i.e. classes (N)", min=2, max=10)
    k_shot: int = option(5, "labelled support points per arm (K)", min=1)
    k_query: int = option(15, "query points per arm", min=1)
    turns: float = option(0.5, "how many times each arm winds around the centre", min=0.0, max=3.0)
    noise: float = option(0.05, "std of the Gaussian jitter of each point, relative to the radius 1", min=0.0)
    scale_min: float = option(0.5, "smallest per-task magnification", min=0.01)
    scale_max: float = option(2.0, "largest per-task magnification", min=0.01)
    random_winding: bool = option(True, "also draw the winding direction per task")


class Spirals(TaskFamily):
    """N interleaved spiral arms per task with random rotation, scale, winding and labels."""

    name = "spirals"
    description = "N-way 2-D classification of interleaved spiral arms (random rotation/scale per task)"
    kind = "classification"
    Options = SpiralsOptions

    def __init__(self, options: Any = None):
        super().__init__(options)
        if self.options.scale_min > self.options.scale_max:
            from maml_tune.errors import ConfigError

            raise ConfigError(
                f"family 'spirals' option 'scale_min': expected <= scale_max "
                f"({self.options.scale_max}), got {self.options.scale_min}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2,)  # (x, y) coordinates

    @property
    def output_size(self) -> int:
        return self.options.n_way

    def default_architecture(self) -> dict[str, Any]:
        # Small inputs, curved boundaries: the 2-hidden-layer MLP of Finn et al.'s regression
        # experiments, wider so one inner step can bend its boundaries enough.
        return {"kind": "mlp", "depth": 2, "width": 64, "activation": "relu"}

    def literature_config(self) -> dict[str, Any]:
        # No published baseline exists for this toy family. These follow Finn et al. 2017's
        # few-shot classification recipe (second-order MAML, one inner step, Adam 1e-3 on
        # 16-task meta-batches) with the inner rate raised for a 2-D MLP: on the default
        # options, 200 meta-iterations reach about 75% 3-way test accuracy with one step
        # (more test-time steps overshoot at this rate).
        return {
            "algo.algorithm": "maml",
            "algo.inner_lr": 0.5,
            "algo.inner_steps": 1,
            "train.meta_batch": 16,
            "train.meta_lr": 1e-3,
        }

    def default_search_space(self) -> dict[str, dict[str, Any]]:
        # The library's MLP space, with the inner rate moved up: classification of
        # unnormalised 2-D points needs larger inner steps than sinusoid regression.
        space = super().default_search_space()
        space["algo.inner_lr"] = {"type": "float", "low": 0.05, "high": 2.0, "log": True}
        return space

    def sample(
        self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device
    ) -> TaskBatch:
        o = self.options
        n, per_arm = o.n_way, o.k_shot + o.k_query

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

        # Per-task parameters, shaped to broadcast over (task, arm, point).
        rotation = uniform(0.0, 2 * math.pi, n_tasks, 1, 1)
        scale = uniform(o.scale_min, o.scale_max, n_tasks, 1, 1)
        if o.random_winding:
            winding = torch.randint(0, 2, (n_tasks, 1, 1), generator=generator, device=device) * 2 - 1
        else:
            winding = torch.ones(n_tasks, 1, 1, device=device)
        # A random permutation of the labels per task: which arm is class 0, 1, ...
        labels = torch.rand(n_tasks, n, generator=generator, device=device).argsort(dim=1)

        radius = uniform(0.15, 1.0, n_tasks, n, per_arm)
        arm = torch.arange(n, device=device).view(1, n, 1)
        angle = rotation + 2 * math.pi * arm / n + winding * 2 * math.pi * o.turns * radius
        points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1)
        points = points + o.noise * torch.randn(
            n_tasks, n, per_arm, 2, generator=generator, device=device
        )
        points = (points * scale.unsqueeze(-1)).float()  # (T, N, K+Q, 2)
        targets = labels.unsqueeze(-1).expand(n_tasks, n, per_arm)  # (T, N, K+Q) int64

        support_x = points[:, :, : o.k_shot].reshape(n_tasks, n * o.k_shot, 2)
        support_y = targets[:, :, : o.k_shot].reshape(n_tasks, n * o.k_shot)
        query_x = points[:, :, o.k_shot :].reshape(n_tasks, n * o.k_query, 2)
        query_y = targets[:, :, o.k_shot :].reshape(n_tasks, n * o.k_query)
        return TaskBatch(support_x, support_y, query_x, query_y)
