r"""Fused conv → batch-statistics norm → max-pool blocks for the batched strategy on CPU.

Both kernels compute exactly ``max_pool(norm(y))`` of :mod:`maml_tune.core.nets` (the
float64 tests check values, first and second derivatives), in less memory and time.

**Pooling before normalising.** Per channel, the norm is ``out = γ·(y − μ)·s + β`` with
``s = 1/√(var + eps)``: an increasing map of ``y`` when ``γ ≥ 0``, so it commutes with
max-pooling; the norm is applied to the pooled quarter of the values, with the
statistics ``μ``, ``var`` of the unpooled ``y``. A channel with ``γ < 0`` first has its
filter, conv bias and ``γ`` negated (``γ·norm(y) == (−γ)·norm(−y)``), which leaves the
function unchanged (:func:`conv_norm_pool`).

**The backward pass, and why ``slope·y + offset`` is its dense part.** Let ``G`` be the
gradient with respect to the norm's output scattered to full size (non-zero only at the
pooling argmax positions), ``ŷ = (y − μ)·s`` and ``n`` the values per channel behind the
statistics. Batch norm's gradient is

    dL/dy = γ·s·(G − mean(G) − ŷ·mean(G·ŷ)).

``Σ G`` is the bias gradient ``gβ`` and ``Σ G·ŷ`` the scale gradient ``gγ``, both sums
over the pooled values alone. So

    dL/dy = γ·s·G  −  (γ·s/n)·(gβ + ŷ·gγ)
          = sparse part (at the argmax positions)  +  slope·y + offset,

with ``slope = −γ·s²·gγ/n`` and ``offset = −γ·s·gβ/n − slope·μ`` per channel
(:func:`_norm_backward`): a dense term affine in ``y``, added to every example that fed
the statistics. It never needs the full-size normalised activation.

**The first block (data input, one task per pass) and the W·Σ term.** There the conv
output is ``y = W·p + b`` for each input patch ``p`` (a row of :func:`conv_patches`), so
with the patch mean ``m`` and covariance ``Σ`` over the ``n`` patches the statistics are
``μ = W·m + b`` and ``var = diag(W·Σ·Wᵀ)``, and the dense part's filter gradient is

    Σ_p (slope·y + offset)·pᵀ = n·(slope·W·Σ + level·mᵀ),  level = slope·μ + offset,

(using ``Σ_p p·pᵀ = n·(Σ + m·mᵀ)``). Only the sparse part is spread to full size; its
filter gradient is one product with the patches. The conv output itself is never kept.
:func:`patch_moments` accumulates ``m`` and ``Σ`` in float64: ``W·Σ·Wᵀ`` and the dense
filter gradient cancel against other terms, and float32 moments erred 50× more than
the plain module (benchmarks/RESULTS.md).

In second-order MAML the backward pass is itself differentiated: it is then written in
ordinary differentiable operations (far cheaper to double-differentiate than PyTorch's
batch-norm double backward), recomputing the statistics from ``y``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maml_tune.core.inner import Params
from maml_tune.core.nets import BatchStatNorm, batch_statistics


class _PooledSaved(NamedTuple):
    """What :class:`PooledBatchNorm` keeps for its backward pass."""

    y: torch.Tensor  # the conv output (full size)
    weight: torch.Tensor  # γ (non-negative)
    indices: torch.Tensor  # argmax positions of the pooling, into y's spatial dims
    pooled: torch.Tensor  # max_pool(y)
    mean: torch.Tensor  # μ of y's statistics rows
    var: torch.Tensor  # their (biased) variance


class PooledBatchNorm(torch.autograd.Function):
    """``max_pool(batch_norm(y))`` for a non-negative norm scale, normalising after pooling.

    ``y``: ``(N, C, H, W)`` conv output; ``weight`` (≥ 0) and ``bias``: ``(C,)``. The
    statistics are those of the first ``stat_rows`` examples of ``y`` (``None``: all), as
    in the unfused norm. Outputs: the result, then tensors kept for the backward pass.
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
        ctx.save_for_backward(*_PooledSaved(y, weight, indices, pooled, mean, var))
        ctx.mark_non_differentiable(indices, pooled, mean, var)
        ctx.set_materialize_grads(False)  # nothing flows into those outputs: no zero tensors
        ctx.eps, ctx.pool, ctx.stat_rows = eps, pool, stat_rows

    @staticmethod
    def backward(ctx, grad_out, *_):
        grads = _pooled_norm_backward(ctx, grad_out, _PooledSaved(*ctx.saved_tensors))
        return *grads, None, None, None


