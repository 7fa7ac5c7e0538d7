"""The base class of a MAML variant (one subclass per module of this package)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from maml_tune.core.inner import Params, final_params

if TYPE_CHECKING:
    from maml_tune.core.config import AlgoConfig

QueryLoss = Callable[[Params], torch.Tensor]
"""The query loss of one set of (adapted) weights: a scalar per task, or ``(T,)`` batched."""


class Algorithm:
    """One MAML variant: which weights adapt, with which inner rates, and the meta-loss.

    The meta-learner asks an algorithm, once when it is built, which parameters adapt
    (:meth:`adapted`) and which inner rates are learned (:meth:`learned_rate_shape`);
    during meta-training it asks for each meta-batch's loss (:meth:`meta_loss`), whose
    gradient is the meta-gradient. Methods never change the learner or their arguments.
    An algorithm is a stateless singleton; subclasses set the class attributes and
    override only what differs from MAML, which this base class implements.
    """

    name: ClassVar[str]
    """The value of ``algo.algorithm`` that selects it."""
    summary: ClassVar[str]
    """One line for documentation and help: what it is, with its reference."""
    always_first_order: ClassVar[bool] = False
    """The meta-gradient never differentiates through the inner steps' gradients, whatever
    ``algo.first_order`` says (so that setting is no choice for it)."""

    def validate(self, algo: AlgoConfig) -> None:
        """Called when an :class:`AlgoConfig` naming this algorithm is built; raises
        :class:`~maml_tune.errors.ConfigError` for settings it cannot honour."""

    def adapted(self, names: Sequence[str], head_prefix: str) -> list[str]:
        """The parameters the inner loop adapts, of the network's ``names`` in order (the
        head's start with ``head_prefix``); the others stay at θ. Default: all."""
        return list(names)

    def learned_rate_shape(self, shape: torch.Size, inner_steps: int) -> tuple[int, ...] | None:
        """The shape of the learned inner rate of a parameter of ``shape`` (its first
        dimension indexes inner steps, see :func:`~maml_tune.core.inner.step_lr`), or
        ``None`` for the fixed rate ``algo.inner_lr``. Default: fixed."""
        return None

    def meta_loss(
        self,
        params: Params,
        trajectory: Iterator[Params],
        query_loss: QueryLoss,
        step_weights: Sequence[float] | None,
        task_dim: int,
    ) -> torch.Tensor:
        """A task's meta-loss, whose gradient with respect to ``params`` (θ, and the learned
        rates through ``trajectory``) is its meta-gradient, and whose value is reported.

        ``trajectory`` yields the weights after each inner step on the support set;
        ``step_weights`` are MAML++'s multi-step-loss weights (``None``: off); ``task_dim``
        is 1 when tensors are stacked over tasks (the loss is then ``(T,)``), else 0.
        Default (MAML): the query loss after the last step, or the weighted sum of the
        query losses after every step.
        """
        if step_weights is None:
            return query_loss(final_params(trajectory, params))
        steps = zip(step_weights, trajectory, strict=True)
        return torch.stack([weight * query_loss(adapted) for weight, adapted in steps]).sum(dim=0)
