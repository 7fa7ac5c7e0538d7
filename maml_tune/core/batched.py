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
operation (:class:`_PooledBatchNorm`): the norm is applied after the pooling, to a
quarter of the values, with the statistics of the unpooled activations. Normalising is
an increasing map per channel when its scale is non-negative, so it commutes with max-
pooling; a channel with a negative scale has its conv filter and scale negated first
(``γ·norm(y) == (−γ)·norm(−y)``), which leaves the function unchanged. This saves the
full-size normalised activation, its pooling and the norm's own backward kernels; the
backward pass is written in ordinary differentiable operations, whose double backward
(second-order MAML) is far cheaper than PyTorch's batch-norm double backward. The first
block, whose input is data, goes further with one task per pass
(:class:`_DataConvPooledBatchNorm`): its statistics and the dense part of its filter
gradient come from the moments of the input patches, so the backward pass never forms
the full-size gradient of the conv output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maml_tune.core.inner import Forward, Params
from maml_tune.core.nets import BatchStatNorm, ConvNet, batch_stat_norm, batch_statistics


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


def _norm(
    params: Params, prefix: str, module: BatchStatNorm, x: torch.Tensor, stat_rows: int | None
) -> torch.Tensor:
    # Channels of (N, T*C, H, W) are per-task, so batch statistics over (N, H, W) are each
    # task's own. On CUDA (default layout) the fused kernel's double backward is exact
    # outside vmap (tested against the float64 reference) and saves far more memory than
    # the two-pass formulation; on CPU tensors are channels-last, where its statistics
    # are not accurate in float32.
    weight = params[f"{prefix}.weight"].reshape(-1)
    bias = params[f"{prefix}.bias"].reshape(-1)
    if x.device.type == "cpu" or stat_rows is not None:
        return batch_stat_norm(x, weight, bias, module.eps, stat_rows)
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=module.eps)


class _PooledBatchNorm(torch.autograd.Function):
    """``max_pool(batch_norm(y))`` for a non-negative norm scale, normalising after pooling.

    ``y``: ``(N, C, H, W)`` conv output; ``weight`` (≥ 0) and ``bias``: ``(C,)``. The
    statistics are those of the first ``stat_rows`` examples of ``y`` (``None``: all), as
    in the unfused norm.
    """

    @staticmethod
    def forward(y, weight, bias, eps: float, pool: nn.MaxPool2d, stat_rows: int | None):
        var, mean = batch_statistics(y, stat_rows)
        pooled, indices = F.max_pool2d_with_indices(
            y, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
        )
        return _normalise(pooled, weight, bias, mean, var, eps), indices, pooled, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, weight, _, eps, pool, stat_rows = inputs
        _, indices, pooled, mean, var = output
        ctx.save_for_backward(y, weight, indices, pooled, mean, var)
        ctx.mark_non_differentiable(indices, pooled, mean, var)
        ctx.set_materialize_grads(False)  # nothing flows into those outputs: no zero tensors
        ctx.eps, ctx.pool, ctx.stat_rows = eps, pool, stat_rows

    @staticmethod
    def backward(ctx, grad_out, *_):
        y, weight, indices, pooled, mean, var = ctx.saved_tensors
        grads = _pooled_norm_backward(ctx, grad_out, y, weight, indices, pooled, mean, var)
        return *grads, None, None, None


def _pooled_norm_backward(ctx, grad_out, y, weight, indices, pooled, mean, var):
    """(grad of y, of the norm's weight, of its bias) for :class:`_PooledBatchNorm`.

    Every example's output depends on the statistics, but only the first ``stat_rows``
    examples feed them, so only those get the dense part ``slope·y + offset``.
    """
    differentiable = torch.is_grad_enabled()
    rows = y.shape[0] if ctx.stat_rows is None else ctx.stat_rows
    if differentiable:
        # create_graph (second order): the statistics and pooled values are recomputed
        # from y with differentiable ops, so the double backward sees their dependence on y.
        var, mean = batch_statistics(y, rows)
        pooled = y.flatten(2).gather(2, indices.flatten(2)).view_as(grad_out)
    count = rows * y.shape[2] * y.shape[3]
    grad_pooled, grad_weight, grad_bias, slope, offset = _norm_backward(
        grad_out, pooled, weight, mean, var, ctx.eps, count, differentiable
    )
    grad_y = _unpool(grad_pooled, y, indices, ctx.pool)
    if differentiable:
        dense = torch.addcmul(_per_channel(offset), y[:rows], _per_channel(slope))
        if rows == y.shape[0]:
            return grad_y + dense, grad_weight, grad_bias
        return torch.cat((grad_y[:rows] + dense, grad_y[rows:])), grad_weight, grad_bias
    grad_y[:rows].addcmul_(y[:rows], _per_channel(slope)).add_(_per_channel(offset))
    return grad_y, grad_weight, grad_bias


