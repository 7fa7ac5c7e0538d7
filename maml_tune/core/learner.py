"""The meta-learner: a network's initial weights plus the inner learning rates, and the
meta-objective computed over a batch of tasks by an interchangeable execution strategy.

One code path serves every algorithm (:mod:`maml_tune.core.algorithms`): each says which
parameters adapt, which inner rates are learned and what the meta-loss is; MAML++'s
multi-step loss is the per-step weights of the query loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from maml_tune.core.algorithms import algorithm
from maml_tune.core.batched import make_batched_forward, per_task_loss, stack_params
from maml_tune.core.config import QUERY_NORMS, AlgoConfig, ArchConfig
from maml_tune.core.inner import LossFn, Params, adapt, inner_trajectory, make_forward
from maml_tune.core.nets import HEAD_PREFIX, BatchStatNorm, build_network
from maml_tune.core.precision import autocast
from maml_tune.core.tasks import TaskBatch
from maml_tune.errors import ConfigError


def loss_function(kind: str) -> LossFn:
    """Mean squared error for regression, cross-entropy on logits for classification."""
    return F.mse_loss if kind == "regression" else F.cross_entropy


def resolve_strategy(
    strategy: str, arch: ArchConfig, device: torch.device, algo: AlgoConfig | None = None
) -> str:
    """``auto`` → the strategy measured fastest for this architecture and device.

    On CPU (benchmarks/RESULTS.md) the batched strategy is fastest for MLPs and, one task
    per pass (:func:`auto_task_chunk`), for conv nets at the loop's memory; vmap is slower
    and far more memory-hungry for conv nets there. On CUDA, vmap (unmeasured so far).
    ``algo.checkpoint_inner`` rules out ``vmap`` (see :func:`explain_strategy`).
    """
    return explain_strategy(strategy, arch, device, algo)[0]


def explain_strategy(
    strategy: str, arch: ArchConfig, device: torch.device, algo: AlgoConfig | None = None
) -> tuple[str, str]:
    """(the strategy to run, one line saying why) for a requested ``strategy``."""
    checkpointed = algo is not None and algo.checkpoint_inner
    if strategy != "auto":
        if strategy == "vmap" and checkpointed:
            raise ConfigError(
                "algo.checkpoint_inner needs train.strategy loop, batched or auto, not vmap "
                "(torch.func transforms do not support the checkpoint's saved-tensor hooks)"
            )
        return strategy, "requested (alternatives: " + ", ".join(
            s for s in ("vmap", "loop", "batched") if s != strategy
        ) + ")"
    where = "CUDA" if device.type == "cuda" else device.type.upper()
    if arch.kind == "mlp" and device.type != "cuda":
        return "batched", (
            f"auto: mlp on {where}: one batched pass for all tasks (measured fastest: "
            "about 1.3-2x vmap and over 10x the per-task loop; vmap and loop are the alternatives)"
        )
    if device.type == "cuda":
        if checkpointed:
            return "batched", (
                f"auto: {arch.kind} on {where} would vmap, but algo.checkpoint_inner "
                "cannot run under vmap, so batched (one grouped pass)"
            )
        return "vmap", (
            f"auto: {arch.kind} on {where}: tasks vectorised with torch.func.vmap "
            "(one kernel per op for all tasks; loop and batched are the alternatives)"
        )
    return "batched", (
        f"auto: conv on {where}: batched, one task per pass, channels-last with fused "
        "conv-norm-pool blocks (measured fastest at less than the per-task loop's memory; "
        "vmap is slower and memory-hungry)"
    )


def auto_task_chunk(strategy: str, task_chunk: int, arch: ArchConfig, device: torch.device) -> int:
    """The tasks back-propagated at once: ``task_chunk`` when set, else one per pass for conv
    nets on CPU under ``auto`` (grouping tasks gains nothing there and multiplies memory)."""
    if task_chunk or strategy != "auto":
        return task_chunk
    return 1 if arch.kind == "conv" and device.type != "cuda" else 0


@dataclass(frozen=True)
class BatchOutcome:
    """Per-task results of adapting to a batch: query losses and accuracies (``None`` for regression)."""

    loss_before: torch.Tensor
    loss_after: torch.Tensor
    accuracy_before: torch.Tensor | None
    accuracy_after: torch.Tensor | None


class MetaLearner(nn.Module):
    """Initial weights θ (``net``) and the learned inner rates (``lrs``, of the parameters named
    in ``learned_rate_names``) of algorithms that learn them (Meta-SGD, LSLR)."""

    def __init__(
        self,
        arch: ArchConfig,
        algo: AlgoConfig,
        input_shape: Sequence[int],
        output_size: int,
        kind: str,
    ):
        super().__init__()
        self.arch, self.algo, self.kind = arch, algo, kind
        self.input_shape, self.output_size = tuple(input_shape), output_size
        self.net = build_network(arch, self.input_shape, output_size)
        self.algorithm = algorithm(algo.algorithm)
        shapes = {name: p.shape for name, p in self.net.named_parameters()}
        self.adapted_names = self.algorithm.adapted(list(shapes), HEAD_PREFIX)
        rate_shapes = {
            name: self.algorithm.learned_rate_shape(shapes[name], algo.inner_steps)
            for name in self.adapted_names
        }
        self.learned_rate_names = [name for name, shape in rate_shapes.items() if shape is not None]
        self.lrs = nn.ParameterList(
            nn.Parameter(torch.full(rate_shapes[name], algo.inner_lr)) for name in self.learned_rate_names
        )
        self.loss_fn = loss_function(kind)
        self.functional_forward = make_forward(self.net, dict(self.net.named_buffers()))
        self.batched_forward = make_batched_forward(self.net)
        self.per_task_loss = per_task_loss(kind)
        self.normalises = any(isinstance(m, BatchStatNorm) for m in self.net.modules())

    def weights(self) -> Params:
        """θ: the network's meta-learned initial weights, by name."""
        return dict(self.net.named_parameters())

    def inner_lrs(self) -> dict[str, torch.Tensor | float]:
        """The inner learning rate of each adapted parameter (fixed floats or learned tensors)."""
        learned = dict(zip(self.learned_rate_names, self.lrs))
        return {name: learned.get(name, float(self.algo.inner_lr)) for name in self.adapted_names}

    def adapt(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, first_order: bool = False
    ) -> Params:
        """Adapted weights for one task's support set (unbatched: ``(S, *input_shape)``)."""
        return adapt(
            self.functional_forward, self.weights(), self.inner_lrs(), support_x, support_y,
            self.loss_fn, steps, first_order,
        )

    def query_outputs(
        self,
        params: Params,
        support_x: torch.Tensor,
        query_x: torch.Tensor,
        query_norm: str,
        *,
        batched: bool = False,
    ) -> torch.Tensor:
        """The network's outputs on ``query_x`` with weights ``params`` (adapted or not).

        ``query_norm`` (see :class:`~maml_tune.core.config.AlgoConfig`): ``transductive``
        normalises the query with its own statistics; ``support`` runs support and query
        as one batch whose norms take the support rows' statistics. With ``batched``,
        ``params`` are stacked over tasks and the tensors carry a leading task dimension.
        """
        if query_norm not in QUERY_NORMS:
            raise ConfigError(
                f"query normalisation: expected one of {', '.join(QUERY_NORMS)}, got {query_norm!r}"
            )
        forward = self.batched_forward if batched else self.functional_forward
        if query_norm == "transductive" or not self.normalises:
            return forward(params, query_x)
        dim = 1 if batched else 0
        rows = support_x.shape[dim]
        out = forward(params, torch.cat((support_x, query_x), dim=dim), rows)
        return out.narrow(dim, rows, query_x.shape[dim])

    def task_objective(
        self,
        params: Params,
        lrs: dict[str, torch.Tensor | float],
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        step_weights: Sequence[float] | None,
        *,
        batched: bool = False,
        functional_grad: bool = True,
    ) -> torch.Tensor:
        """The meta-loss of the algorithm (:meth:`Algorithm.meta_loss`; MAML's: the query loss
        after adaptation, or MAML++'s weighted sum over steps).

        Per task (unbatched tensors) it returns a scalar. With ``batched``, ``params`` are
        stacked over tasks, the tensors carry a leading task dimension, and it returns the
        ``(T,)`` per-task losses; the inner loop then minimises their sum, whose gradient
        with respect to each task's stacked weights is that task's own gradient.
        ``functional_grad`` must stay on under ``vmap``; off, the inner loop uses the
        cheaper ``torch.autograd.grad`` (see :func:`inner_trajectory`).
        """
        if batched:
            forward, query_loss = self.batched_forward, self.per_task_loss

            def inner_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return self.per_task_loss(out, y).sum()
        else:
            forward, query_loss, inner_loss = self.functional_forward, self.loss_fn, self.loss_fn
        trajectory = inner_trajectory(
            forward, params, lrs, support_x, support_y, inner_loss,
            self.algo.inner_steps, self.algo.is_first_order,
            second_order_steps=self.algo.second_order_steps,
            checkpoint=self.algo.checkpoint_inner,
            functional_grad=functional_grad,
        )
        mode = self.algo.query_norm

        def loss_of(adapted: Params) -> torch.Tensor:
            return query_loss(self.query_outputs(adapted, support_x, query_x, mode, batched=batched), query_y)

        return self.algorithm.meta_loss(params, trajectory, loss_of, step_weights, int(batched))

    def accumulate_meta_gradient(
        self,
        batch: TaskBatch,
        strategy: str,
        step_weights: Sequence[float] | None = None,
        task_chunk: int = 0,
        *,
        precision: str = "fp32",
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor:
        """Add ∇(mean meta-loss over the batch) to the meta-parameters' ``.grad``; return the mean loss.

        ``vmap`` vectorises the per-task computation with ``torch.func.vmap``; ``batched``
        runs the tasks through one grouped network pass; both back-propagate ``task_chunk``
        tasks at a time (0: the whole batch), which bounds memory. ``loop`` back-propagates
        task by task, so at most one task's graph is alive at a time.

        ``precision`` runs the forward passes under autocast (:mod:`~maml_tune.core.precision`);
        with a ``grad_scaler`` (fp16) the backward pass starts from the scaled loss and the
        ``.grad`` are scaled accordingly (the returned loss is not).
        """
        params, lrs = self.weights(), self.inner_lrs()
        n_tasks = batch.n_tasks

        def objective(sx, sy, qx, qy):
            # Only vmap needs torch.func.grad; autograd.grad is cheaper everywhere else.
            return self.task_objective(
                params, lrs, sx, sy, qx, qy, step_weights, functional_grad=strategy == "vmap"
            )

        def chunk_loss(chunk: TaskBatch) -> torch.Tensor:
            if strategy == "loop":
                return objective(*(t[0] for t in chunk.tensors()))
            if strategy == "vmap":
                return vmap(objective)(*chunk.tensors()).sum()
            stacked = stack_params(params, chunk.n_tasks)
            return self.task_objective(
                stacked, lrs, *chunk.tensors(), step_weights, batched=True, functional_grad=False
            ).sum()

        if strategy not in ("loop", "vmap", "batched"):
            raise ValueError(f"unknown execution strategy {strategy!r}; resolve 'auto' first")
        if strategy == "vmap" and self.algo.checkpoint_inner:
            raise ConfigError("algo.checkpoint_inner cannot run under the vmap strategy; use loop or batched")
        size = 1 if strategy == "loop" else task_chunk or n_tasks
        device = batch.query_x.device
        total = torch.zeros((), dtype=batch.query_x.dtype, device=device)
        for chunk in batch.chunks(size):
            with autocast(precision, device):
                loss = chunk_loss(chunk) / n_tasks
            (loss if grad_scaler is None else grad_scaler.scale(loss)).backward()
            total += loss.detach()
        return total

    @torch.no_grad()
    def outcome(
        self, batch: TaskBatch, steps: int, strategy: str, *, precision: str = "fp32",
        query_norm: str | None = None,
    ) -> BatchOutcome:
        """Per-task query loss (and accuracy) before and after ``steps`` adaptation steps.

        Adaptation here needs no meta-gradient, so ``algo.second_order_steps`` and
        ``algo.checkpoint_inner`` do not apply; ``precision`` autocasts the forward passes
        (the inner-loop gradients use ``torch.func.grad``, which works without recording).
        ``query_norm`` (default: ``algo.query_norm``, the training mode) is how the query
        set is normalised (:meth:`query_outputs`).
        """
        mode = self.algo.query_norm if query_norm is None else query_norm
        with autocast(precision, batch.query_x.device):
            result = self._outcome(batch, steps, strategy, mode)
        if precision == "fp32":
            return result
        return BatchOutcome(*(None if t is None else t.float() for t in (
            result.loss_before, result.loss_after, result.accuracy_before, result.accuracy_after
        )))

    def _outcome(self, batch: TaskBatch, steps: int, strategy: str, query_norm: str) -> BatchOutcome:
        lrs = self.inner_lrs()
        classify = self.kind == "classification"
        batched = strategy == "batched"
        if batched:
            forward, loss = self.batched_forward, self.per_task_loss
            params = stack_params(self.weights(), batch.n_tasks)

            def inner_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return self.per_task_loss(out, y).sum()

            def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)
        else:
            forward, loss, inner_loss = self.functional_forward, self.loss_fn, self.loss_fn
            params, accuracy = self.weights(), _accuracy

        def per_task(sx, sy, qx, qy):
            before = self.query_outputs(params, sx, qx, query_norm, batched=batched)
            adapted = adapt(forward, params, lrs, sx, sy, inner_loss, steps)
            after = self.query_outputs(adapted, sx, qx, query_norm, batched=batched)
            results = [loss(before, qy), loss(after, qy)]
            if classify:
                results += [accuracy(before, qy), accuracy(after, qy)]
            return tuple(results)

        stacked = per_task(*batch.tensors()) if batched else map_tasks(per_task, batch, strategy)
        if classify:
            return BatchOutcome(*stacked)
        return BatchOutcome(stacked[0], stacked[1], None, None)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()


def map_tasks(
    fn: Callable[..., tuple[torch.Tensor, ...]], batch: TaskBatch, strategy: str
) -> tuple[torch.Tensor, ...]:
    """Apply a per-task function to every task of ``batch``; stack its outputs along dim 0."""
    if strategy == "vmap":
        return vmap(fn)(*batch.tensors())
    outputs = [fn(*(t[index] for t in batch.tensors())) for index in range(batch.n_tasks)]
    return tuple(torch.stack(column) for column in zip(*outputs))
