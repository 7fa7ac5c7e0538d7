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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maml_tune.core.inner import Forward, Params
from maml_tune.core.nets import BatchStatNorm, ConvNet


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
    return F.conv2d(
        x, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1),
        stride=module.stride, padding=module.padding, groups=n_tasks,
    )


def _norm(params: Params, prefix: str, module: BatchStatNorm, x: torch.Tensor) -> torch.Tensor:
    # Channels of (N, T*C, H, W) are per-task, so batch statistics over (N, H, W) are each
    # task's own. Outside vmap the fused kernel's double backward is exact (tested against
    # the float64 reference) and saves far less memory than the mean/var formulation.
    weight = params[f"{prefix}.weight"].reshape(-1)
    bias = params[f"{prefix}.bias"].reshape(-1)
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=module.eps)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
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


def make_batched_forward(net: nn.Module) -> Forward:
    """``forward(stacked_params, x)`` for inputs ``(T, N, *input_shape)`` → ``(T, N, outputs)``.

    Interprets the layers built by :mod:`maml_tune.core.nets` (it raises for any other
    module, so a new layer type cannot be silently mis-batched).
    """
    layers = _pool_before_activation(list(net.body.named_children()))
    is_conv = isinstance(net, ConvNet)

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        n_tasks, n = x.shape[0], x.shape[1]
        if is_conv:
            # (T, N, C, H, W) → (N, T*C, H, W): tasks side by side in the channel dimension.
            h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
            if h.device.type == "cpu":  # measured on CPU only; CUDA keeps its default layout
                h = _channels_last(h)
        else:
            h = x.flatten(2)
        for index, module in layers:
            prefix = f"body.{index}"
            if isinstance(module, nn.Linear):
                h = _linear(params, prefix, h)
            elif isinstance(module, nn.Conv2d):
                h = _conv(params, prefix, module, h, n_tasks)
            elif isinstance(module, BatchStatNorm):
                h = _norm(params, prefix, module, h)
            elif isinstance(module, (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.MaxPool2d)):
                h = module(h)
            else:
                raise TypeError(f"no batched rule for layer {prefix} ({type(module).__name__})")
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
