"""Batched-by-construction execution: all tasks of a meta-batch in one network pass.

Each parameter is stacked along a leading task dimension ``T``; convolutions run as one
grouped convolution with ``groups=T`` (task ``t``'s filters see only task ``t``'s
channels), linear layers as one batched matmul, and the batch-statistics norm computes
its statistics per task. Gradients of the *sum* of per-task losses with respect to the
stacked parameters are exactly the per-task gradients, so the ordinary inner loop
(:func:`~maml_tune.core.inner.inner_trajectory`) adapts every task at once.

Two rewrites make the conv net cheaper without changing the function it computes
(benchmarks/RESULTS.md has the measurements): on CPU, images flow through the network
in channels-last memory (oneDNN's convolutions and PyTorch's norm and max-pool kernels
are several times faster there than in the default layout), and a ReLU (or leaky ReLU)
followed by max-pooling runs after the pooling, on a quarter of the values. Both are
monotone non-decreasing, so ``relu(max(x)) == max(relu(x))`` exactly, and the gradients
agree too (the float64 tests check it).

On CPU, each conv → batch-statistics norm → max-pool block also runs as one fused
operation (:mod:`maml_tune.core.fused`, where the derivation is written out). Which of
these rewrites apply on which device is decided in one place, :func:`kernel_plan`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maml_tune.core.fused import conv_norm_pool, patch_route_pays
from maml_tune.core.inner import Forward, Params
from maml_tune.core.nets import IMAGE_NETWORKS, BatchStatNorm, ResidualBlock, batch_stat_norm


def stack_params(params: Params, n_tasks: int) -> Params:
    """Every parameter repeated along a new leading task dimension (a view: no copy)."""
    return {name: p.expand(n_tasks, *p.shape) for name, p in params.items()}


def _linear(params: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    # x: (T, N, in); weight: (T, out, in); bias: (T, out)
    weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _conv(params: Params, prefix: str, module: nn.Conv2d, x: torch.Tensor, n_tasks: int) -> torch.Tensor:
    # x: (N, T*C_in, H, W); weight: (T, C_out, C_in, k, k) → (T*C_out, C_in, k, k)
    weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
    stride = module.stride
    if module.kernel_size == (1, 1) and module.padding == (0, 0) and stride != (1, 1):
        # The same function as the strided 1x1 conv (ResNet-12's strided shortcut), whose
        # oneDNN double backward on channels-last CPU tensors corrupted the heap (torch 2.13,
        # one task per pass: about every second run crashed).
        x, stride = x[:, :, :: stride[0], :: stride[1]], (1, 1)
        x = channels_last(x) if kernel_plan(x.device).channels_last else x.contiguous()
    return F.conv2d(
        x, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1),
        stride=stride, padding=module.padding, groups=n_tasks,
    )



class KernelPlan(NamedTuple):
    """Which rewrites of the conv net the batched forward applies (all compute the same function)."""

    channels_last: bool
    """Images flow in channels-last memory (oneDNN's convolutions and PyTorch's CPU norm and
    max-pool kernels are several times faster there)."""
    fused: bool
    """conv → norm → max-pool blocks run as :func:`~maml_tune.core.fused.conv_norm_pool`."""
    native_norm: bool
    """Unfused norms use ``F.batch_norm``: on CUDA (default layout) its double backward is
    exact outside vmap (tested against the float64 reference) and saves far more memory than
    the two-pass formulation; on CPU tensors are channels-last, where its float32 statistics
    are not accurate, so :func:`~maml_tune.core.nets.batch_stat_norm` is used."""


def kernel_plan(device: torch.device) -> KernelPlan:
    """The rewrites for ``device``, measured on CPU only (benchmarks/RESULTS.md): CUDA keeps its
    default layout and PyTorch's own kernels, as does reduced precision (the fused norm keeps
    its statistics in the input dtype)."""
    cpu = device.type == "cpu"
    return KernelPlan(
        channels_last=cpu, fused=cpu and not torch.is_autocast_enabled("cpu"), native_norm=not cpu
    )


def _norm(
    params: Params, prefix: str, module: BatchStatNorm, x: torch.Tensor, stat_rows: int | None
) -> torch.Tensor:
    # Channels of (N, T*C, H, W) are per-task, so batch statistics over (N, H, W) are each task's own.
    weight = params[f"{prefix}.weight"].reshape(-1)
    bias = params[f"{prefix}.bias"].reshape(-1)
    if kernel_plan(x.device).native_norm and stat_rows is None:
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=module.eps)
    return batch_stat_norm(x, weight, bias, module.eps, stat_rows)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` copied into channels-last memory.

    ``Tensor.contiguous(memory_format=...)`` cannot be used: with one channel (Omniglot's
    images) the default strides already count as channels-last and nothing is copied, yet
    the convolution would then pick the default layout for its output.
    """
    _, c, h, w = x.shape
    out = torch.empty_strided(x.shape, (h * w * c, 1, w * c, c), dtype=x.dtype, device=x.device)
    return out.copy_(x)


