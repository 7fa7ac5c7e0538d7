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

from maml_tune.core.algorithms import algorithm
from maml_tune.core.batched import make_batched_forward, per_task_loss
from maml_tune.core.config import QUERY_NORMS, AlgoConfig, ArchConfig
from maml_tune.core.inner import LossFn, Params, adapt, inner_trajectory, make_forward
from maml_tune.core.nets import HEAD_PREFIX, BatchStatNorm, build_network
from maml_tune.core.precision import autocast
from maml_tune.core.strategies import AUTO, Strategy, checkpointable, strategy_named
from maml_tune.core.tasks import TaskBatch
from maml_tune.errors import ConfigError


def loss_function(kind: str) -> LossFn:
    """Mean squared error for regression, cross-entropy on logits for classification."""
    return F.mse_loss if kind == "regression" else F.cross_entropy


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
        # Shapes of one output's head row where the head serves any N, so that learned
        # inner rates (broadcast over the rows) do not depend on N either.
        with torch.no_grad():
            rows = 1 if arch.head_fits_any_outputs else output_size
            shapes = {name: p.shape for name, p in self._task_weights(rows).items()}
        self.adapted_names = self.algorithm.adapted(list(shapes), HEAD_PREFIX)
        if arch.head == "zero" and not any(name.startswith(HEAD_PREFIX) for name in self.adapted_names):
            raise ConfigError(
                f"arch.head zero needs an algorithm that adapts the head; {algo.algorithm} keeps it at zero"
            )
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
        """The weights every task's inner loop starts from, by name: θ (the network's
        meta-parameters) with the head's rows for this learner's ``output_size``."""
        return self._task_weights(self.output_size)

    def _task_weights(self, n_outputs: int) -> Params:
        params = dict(self.net.named_parameters())
        like = next(iter(params.values()))
        rows = self.net.head.task_rows(n_outputs, like)
        return {**params, **{f"{HEAD_PREFIX}{name}": t for name, t in rows.items()}}

    def resized(self, n_outputs: int) -> MetaLearner:
        """This learner for ``n_outputs`` outputs (classes): itself when that is its own
        ``output_size``; else, with a head that serves any number (``arch.head`` zero or
        shared), a learner with the same meta-parameters; :class:`ConfigError` for a fixed head."""
        if n_outputs == self.output_size:
            return self
        if not self.arch.head_fits_any_outputs:
            raise ConfigError(
                f"this model's head is fixed at {self.output_size} outputs (arch.head = fixed), "
                f"so it cannot serve {n_outputs}; meta-train with arch.head = zero or shared "
                "for a model that serves any number of classes"
            )
        if n_outputs < 1:
            raise ConfigError(f"a learner needs at least one output, not {n_outputs}")
        like = next(self.parameters())
        other = MetaLearner(self.arch, self.algo, self.input_shape, n_outputs, self.kind)
        other.to(like.device, like.dtype).load_state_dict(self.state_dict())
        return other

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

    def _functions(self, batched: bool) -> tuple[Callable, LossFn, LossFn]:
        """(forward, query loss, inner-loop loss) for one task, or for stacked tasks: then the
        query loss is per task, ``(T,)``, and the inner loop minimises their sum, whose
        gradient with respect to each task's stacked weights is that task's own gradient."""
        if not batched:
            return self.functional_forward, self.loss_fn, self.loss_fn

        def inner_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.per_task_loss(out, y).sum()

        return self.batched_forward, self.per_task_loss, inner_loss

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
        functional_grad: bool = False,
    ) -> torch.Tensor:
        """The algorithm's meta-loss (:meth:`Algorithm.meta_loss`; MAML's: the query loss
        after adaptation, or MAML++'s weighted sum over steps) of one task (a scalar), or
        with ``batched`` of stacked tasks (``(T,)``; ``params`` stacked, tensors with a
        leading task dimension). ``functional_grad`` takes the support gradients with
        ``torch.func.grad``, as ``vmap`` needs; otherwise with the cheaper
        ``torch.autograd.grad`` (see :func:`inner_trajectory`). Called by the strategies.
        """
        forward, query_loss, inner_loss = self._functions(batched)
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

    def task_outcome(
        self,
        params: Params,
        lrs: dict[str, torch.Tensor | float],
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        steps: int,
        query_norm: str,
        *,
        batched: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """(query loss before, after ``steps`` adaptation steps[, accuracy before, after]) of
        one task, or per task of stacked tasks with ``batched``. Called by the strategies."""
        forward, loss, inner_loss = self._functions(batched)
        before = self.query_outputs(params, support_x, query_x, query_norm, batched=batched)
        adapted = adapt(forward, params, lrs, support_x, support_y, inner_loss, steps)
        after = self.query_outputs(adapted, support_x, query_x, query_norm, batched=batched)
        results = [loss(before, query_y), loss(after, query_y)]
        if self.kind == "classification":
            results += [_accuracy(before, query_y), _accuracy(after, query_y)]
        return tuple(results)

    def accumulate_meta_gradient(
        self,
        batch: TaskBatch,
        strategy: Strategy | str,
        step_weights: Sequence[float] | None = None,
        task_chunk: int = 0,
        *,
        precision: str = "fp32",
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor:
        """Add ∇(mean meta-loss over the batch) to the meta-parameters' ``.grad``; return the mean loss.

        The ``strategy`` (:mod:`maml_tune.core.strategies`, or its name) back-propagates
        ``task_chunk`` tasks at a time (0: the whole batch; always one for ``loop``), which
        bounds memory. ``precision`` runs the forward passes under autocast
        (:mod:`~maml_tune.core.precision`); with a ``grad_scaler`` (fp16) the backward pass
        starts from the scaled loss and the ``.grad`` are scaled accordingly (the returned
        loss is not).
        """
        strategy = _strategy(strategy)
        if self.algo.checkpoint_inner and not strategy.supports_checkpoint_inner:
            raise ConfigError(
                f"algo.checkpoint_inner cannot run under the {strategy.name} strategy; "
                f"use {' or '.join(checkpointable())}"
            )
        n_tasks = batch.n_tasks
        size = 1 if strategy.one_task_per_pass else task_chunk or n_tasks
        device = batch.query_x.device
        total = torch.zeros((), dtype=batch.query_x.dtype, device=device)
        for chunk in batch.chunks(size):
            with autocast(precision, device):
                loss = strategy.meta_loss(self, chunk, step_weights) / n_tasks
            (loss if grad_scaler is None else grad_scaler.scale(loss)).backward()
            total += loss.detach()
        return total

    @torch.no_grad()
    def outcome(
        self, batch: TaskBatch, steps: int, strategy: Strategy | str, *, precision: str = "fp32",
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
            results = _strategy(strategy).outcome(self, batch, steps, mode)
        if precision != "fp32":
            results = tuple(t.float() for t in results)
        if self.kind == "classification":
            return BatchOutcome(*results)
        return BatchOutcome(results[0], results[1], None, None)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # A prediction tied between k classes scores 1/k if the label is among them: argmax would pick
    # one by position. Logits within rounding noise of the best are tied (a shared head ties all
    # classes before adaptation, and each execution strategy rounds them differently).
    best = logits.max(dim=-1, keepdim=True).values
    noise = 64 * torch.finfo(logits.dtype).eps * (1 + best.abs())
    top = logits >= best - noise
    hit = top.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (hit / top.sum(dim=-1)).float().mean(dim=-1)


def _strategy(strategy: Strategy | str) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if strategy == AUTO:
        raise ValueError("the 'auto' strategy must be resolved first (maml_tune.core.strategies.choose)")
    return strategy_named(strategy)
