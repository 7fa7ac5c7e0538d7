"""The inner loop: one pure function from (params, support set) to adapted params.

Meta-training, validation, evaluation, prediction and every execution strategy call
:func:`inner_trajectory` (or :func:`adapt`, its last step); there is no second copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
import torch.utils.checkpoint
from torch.func import functional_call, grad

Params = dict[str, torch.Tensor]
Forward = Callable[..., torch.Tensor]
"""``forward(params, x, stat_rows=None)``: the network's outputs for ``x`` with weights
``params``; batch-statistics norms use the statistics of the first ``stat_rows`` examples
of ``x`` (``None``: all of them)."""
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_forward(module: torch.nn.Module, buffers: Mapping[str, torch.Tensor]) -> Forward:
    """``forward(params, x, stat_rows=None)``: ``module`` with the given weights (and fixed ``buffers``)."""

    def forward(params: Params, x: torch.Tensor, stat_rows: int | None = None) -> torch.Tensor:
        return functional_call(module, (params, dict(buffers)), (x,), {"stat_rows": stat_rows})

    return forward


def step_lr(lr: torch.Tensor | float, step: int) -> torch.Tensor | float:
    """The learning rate of inner step ``step``.

    ``lr`` is a float (fixed rate) or a tensor whose first dimension indexes inner steps
    (LSLR: ``(steps,)``; Meta-SGD: ``(1, *param_shape)``). Steps past the last row reuse it,
    so a model meta-trained with K steps can adapt with more at test time.
    """
    if isinstance(lr, float):
        return lr
    return lr[min(step, lr.shape[0] - 1)]


def inner_trajectory(
    forward: Forward,
    params: Params,
    inner_lrs: Mapping[str, torch.Tensor | float],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
    first_order: bool,
    *,
    second_order_steps: int | None = None,
    checkpoint: bool = False,
    functional_grad: bool = True,
) -> Iterator[Params]:
    """Yield the full parameter dict after each of ``steps`` gradient steps on the support set.

    Only the parameters named in ``inner_lrs`` adapt (all of them for MAML, the head for
    ANIL); the rest pass through unchanged. With ``first_order`` the support gradient is
    detached, so the meta-gradient drops the second-derivative terms; otherwise the
    steps stay differentiable and the meta-gradient is exact. ``second_order_steps``
    (``None``: every step) keeps only the last N steps second order and detaches the
    support gradient of the earlier ones. With ``checkpoint`` (and autograd recording)
    each second-order step runs under non-reentrant ``torch.utils.checkpoint``: only
    its input weights are kept, and its forward and support backward are recomputed
    when the meta-gradient passes through it. That path takes the support gradient with
    ``torch.autograd.grad`` (``torch.func.grad`` refuses saved-tensor hooks), so it
    cannot run under ``vmap``. ``functional_grad=False`` takes every support gradient
    with ``torch.autograd.grad`` as well: same values, measurably cheaper outside
    ``vmap`` (which needs ``torch.func.grad``); it needs autograd recording.
    """
    fast = {name: params[name] for name in inner_lrs}
    frozen = {name: p for name, p in params.items() if name not in inner_lrs}
    names = list(fast)

    def support_loss(fast_params: Params) -> torch.Tensor:
        return loss_fn(forward({**frozen, **fast_params}, support_x), support_y)

    support_grad = grad(support_loss)
    first_detached = 0 if second_order_steps is None else max(steps - second_order_steps, 0)
    for step in range(steps):
        step_first_order = first_order or step < first_detached
        if (
            checkpoint
            and not step_first_order
            and torch.is_grad_enabled()
            and all(w.requires_grad for w in fast.values())
        ):
            updated = torch.utils.checkpoint.checkpoint(
                _autograd_step(support_loss, names, inner_lrs, step),
                *(fast[name] for name in names),
                use_reentrant=False,
            )
            fast = dict(zip(names, updated))
        else:
            if functional_grad:
                grads = support_grad(fast)
            else:
                weights = [fast[name] for name in names]
                found = torch.autograd.grad(
                    support_loss(fast), weights, create_graph=not step_first_order, allow_unused=True
                )
                grads = {
                    name: torch.zeros_like(w) if g is None else g
                    for name, w, g in zip(names, weights, found)
                }
            if step_first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            fast = {
                name: w - step_lr(inner_lrs[name], step) * grads[name] for name, w in fast.items()
            }
        yield {**frozen, **fast}


def _autograd_step(
    support_loss: Callable[[Params], torch.Tensor],
    names: list[str],
    inner_lrs: Mapping[str, torch.Tensor | float],
    step: int,
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """One differentiable inner step written with ``torch.autograd.grad`` (checkpointable)."""

    def run(*weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = support_loss(dict(zip(names, weights)))
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        return tuple(
            w - step_lr(inner_lrs[name], step) * (torch.zeros_like(w) if g is None else g)
            for name, w, g in zip(names, weights, grads)
        )

    return run


def adapt(
    forward: Forward,
    params: Params,
    inner_lrs: Mapping[str, torch.Tensor | float],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
    first_order: bool = False,
) -> Params:
    """The parameters after ``steps`` inner steps (a copy of ``params`` when ``steps`` is 0)."""
    return final_params(
        inner_trajectory(forward, params, inner_lrs, support_x, support_y, loss_fn, steps, first_order),
        dict(params),
    )


def final_params(trajectory: Iterable[Params], params: Params) -> Params:
    """Run ``trajectory`` to its end; its last parameters (``params`` when it has no step)."""
    last = deque(trajectory, maxlen=1)
    return last[0] if last else params
