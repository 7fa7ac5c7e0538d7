"""The base class of an execution strategy (one subclass per module of this package)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from maml_tune.core.tasks import TaskBatch

if TYPE_CHECKING:
    from maml_tune.core.learner import MetaLearner


class Strategy:
    """How the tasks of a meta-batch are executed: one at a time, vectorised with
    ``torch.func.vmap``, or stacked through one grouped network pass.

    Every strategy computes the same numbers (the float64 tests compare each with the
    reference and with the others); they differ in speed and memory. The meta-learner calls
    :meth:`meta_loss` once per chunk of tasks while meta-training and :meth:`outcome` when
    validating or testing; both leave the learner unchanged (gradients are accumulated by
    the caller's backward pass). A strategy is a stateless singleton.
    """

    name: ClassVar[str]
    """The value of ``train.strategy`` that selects it."""
    one_task_per_pass: ClassVar[bool] = False
    """It back-propagates one task at a time whatever ``train.task_chunk`` says."""
    supports_checkpoint_inner: ClassVar[bool] = True
    """It can run ``algo.checkpoint_inner``'s checkpointed steps (``torch.func`` transforms
    do not support their saved-tensor hooks)."""

    def meta_loss(
        self, learner: MetaLearner, chunk: TaskBatch, step_weights: Sequence[float] | None
    ) -> torch.Tensor:
        """The sum of the per-task meta-losses of ``chunk``'s tasks, differentiable with
        respect to the learner's meta-parameters."""
        raise NotImplementedError

    def outcome(
        self, learner: MetaLearner, batch: TaskBatch, steps: int, query_norm: str
    ) -> tuple[torch.Tensor, ...]:
        """Per-task ``(loss before, loss after[, accuracy before, accuracy after])`` of
        adapting with ``steps`` inner steps, each a ``(T,)`` tensor (no gradient needed)."""
        raise NotImplementedError