def _pool_before_activation(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """``layers`` with every ReLU or leaky ReLU that feeds a max-pool moved after it."""
    ordered = list(layers)
    for i in range(len(ordered) - 1):
        activation, pool = ordered[i][1], ordered[i + 1][1]
        monotone = isinstance(activation, nn.ReLU) or (
            isinstance(activation, nn.LeakyReLU) and activation.negative_slope >= 0
        )
        if monotone and isinstance(pool, nn.MaxPool2d):
            ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    return ordered


_PER_CHANNEL = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d)

Layer = Callable[[Params, torch.Tensor, int, "int | None"], torch.Tensor]


def _layer(prefix: str, module: nn.Module) -> Layer:
    """One layer as ``layer(stacked_params, h, n_tasks, stat_rows)``."""
    if isinstance(module, nn.Linear):
        return lambda params, h, n_tasks, stat_rows: _linear(params, prefix, h)
    if isinstance(module, nn.Conv2d):
        return lambda params, h, n_tasks, stat_rows: _conv(params, prefix, module, h, n_tasks)
    if isinstance(module, BatchStatNorm):
        return lambda params, h, n_tasks, stat_rows: _norm(params, prefix, module, h, stat_rows)
    if isinstance(module, ResidualBlock):
        return _residual(prefix, module)
    # Per-channel maps and pools: a task's channels are its own in (N, T*C, H, W).
    if isinstance(module, _PER_CHANNEL):
        return lambda params, h, n_tasks, stat_rows: module(h)
    raise TypeError(f"no batched rule for layer {prefix} ({type(module).__name__})")


def _named(prefix: str, layers: nn.Sequential) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{index}", module) for index, module in layers.named_children()]


def _residual(prefix: str, block: ResidualBlock) -> Layer:
    """A residual stage as one batched step: its main path plus its shortcut, then the rest."""
    main = _plan(_named(f"{prefix}.main", block.main), fuse=False)
    shortcut = _plan(_named(f"{prefix}.shortcut", block.shortcut), fuse=False)
    after = _plan(_pool_before_activation(_named(f"{prefix}.after", block.after)), fuse=False)

    def run(steps: list[Layer], params: Params, h: torch.Tensor, n_tasks: int, stat_rows: int | None):
        for step in steps:
            h = step(params, h, n_tasks, stat_rows)
        return h

    def residual(params: Params, h: torch.Tensor, n_tasks: int, stat_rows: int | None) -> torch.Tensor:
        total = run(main, params, h, n_tasks, stat_rows) + run(shortcut, params, h, n_tasks, stat_rows)
        return run(after, params, total, n_tasks, stat_rows)

    return residual


def _plan(layers: list[tuple[str, nn.Module]], fuse: bool) -> list[Layer]:
    """The layers as batched steps; with ``fuse``, each conv → norm → max-pool as one step."""
    steps, i = [], 0
    while i < len(layers):
        modules = [module for _, module in layers[i:i + 3]]
        kinds = (nn.Conv2d, BatchStatNorm, nn.MaxPool2d)
        if fuse and len(modules) == 3 and all(map(isinstance, modules, kinds)):
            conv, norm, pool = layers[i], layers[i + 1], modules[2]
            patch_route = patch_route_pays(conv[1], pool)
            steps.append(
                functools.partial(conv_norm_pool, conv=conv, norm=norm, pool=pool, patch_route=patch_route)
            )
            i += 3
        else:
            steps.append(_layer(*layers[i]))
            i += 1
    return steps


def make_batched_forward(net: nn.Module) -> Forward:
    """``forward(stacked_params, x, stat_rows=None)`` for inputs ``(T, N, *input_shape)`` →
    ``(T, N, outputs)``; each task's norms use the statistics of its first ``stat_rows``
    examples (``None``: all).

    Interprets the layers built by :mod:`maml_tune.core.nets` (it raises for any other
    module, so a new layer type cannot be silently mis-batched).
    """
    layers = _pool_before_activation(_named("body", net.body))
    plain, fused = _plan(layers, fuse=False), _plan(layers, fuse=True)
    is_conv = isinstance(net, IMAGE_NETWORKS)

    def forward(params: Params, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        n_tasks, n = x.shape[0], x.shape[1]
        steps = plain
        if is_conv:
            # (T, N, C, H, W) → (N, T*C, H, W): tasks side by side in the channel dimension.
            h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
            plan = kernel_plan(h.device)
            if plan.channels_last:
                h = channels_last(h)
            if plan.fused:
                steps = fused
        else:
            h = x.flatten(2)
        for step in steps:
            h = step(params, h, n_tasks, stat_rows)
        if is_conv:
            h = h.reshape(n, n_tasks, -1).transpose(0, 1)
        return _linear(params, "head", h)

    return forward


def per_task_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(T, N, …)`` outputs and targets → the ``(T,)`` per-task mean losses (MSE or cross-entropy)."""
    if kind == "regression":
        return lambda out, y: (out - y).pow(2).flatten(1).mean(dim=1)

    def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        return losses.view(labels.shape).mean(dim=1)

    return cross_entropy