def _pooled_norm_backward(ctx, grad_out, saved: _PooledSaved):
    """(grad of y, of the norm's weight, of its bias) for :class:`PooledBatchNorm`.

    Every example's output depends on the statistics, but only the first ``stat_rows``
    examples feed them, so only those get the dense part ``slope·y + offset``.
    """
    y, weight, indices, pooled, mean, var = saved
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


class _DataConvSaved(NamedTuple):
    """What :class:`DataConvPooledBatchNorm` keeps for its backward pass (no conv output)."""

    x: torch.Tensor  # the input images
    filters: torch.Tensor  # W
    conv_bias: torch.Tensor  # b
    weight: torch.Tensor  # γ (non-negative)
    indices: torch.Tensor  # argmax positions of the pooling
    pooled: torch.Tensor  # max_pool(W·p + b)
    mean: torch.Tensor  # μ = W·m + b
    var: torch.Tensor  # diag(W·Σ·Wᵀ)
    patches: torch.Tensor  # the input patches as rows (conv_patches)
    patch_mean: torch.Tensor  # m, float64
    patch_cov: torch.Tensor  # Σ, float64


class DataConvPooledBatchNorm(torch.autograd.Function):
    """``max_pool(batch_norm(conv(x)))`` for a first layer: ``x`` is data, one task per pass.

    The norm's statistics come from the patch moments and the dense part of the filter
    gradient is ``n·(slope·W·Σ + level·mᵀ)`` (module docstring): the backward pass never
    forms the full-size gradient of the conv output, only its pooled part is spread.
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
        patches = conv_patches(x, conv)  # rows ordered by example, then output position
        rows = x.shape[0] if stat_rows is None else stat_rows
        patch_mean, patch_cov = patch_moments(patches[: rows * (patches.shape[0] // x.shape[0])])
        flat = filters.flatten(1).to(patch_cov.dtype)
        mean = (flat @ patch_mean + conv_bias).to(y.dtype)
        var = ((flat @ patch_cov) * flat).sum(dim=1).to(y.dtype)
        out = _normalise(pooled, weight, bias, mean, var, eps)
        return out, indices, pooled, mean, var, patches, patch_mean, patch_cov

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, filters, conv_bias, weight, _, eps, conv, pool, stat_rows = inputs
        _, *kept = output
        ctx.save_for_backward(*_DataConvSaved(x, filters, conv_bias, weight, *kept))
        ctx.mark_non_differentiable(*kept)
        ctx.set_materialize_grads(False)
        ctx.eps, ctx.conv, ctx.pool, ctx.stat_rows = eps, conv, pool, stat_rows

    @staticmethod
    def backward(ctx, grad_out, *_):
        s = _DataConvSaved(*ctx.saved_tensors)
        conv = ctx.conv
        rows = s.x.shape[0] if ctx.stat_rows is None else ctx.stat_rows
        count = rows * (s.patches.shape[0] // s.x.shape[0])  # values per channel behind the statistics
        if torch.is_grad_enabled():
            # create_graph (second order): the plain route, every step differentiable.
            y = F.conv2d(s.x, s.filters, s.conv_bias, conv.stride, conv.padding, conv.dilation)
            grad_y, grad_weight, grad_bias = _pooled_norm_backward(
                ctx, grad_out, _PooledSaved(y, s.weight, s.indices, s.pooled, s.mean, s.var)
            )
            _, grad_filters, grad_conv_bias = torch.ops.aten.convolution_backward(
                grad_output=grad_y, input=s.x, weight=s.filters, bias_sizes=[s.filters.shape[0]],
                stride=list(conv.stride), padding=list(conv.padding), dilation=list(conv.dilation),
                transposed=False, output_padding=[0, 0], groups=1, output_mask=[False, True, True],
            )
            return None, grad_filters, grad_conv_bias, grad_weight, grad_bias, None, None, None, None
        grad_pooled, grad_weight, grad_bias, slope, offset = _norm_backward(
            grad_out, s.pooled, s.weight, s.mean, s.var, ctx.eps, count, differentiable=False
        )
        # The pooling windows do not overlap (see patch_route_pays), so unpooling places each
        # value once; the conv output itself was not kept.
        size = _conv_output_size(s.x, conv)
        spread = F.max_unpool2d(grad_pooled, s.indices, ctx.pool.kernel_size, ctx.pool.stride, 0, size)
        spread = spread.permute(0, 2, 3, 1).reshape(-1, spread.shape[1])  # (N·H·W, C), a view
        level = slope * s.mean + offset  # Σ over y of (slope·y + offset) is count·level per channel
        wide = s.patch_cov.dtype
        dense = count * (
            slope.to(wide)[:, None] * (s.filters.flatten(1).to(wide) @ s.patch_cov)
            + level.to(wide)[:, None] * s.patch_mean
        )
        grad_flat = (s.patches.t() @ spread).t() + dense.to(spread.dtype)
        grad_conv_bias = spread.sum(dim=0) + count * level
        grad_filters = grad_flat.view_as(s.filters)
        return None, grad_filters, grad_conv_bias, grad_weight, grad_bias, None, None, None, None


def patch_moments(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``m`` and covariance ``Σ`` of the patch rows, accumulated in float64.

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

    Returns the gradient of the pooled values (to scatter to their argmax positions), of
    the norm's weight and bias, and the per-channel ``slope`` and ``offset`` of the dense
    part of the gradient of ``y`` (derived in the module docstring; ``count`` is ``n``).
    """
    invstd = torch.rsqrt(var + eps)
    if differentiable:
        normalised = (pooled - _per_channel(mean)) * _per_channel(invstd)
        grad_bias = grad_out.sum(dim=(0, 2, 3))
        grad_weight = (grad_out * normalised).sum(dim=(0, 2, 3))
        grad_pooled = grad_out * _per_channel(weight * invstd)
    else:
        # One fused kernel: the backward of an eval-mode norm of the pooled values whose
        # "running" statistics are y's, i.e. the sparse part γ·s·G and both sums.
        grad_pooled, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out=grad_out, input=pooled, weight=weight, running_mean=mean, running_var=var,
            save_mean=None, save_invstd=None, train=False, eps=eps, output_mask=[True, True, True],
        )
    shrink = weight * invstd * (-1.0 / count)
    slope = shrink * invstd * grad_weight
    offset = shrink * grad_bias - slope * mean
    return grad_pooled, grad_weight, grad_bias, slope, offset


