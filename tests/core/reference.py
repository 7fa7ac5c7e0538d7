"""An independent reference for the MAML-family meta-gradient.

Nothing here uses maml_tune's networks or inner loop: the forward pass is written out with
``torch.nn.functional`` (and a hand-written batch-statistics norm), the inner loop is plain
``torch.autograd.grad`` one task at a time, and the meta-gradient is a final
``torch.autograd.grad`` of the mean query loss (Reptile's, which has no query-loss
gradient, is written out: the mean of θ − θ' over tasks). Only the parameter *names* follow the
layout of ``maml_tune.core.nets`` (``body.<index>.<weight|bias>`` and ``head.*``), so the
results can be compared name by name; the tests assert that the name sets coincide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

Tensors = dict[str, torch.Tensor]

EPS = 1e-5

_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}


def batch_stat_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rows: int
) -> torch.Tensor:
    """Normalise with the statistics of the first ``rows`` examples over (N, H, W): biased
    variance, eps 1e-5."""
    sample = x[:rows]
    n = sample.shape[0] * sample.shape[2] * sample.shape[3]
    mean = sample.sum(dim=(0, 2, 3), keepdim=True) / n
    var = ((sample - mean) * (sample - mean)).sum(dim=(0, 2, 3), keepdim=True) / n
    return (
        (x - mean) / torch.sqrt(var + EPS) * weight[None, :, None, None]
        + bias[None, :, None, None]
    )


def forward(
    arch, params: Mapping[str, torch.Tensor], x: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """The network described by ``arch`` (an ``ArchConfig``) with weights ``params``; norms
    take the statistics of the first ``rows`` examples (all when ``None``)."""
    return F.linear(features(arch, params, x, rows), params["head.weight"], params["head.bias"])


def features(
    arch, params: Mapping[str, torch.Tensor], x: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """The inputs to the head: ``(N, F)``."""
    rows = x.shape[0] if rows is None else rows
    act = _ACT[arch.activation]
    if arch.kind == "mlp":
        h = x.reshape(x.shape[0], -1)
        for layer in range(arch.depth):
            index = 2 * layer  # body = [Linear, activation] * depth
            h = act(
                F.linear(
                    h, params[f"body.{index}.weight"], params[f"body.{index}.bias"]
                )
            )
        return h

    if arch.kind == "resnet12":
        return _resnet12(arch, params, x, rows, act)
    pool = arch.pools
    norm = arch.norm == "batch"
    per_block = 2 + int(norm) + int(pool)  # conv, [norm], activation, [pool]
    h = x
    for block in range(arch.blocks):
        index = block * per_block
        h = F.conv2d(
            h,
            params[f"body.{index}.weight"],
            params[f"body.{index}.bias"],
            stride=1 if pool else 2,
            padding=1,
        )
        if norm:
            h = batch_stat_norm(
                h, params[f"body.{index + 1}.weight"], params[f"body.{index + 1}.bias"], rows
            )
        h = act(h)
        if pool:
            h = F.max_pool2d(h, 2, ceil_mode=arch.pool_keeps_partial_windows)
    return h.reshape(h.shape[0], -1)


RESNET12_WIDTHS = (1.0, 2.5, 5.0, 10.0)  # ResNet-12's stages, as multiples of arch.channels


def _resnet12(arch, params, x, rows: int, act) -> torch.Tensor:
    """Four residual stages: act(main(h) + shortcut(h)), then a 2x2 max-pool (or the first
    convs stride 2); main = conv3 [norm] act conv3 [norm] act conv3 [norm], shortcut = conv1
    [norm]; then the mean over the image and the head. Names as in maml_tune.core.nets."""
    norm = arch.norm == "batch"
    stride = 1 if arch.pools else 2
    h = x

    def conv_norm(h, prefix: str, index: int, conv_stride: int, padding: int):
        out = F.conv2d(
            h, params[f"{prefix}.{index}.weight"], params[f"{prefix}.{index}.bias"],
            stride=conv_stride, padding=padding,
        )
        if norm:
            out = batch_stat_norm(
                out, params[f"{prefix}.{index + 1}.weight"], params[f"{prefix}.{index + 1}.bias"], rows
            )
        return out

    per_conv = 2 + int(norm)  # conv, [norm], activation
    for stage in range(len(RESNET12_WIDTHS)):
        main = f"body.{stage}.main"
        out = act(conv_norm(h, main, 0, stride, 1))
        out = act(conv_norm(out, main, per_conv, 1, 1))
        out = conv_norm(out, main, 2 * per_conv, 1, 1)
        h = act(out + conv_norm(h, f"body.{stage}.shortcut", 0, stride, 0))
        if arch.pools:
            h = F.max_pool2d(h, 2, ceil_mode=arch.pool_keeps_partial_windows)
    return h.mean(dim=(2, 3))


def _resnet12_names(arch) -> list[str]:
    norm = arch.norm == "batch"
    per_conv = 2 + int(norm)
    names = []
    for stage in range(len(RESNET12_WIDTHS)):
        layers = [(f"body.{stage}.main", per_conv * i) for i in range(3)]
        layers.append((f"body.{stage}.shortcut", 0))
        for prefix, index in layers:
            names += [f"{prefix}.{index}.weight", f"{prefix}.{index}.bias"]
            if norm:
                names += [f"{prefix}.{index + 1}.weight", f"{prefix}.{index + 1}.bias"]
    return names


def start_weights(arch, theta: Mapping[str, torch.Tensor], n_outputs: int, x: torch.Tensor) -> Tensors:
    """The weights a task starts from: ``theta`` with the head of ``arch.head`` for
    ``n_outputs`` outputs: its rows (fixed), its one row repeated (shared), or zeros (zero,
    as wide as the features of ``x``)."""
    head = getattr(arch, "head", "fixed")
    if head == "fixed":
        return dict(theta)
    if head == "shared":
        return {
            **theta,
            "head.weight": theta["head.weight"].repeat(n_outputs, 1),
            "head.bias": theta["head.bias"].repeat(n_outputs),
        }
    width = features(arch, theta, x).shape[1]
    zeros = {"dtype": x.dtype, "requires_grad": True}
    return {
        **theta,
        "head.weight": torch.zeros(n_outputs, width, **zeros),
        "head.bias": torch.zeros(n_outputs, **zeros),
    }


def parameter_names(arch) -> list[str]:
    """The meta-parameter names this reference reads, in no particular order."""
    head = [] if getattr(arch, "head", "fixed") == "zero" else ["head.weight", "head.bias"]
    if arch.kind == "resnet12":
        return _resnet12_names(arch) + head
    if arch.kind == "mlp":
        names = [
            f"body.{2 * i}.{w}" for i in range(arch.depth) for w in ("weight", "bias")
        ]
    else:
        pool, norm = arch.pools, arch.norm == "batch"
        per_block = 2 + int(norm) + int(pool)
        names = []
        for block in range(arch.blocks):
            index = block * per_block
            names += [f"body.{index}.weight", f"body.{index}.bias"]
            if norm:
                names += [f"body.{index + 1}.weight", f"body.{index + 1}.bias"]
    return names + head


def _lr_at(algorithm: str, lr, step: int):
    if algorithm == "metasgd":
        return lr[0]  # (1, *shape): the same per-parameter rate at every step
    if algorithm == "lslr":
        return lr[step]  # (steps,): one scalar rate per parameter tensor per step
    return lr  # a plain float


def meta_gradient(
    arch,
    algo,
    kind: str,
    weights: Mapping[str, torch.Tensor],
    lrs: Mapping[str, torch.Tensor] | None,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    step_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, Tensors, Tensors]:
    """(mean meta-loss, d loss / d weights, d loss / d learned lrs) for a batch of tasks.

    ``weights`` and ``lrs`` are copied into fresh leaves; ``lrs`` maps each adapted
    parameter name to its learned rate (Meta-SGD / LSLR) and is ignored otherwise.
    """
    loss_fn = F.mse_loss if kind == "regression" else F.cross_entropy
    support_norm = getattr(algo, "query_norm", "transductive") == "support"

    def query_loss(params, sx, qx, qy):
        # "support": support and query in one batch, normalised with the support's statistics.
        if not support_norm:
            return loss_fn(forward(arch, params, qx), qy)
        return loss_fn(forward(arch, params, torch.cat([sx, qx]), len(sx))[len(sx) :], qy)

    first_order = algo.first_order or algo.algorithm in ("fomaml", "reptile")
    steps = algo.inner_steps
    # Only the last ``second_order_steps`` steps (all when None) are differentiated twice;
    # a step taken with create_graph=False yields a constant gradient (first order).
    last_second_order = getattr(algo, "second_order_steps", None)
    if last_second_order is None:
        last_second_order = steps

    theta = {
        name: w.detach().clone().requires_grad_(True) for name, w in weights.items()
    }
    n_outputs = support_y.shape[-1] if kind == "regression" else int(support_y.max()) + 1
    names = list(start_weights(arch, theta, n_outputs, support_x[0]))
    if algo.algorithm == "anil":
        adapted = [name for name in names if name.startswith("head.")]
    elif algo.algorithm == "boil":
        adapted = [name for name in names if not name.startswith("head.")]
    else:
        adapted = names
    learned = algo.algorithm in ("metasgd", "lslr")
    if learned:
        rates = {
            name: lrs[name].detach().clone().requires_grad_(True) for name in adapted
        }
    else:
        rates = {name: float(algo.inner_lr) for name in adapted}

    task_losses, pulls = [], []
    for t in range(support_x.shape[0]):
        sx, sy, qx, qy = support_x[t], support_y[t], query_x[t], query_y[t]
        start = start_weights(arch, theta, n_outputs, sx)
        fast = {name: start[name] for name in adapted}
        per_step = []
        for step in range(steps):
            current = {**start, **fast}
            support_loss = loss_fn(forward(arch, current, sx), sy)
            grads = torch.autograd.grad(
                support_loss,
                [fast[name] for name in adapted],
                create_graph=not first_order and step >= steps - last_second_order,
            )
            fast = {
                name: fast[name] - _lr_at(algo.algorithm, rates[name], step) * g
                for name, g in zip(adapted, grads)
            }
            if step_weights is not None:
                per_step.append(query_loss({**start, **fast}, sx, qx, qy))
        # Reptile's pull on a meta-parameter: the sum over the rows it was copied to.
        pulls.append({
            name: (start[name] - fast[name]).detach().sum(0).reshape(theta[name].shape)
            if start[name].shape != theta[name].shape else (theta[name] - fast[name]).detach()
            for name in adapted if name in theta
        })
        if step_weights is None:
            task_losses.append(query_loss({**start, **fast}, sx, qx, qy))
        else:
            task_losses.append(sum(w * loss for w, loss in zip(step_weights, per_step)))
    meta_loss = torch.stack(task_losses).mean()
    if algo.algorithm == "reptile":
        weight_grads = {
            name: torch.stack([pull[name] for pull in pulls]).mean(0)
            if name in pulls[0]
            else torch.zeros_like(w)
            for name, w in theta.items()
        }
        return meta_loss.detach(), weight_grads, {}

    wrt = list(theta.values()) + (list(rates.values()) if learned else [])
    grads = torch.autograd.grad(meta_loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads)]
    weight_grads = dict(zip(theta, grads[: len(theta)]))
    lr_grads = dict(zip(rates, grads[len(theta) :])) if learned else {}
    return meta_loss.detach(), weight_grads, lr_grads
