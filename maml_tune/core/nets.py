"""Networks built from :class:`~maml_tune.core.config.ArchConfig`.

Both networks are ordinary ``nn.Module`` s whose parameters are the meta-learned
initialisation; the inner loop runs them functionally (``torch.func.functional_call``)
with adapted weights. Neither has buffers or mutable state, so they are vmap-safe.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from maml_tune.errors import ConfigError

if TYPE_CHECKING:
    from maml_tune.core.config import ArchConfig

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

HEAD_PREFIX = "head."


def batch_statistics(x: torch.Tensor, stat_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) per channel of ``x`` ``(N, C, H, W)`` over (N, H, W), from its
    first ``stat_rows`` examples (``None``: all of them).

    Two passes (the mean, then the mean squared deviation): in float32 within ~5e-7 of
    float64 in either memory layout, where the batch-norm kernels' statistics of a
    channels-last CPU tensor err by 3e-4 to 7e-4 of a standard deviation on sparse images,
    and about 6x faster on CPU than the Welford reductions of ``torch.var``/``var_mean``
    (``benchmarks/batch_statistics.py``, benchmarks/RESULTS.md).
    """
    sample = x[:stat_rows]
    mean = sample.mean(dim=(0, 2, 3))
    return (sample - mean.view(1, -1, 1, 1)).square().mean(dim=(0, 2, 3)), mean


def batch_stat_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, stat_rows: int | None = None
) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` normalised per channel with :func:`batch_statistics`."""
    var, mean = batch_statistics(x, stat_rows)
    scale = weight * torch.rsqrt(var + eps)
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) * scale.view(shape) + bias.view(shape)


class BatchStatNorm(nn.Module):
    """Normalisation with the current batch's statistics, as MAML uses it (also at test time).

    Written with plain reductions instead of ``F.batch_norm``: under ``torch.func.vmap`` the
    latter's second-order gradient is wrong for every parameter upstream of the norm.
    No running statistics, so nothing is mutated during a forward pass. ``stat_rows``
    takes the statistics from the first rows of the batch only (the support set, in
    ``support`` query normalisation; see :class:`~maml_tune.core.config.AlgoConfig`).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            # Under autocast: statistics in float32 (bf16 has an 8-bit mantissa).
            with torch.autocast(x.device.type, enabled=False):
                return batch_stat_norm(x.float(), self.weight, self.bias, self.eps, stat_rows)
        return batch_stat_norm(x, self.weight, self.bias, self.eps, stat_rows)


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units, then a linear head (Finn et al.: 1-40-40-1)."""

    def __init__(self, arch: ArchConfig, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        features = math.prod(input_shape)
        for _ in range(arch.depth):
            layers += [nn.Linear(features, arch.width), _ACTIVATIONS[arch.activation]()]
            features = arch.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, output_size)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        # No normalisation: ``stat_rows`` changes nothing.
        return self.head(self.body(x.flatten(1)))


class ConvNet(nn.Module):
    """``blocks`` × (3×3 conv → batch-statistics norm → ReLU → 2×2 max-pool or stride 2), linear head."""

    def __init__(self, arch: ArchConfig, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"arch.kind: conv needs (channels, height, width) inputs, got {input_shape}"
            )
        self.pool = arch.pools
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for _ in range(arch.blocks):
            stride = 1 if self.pool else 2
            layers.append(nn.Conv2d(channels, arch.channels, 3, stride=stride, padding=1))
            if arch.norm == "batch":
                layers.append(BatchStatNorm(arch.channels))
            layers.append(_ACTIVATIONS[arch.activation]())
            if self.pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=arch.pool_keeps_partial_windows))
            channels = arch.channels
        self.body = nn.Sequential(*layers)
        with torch.no_grad():
            features = self.body(torch.zeros(2, *input_shape)).flatten(1).shape[1]
        self.head = nn.Linear(features, output_size)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        """Logits for ``x``; norms take their statistics from its first ``stat_rows`` examples."""
        for layer in self.body:
            x = layer(x, stat_rows) if isinstance(layer, BatchStatNorm) else layer(x)
        return self.head(x.flatten(1))


def build_network(arch: ArchConfig, input_shape: tuple[int, ...], output_size: int) -> nn.Module:
    """The network for ``arch``; its final layer is named ``head`` (what ANIL adapts)."""
    cls = MLP if arch.kind == "mlp" else ConvNet
    return cls(arch, tuple(input_shape), output_size)