class _DataConvPooledBatchNorm(torch.autograd.Function):
    """``max_pool(batch_norm(conv(x)))`` for a first layer: ``x`` is data, one task per pass.

    The dense part of the norm's backward pass (``slope·y + offset``) never touches the
    full-size conv output: its contribution to the filters' gradient is a product with
    the moments of the input patches, as are the norm's statistics themselves
    (``mean = W·μ + b``, ``var = W·Σ·Wᵀ``). Only the pooled gradient is spread to full
    size, and its filter gradient is one matrix product with the patches.
    """

    @staticmethod
    def forward(
        x, filters, conv_bias, weight, bias, eps: float, conv: nn.Conv2d, pool: nn.MaxPool2d,
        stat_rows: int | None,
    ):
        y = F.conv2d(x, filters, conv_bias, conv.stride, conv.padding, conv.dilation)
        pooled, indices = F.max_pool2d_with_indices(
            y, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
        )
        patches = _patches(x, conv)  # rows ordered by example, then output position
        rows = x.shape[0] if stat_rows is None else stat_rows
        patch_mean, patch_cov = _patch_moments(patches[: rows * (patches.shape[0] // x.shape[0])])
        flat = filters.flatten(1).to(patch_cov.dtype)
        mean = (flat @ patch_mean + conv_bias).to(y.dtype)
        var = ((flat @ patch_cov) * flat).sum(dim=1).to(y.dtype)
        out = _normalise(pooled, weight, bias, mean, var, eps)
        return out, indices, pooled, mean, var, patches, patch_mean, patch_cov

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, filters, conv_bias, weight, _, eps, conv, pool, stat_rows = inputs
        _, *saved = output
        ctx.save_for_backward(x, filters, conv_bias, weight, *saved)
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)
        ctx.eps, ctx.conv, ctx.pool, ctx.stat_rows = eps, conv, pool, stat_rows

    @staticmethod
    def backward(ctx, grad_out, *_):
        x, filters, conv_bias, weight, indices, pooled, mean, var, patches, patch_mean, patch_cov = (
            ctx.saved_tensors
        )
        conv = ctx.conv
        rows = x.shape[0] if ctx.stat_rows is None else ctx.stat_rows
        count = rows * (patches.shape[0] // x.shape[0])  # values per channel behind the statistics
        if torch.is_grad_enabled():
            # create_graph (second order): the plain route, every step differentiable.
            y = F.conv2d(x, filters, conv_bias, conv.stride, conv.padding, conv.dilation)
            grad_y, grad_weight, grad_bias = _pooled_norm_backward(
                ctx, grad_out, y, weight, indices, pooled, mean, var
            )
            _, grad_filters, grad_conv_bias = torch.ops.aten.convolution_backward(
                grad_y, x, filters, [filters.shape[0]], list(conv.stride), list(conv.padding),
                list(conv.dilation), False, [0, 0], 1, [False, True, True],
            )
            return None, grad_filters, grad_conv_bias, grad_weight, grad_bias, None, None, None, None
        grad_pooled, grad_weight, grad_bias, slope, offset = _norm_backward(
            grad_out, pooled, weight, mean, var, ctx.eps, count, differentiable=False
        )
        # The pooling windows do not overlap (see _conv_norm_pool), so unpooling places each
        # value once; the conv output itself was not kept.
        size = _conv_output_size(x, conv)
        spread = F.max_unpool2d(grad_pooled, indices, ctx.pool.kernel_size, ctx.pool.stride, 0, size)
        spread = spread.permute(0, 2, 3, 1).reshape(-1, spread.shape[1])  # (N·H·W, C), a view
        level = slope * mean + offset  # Σ over y of (slope·y + offset) is count·level per channel
        wide = patch_cov.dtype
        dense = count * (
            slope.to(wide)[:, None] * (filters.flatten(1).to(wide) @ patch_cov)
            + level.to(wide)[:, None] * patch_mean
        )
        grad_flat = (patches.t() @ spread).t() + dense.to(spread.dtype)
        grad_conv_bias = spread.sum(dim=0) + count * level
        grad_filters = grad_flat.view_as(filters)
        return None, grad_filters, grad_conv_bias, grad_weight, grad_bias, None, None, None, None


def _patch_moments(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the patch rows, accumulated in float64.

    Both feed quantities that cancel: the variance ``w·Σ·wᵀ`` and the dense part of the
    filter gradient, which nearly cancels its sparse part. With a float32 ``Σ`` (a sum over
    every patch of the batch) the variance of 28-pixel drawings erred by ~5e-6 and the
    first layer's gradient by 50× the plain module's (benchmarks/RESULTS.md); a (k², k²)
    float64 covariance costs little beside the convolution.
    """
    wide = patches.to(torch.float64)
    mean = wide.mean(dim=0)
    centred = wide - mean
    return mean, centred.t() @ centred / wide.shape[0]


def _normalise(pooled, weight, bias, mean, var, eps: float) -> torch.Tensor:
    scale = weight * torch.rsqrt(var + eps)
    return torch.addcmul(_per_channel(bias - mean * scale), pooled, _per_channel(scale))


def _norm_backward(grad_out, pooled, weight, mean, var, eps: float, count: int, differentiable: bool):
    """The batch norm's backward pass, given only the gradient at the pooled positions.

    Returns the gradient of the pooled values (to scatter to their argmax positions),
    of the norm's weight and bias, and the per-channel ``slope`` and ``offset`` of the
    dense part of the gradient of ``y``: d/dy of batch_norm is
    invstd·γ·(G − mean(G) − ŷ·mean(G·ŷ)) with ``G`` the scattered pooled gradient, and
    both means are sums over the pooled values alone (``count`` is the number of values
    per channel of ``y``).
    """
    invstd = torch.rsqrt(var + eps)
    if differentiable:
        normalised = (pooled - _per_channel(mean)) * _per_channel(invstd)
        grad_bias = grad_out.sum(dim=(0, 2, 3))
        grad_weight = (grad_out * normalised).sum(dim=(0, 2, 3))
        grad_pooled = grad_out * _per_channel(weight * invstd)
    else:  # one fused kernel: an eval-mode norm of the pooled values with these statistics
        grad_pooled, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out, pooled, weight, mean, var, None, None, False, eps, [True, True, True]
        )
    shrink = weight * invstd * (-1.0 / count)
    slope = shrink * invstd * grad_weight
    offset = shrink * grad_bias - slope * mean
    return grad_pooled, grad_weight, grad_bias, slope, offset


def _unpool(grad_pooled: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, pool: nn.MaxPool2d):
    """``grad_pooled`` placed at its argmax positions of ``y`` (zeros elsewhere)."""
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_pooled, y, _pair(pool.kernel_size), _pair(pool.stride),
        _pair(pool.padding), _pair(pool.dilation), pool.ceil_mode, indices,
    )


def _patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The conv's input patches of ``x`` as rows: ``(N·H_out·W_out, C_in·k·k)``."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _conv_output_size(x: torch.Tensor, conv: nn.Conv2d) -> tuple[int, int]:
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(
            x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True
        )
    )


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def _conv_norm_pool(
    params: Params, x: torch.Tensor, n_tasks: int, stat_rows: int | None, *,
    conv: tuple[str, nn.Conv2d], norm: tuple[str, BatchStatNorm], pool: nn.MaxPool2d, patch_route: bool,
) -> torch.Tensor:
    """``pool(norm(conv(x)))``, fused; negative norm scales are folded into the conv's filters.

    ``patch_route``: :class:`_DataConvPooledBatchNorm` pays for this block (see
    :func:`_patch_route_pays`); it is taken when ``x`` is data and one task runs per pass.
    """
    (conv_prefix, conv_module), (norm_prefix, norm_module) = conv, norm
    weight = params[f"{norm_prefix}.weight"].reshape(-1)
    filters = params[f"{conv_prefix}.weight"].flatten(0, 1)  # (T*C_out, C_in, k, k)
    conv_bias = params[f"{conv_prefix}.bias"].reshape(-1)
    negative = weight.detach() < 0
    if negative.any():
        sign = torch.where(negative, -1.0, 1.0).to(weight.dtype)
        filters, conv_bias, weight = filters * sign.view(-1, 1, 1, 1), conv_bias * sign, weight * sign
    bias = params[f"{norm_prefix}.bias"].reshape(-1)
    if patch_route and n_tasks == 1 and not x.requires_grad:
        return _DataConvPooledBatchNorm.apply(
            x, filters, conv_bias, weight, bias, norm_module.eps, conv_module, pool, stat_rows
        )[0]
    y = F.conv2d(x, filters, conv_bias, conv_module.stride, conv_module.padding, groups=n_tasks)
    return _PooledBatchNorm.apply(y, weight, bias, norm_module.eps, pool, stat_rows)[0]


def _patch_route_pays(conv: nn.Conv2d, pool: nn.MaxPool2d) -> bool:
    """Whether :class:`_DataConvPooledBatchNorm` applies and saves memory: its patch matrix
    (kept instead of the conv output) is no larger than that output, and the pooling
    windows tile without overlap, so unpooling needs no conv output to size it."""
    tiles = _pair(pool.stride) == _pair(pool.kernel_size) and _pair(pool.padding) == [0, 0]
    small = conv.weight[0].numel() <= conv.out_channels and not isinstance(conv.padding, str)
    return tiles and _pair(pool.dilation) == [1, 1] and small


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


Layer = Callable[[Params, torch.Tensor, int, "int | None"], torch.Tensor]


def _layer(prefix: str, module: nn.Module) -> Layer:
    """One layer as ``layer(stacked_params, h, n_tasks, stat_rows)``."""
    if isinstance(module, nn.Linear):
        return lambda params, h, n_tasks, stat_rows: _linear(params, prefix, h)
    if isinstance(module, nn.Conv2d):
        return lambda params, h, n_tasks, stat_rows: _conv(params, prefix, module, h, n_tasks)
    if isinstance(module, BatchStatNorm):
        return lambda params, h, n_tasks, stat_rows: _norm(params, prefix, module, h, stat_rows)
    if isinstance(module, (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.MaxPool2d)):
        return lambda params, h, n_tasks, stat_rows: module(h)
    raise TypeError(f"no batched rule for layer {prefix} ({type(module).__name__})")


def _plan(layers: list[tuple[str, nn.Module]], fuse: bool) -> list[Layer]:
    """The layers as batched steps; with ``fuse``, each conv → norm → max-pool as one step."""
    steps, i = [], 0
    while i < len(layers):
        modules = [module for _, module in layers[i:i + 3]]
        kinds = (nn.Conv2d, BatchStatNorm, nn.MaxPool2d)
        if fuse and len(modules) == 3 and all(map(isinstance, modules, kinds)):
            conv, norm, pool = layers[i], layers[i + 1], modules[2]
            patch_route = _patch_route_pays(conv[1], pool)
            steps.append(
                functools.partial(_conv_norm_pool, conv=conv, norm=norm, pool=pool, patch_route=patch_route)
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
    layers = [(f"body.{index}", module) for index, module in net.body.named_children()]
    layers = _pool_before_activation(layers)
    plain, fused = _plan(layers, fuse=False), _plan(layers, fuse=True)
    is_conv = isinstance(net, ConvNet)

    def forward(params: Params, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        n_tasks, n = x.shape[0], x.shape[1]
        steps = plain
        if is_conv:
            # (T, N, C, H, W) → (N, T*C, H, W): tasks side by side in the channel dimension.
            h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
            # Measured on CPU only; CUDA keeps its default layout and PyTorch's own kernels,
            # as does reduced precision (the fused norm keeps its statistics in the input dtype).
            if h.device.type == "cpu":
                h = _channels_last(h)
                if not torch.is_autocast_enabled("cpu"):
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
