"""Networks built from :class:`~maml_tune.core.config.ArchConfig`.

Every network is an ordinary ``nn.Module`` whose parameters are the meta-learned
initialisation; the inner loop runs it functionally (``torch.func.functional_call``)
with adapted weights. None has buffers or mutable state, so all are vmap-safe. The final
layer is named ``head`` and is one of the :data:`~maml_tune.core.config.HEADS`: its
:meth:`~FixedHead.task_rows` are the head weights a task's inner loop starts from.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
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

RESNET12_WIDTHS = (1.0, 2.5, 5.0, 10.0)
"""ResNet-12's stage widths as multiples of ``arch.channels`` (64 gives the standard
64-160-320-640 of Lee et al.'s MetaOptNet backbone)."""


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


class FixedHead(nn.Linear):
    """``arch.head = fixed``: one meta-learned row per output."""

    def task_rows(self, n_outputs: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head weights a task's inner loop starts from, for ``n_outputs`` outputs (here
        always the layer's own; ``like`` gives the dtype and device of created rows)."""
        if n_outputs != self.out_features:
            raise ConfigError(
                f"this network's head is fixed at {self.out_features} outputs (arch.head = fixed), "
                f"not {n_outputs}; meta-train with arch.head = zero or shared to use any number"
            )
        return {"weight": self.weight, "bias": self.bias}


class SharedHead(nn.Module):
    """``arch.head = shared``: one meta-learned row (``weight (1, F)``, ``bias (1,)``), copied
    to every output when a task starts, so each class adapts from the same vector."""

    def __init__(self, features: int):
        super().__init__()
        template = nn.Linear(features, 1)  # nn.Linear's initialisation of one row
        self.weight, self.bias = template.weight, template.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def task_rows(self, n_outputs: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.expand(n_outputs, -1), "bias": self.bias.expand(n_outputs)}


class ZeroHead(nn.Module):
    """``arch.head = zero``: no meta-parameters; a task's head starts at zero. The weights
    are always supplied with the call (``functional_call``), never stored."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise ConfigError("a zero head has no weights of its own: run the network with task weights")
        return F.linear(x, self.weight, self.bias)

    def task_rows(self, n_outputs: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        # Leaves that record when autograd does, so the inner loop can differentiate them.
        grad = torch.is_grad_enabled()
        options = {"dtype": like.dtype, "device": like.device, "requires_grad": grad}
        return {
            "weight": torch.zeros(n_outputs, self.features, **options),
            "bias": torch.zeros(n_outputs, **options),
        }


_HEADS = {"fixed": FixedHead, "shared": SharedHead, "zero": ZeroHead}


def build_head(arch: ArchConfig, features: int, output_size: int) -> nn.Module:
    """The ``head`` of a network with ``features`` inputs to it (:data:`~maml_tune.core.config.HEADS`)."""
    if arch.head == "fixed":
        return FixedHead(features, output_size)
    return _HEADS[arch.head](features)


def run_layers(layers: nn.Sequential, x: torch.Tensor, stat_rows: int | None) -> torch.Tensor:
    """``x`` through ``layers``; norms (and blocks holding them) take ``stat_rows``."""
    for layer in layers:
        x = layer(x, stat_rows) if isinstance(layer, (BatchStatNorm, ResidualBlock)) else layer(x)
    return x


def _image_input(kind: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ConfigError(
            f"arch.kind: {kind} needs (channels, height, width) inputs, got {input_shape}"
        )


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
        self.head = build_head(arch, features, output_size)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        # No normalisation: ``stat_rows`` changes nothing.
        return self.head(self.body(x.flatten(1)))


class ConvNet(nn.Module):
    """``blocks`` × (3×3 conv → batch-statistics norm → ReLU → 2×2 max-pool or stride 2), linear head."""

    def __init__(self, arch: ArchConfig, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        _image_input(arch.kind, input_shape)
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
        self.head = build_head(arch, features, output_size)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        """Logits for ``x``; norms take their statistics from its first ``stat_rows`` examples."""
        return self.head(run_layers(self.body, x, stat_rows).flatten(1))


class ResidualBlock(nn.Module):
    """One ResNet-12 stage: ``main`` (3 × 3×3 conv, each but the last followed by its norm
    and activation; the last by its norm), plus ``shortcut`` (a 1×1 conv and norm), then
    ``after`` (the activation and the downsampling max-pool)."""

    def __init__(self, in_channels: int, out_channels: int, arch: ArchConfig):
        super().__init__()
        stride = 1 if arch.pools else 2

        def conv_norm(channels: int, size: int, conv_stride: int) -> list[nn.Module]:
            conv = nn.Conv2d(channels, out_channels, size, stride=conv_stride, padding=size // 2)
            return [conv, BatchStatNorm(out_channels)] if arch.norm == "batch" else [conv]

        activation = _ACTIVATIONS[arch.activation]
        self.main = nn.Sequential(
            *conv_norm(in_channels, 3, stride), activation(),
            *conv_norm(out_channels, 3, 1), activation(),
            *conv_norm(out_channels, 3, 1),
        )
        self.shortcut = nn.Sequential(*conv_norm(in_channels, 1, stride))
        pool = [nn.MaxPool2d(2, ceil_mode=arch.pool_keeps_partial_windows)] if arch.pools else []
        self.after = nn.Sequential(activation(), *pool)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        residual = run_layers(self.main, x, stat_rows) + run_layers(self.shortcut, x, stat_rows)
        return run_layers(self.after, residual, stat_rows)


class ResNet12(nn.Module):
    """Four :class:`ResidualBlock` stages of widths ``arch.channels`` × :data:`RESNET12_WIDTHS`,
    global average pooling, linear head: the standard few-shot backbone (Oreshkin et al.'s
    TADAM, Lee et al.'s MetaOptNet), with MAML's batch-statistics norms."""

    def __init__(self, arch: ArchConfig, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        _image_input(arch.kind, input_shape)
        stages: list[nn.Module] = []
        channels = input_shape[0]
        for multiple in RESNET12_WIDTHS:
            width = max(1, round(arch.channels * multiple))
            stages.append(ResidualBlock(channels, width, arch))
            channels = width
        self.body = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1))
        self.head = build_head(arch, channels, output_size)

    def forward(self, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        return self.head(run_layers(self.body, x, stat_rows).flatten(1))


_NETWORKS = {"mlp": MLP, "conv": ConvNet, "resnet12": ResNet12}
IMAGE_NETWORKS = (ConvNet, ResNet12)
"""The networks that take ``(channels, height, width)`` images."""


def build_network(arch: ArchConfig, input_shape: tuple[int, ...], output_size: int) -> nn.Module:
    """The network for ``arch``; its final layer is named ``head`` (what ANIL adapts)."""
    return _NETWORKS[arch.kind](arch, tuple(input_shape), output_size)