def _unpool(grad_pooled: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, pool: nn.MaxPool2d):
    """``grad_pooled`` placed at its argmax positions of ``y`` (zeros elsewhere)."""
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_output=grad_pooled, self=y, kernel_size=_pair(pool.kernel_size), stride=_pair(pool.stride),
        padding=_pair(pool.padding), dilation=_pair(pool.dilation), ceil_mode=pool.ceil_mode,
        indices=indices,
    )


def conv_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
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


def conv_norm_pool(
    params: Params, x: torch.Tensor, n_tasks: int, stat_rows: int | None, *,
    conv: tuple[str, nn.Conv2d], norm: tuple[str, BatchStatNorm], pool: nn.MaxPool2d, patch_route: bool,
) -> torch.Tensor:
    """``pool(norm(conv(x)))``, fused; negative norm scales are folded into the conv's filters.

    ``x`` is ``(N, T*C_in, H, W)`` (tasks side by side in the channels, as in
    :mod:`~maml_tune.core.batched`). ``patch_route``: :class:`DataConvPooledBatchNorm`
    pays for this block (:func:`patch_route_pays`); it is taken when ``x`` is data and one
    task runs per pass.
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
        return DataConvPooledBatchNorm.apply(
            x, filters, conv_bias, weight, bias, norm_module.eps, conv_module, pool, stat_rows
        )[0]
    y = F.conv2d(x, filters, conv_bias, conv_module.stride, conv_module.padding, groups=n_tasks)
    return PooledBatchNorm.apply(y, weight, bias, norm_module.eps, pool, stat_rows)[0]


def patch_route_pays(conv: nn.Conv2d, pool: nn.MaxPool2d) -> bool:
    """Whether :class:`DataConvPooledBatchNorm` applies and saves memory: its patch matrix
    (kept instead of the conv output) is no larger than that output, and the pooling
    windows tile without overlap, so unpooling needs no conv output to size it."""
    tiles = _pair(pool.stride) == _pair(pool.kernel_size) and _pair(pool.padding) == [0, 0]
    small = conv.weight[0].numel() <= conv.out_channels and not isinstance(conv.padding, str)
    return tiles and _pair(pool.dilation) == [1, 1] and small
