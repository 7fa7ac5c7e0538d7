"""The public Python API: load a meta-trained checkpoint, adapt it to a support set, predict.

    from maml_tune import load_learner
    learner = load_learner("runs/sinusoid")
    model = learner.adapt(support_x, support_y)      # (S, *input_shape), targets
    predictions = model.predict(query_x)

Adaptation runs the same inner loop as meta-training and evaluation. Predictions are
independent of each other by default: batch-statistics norms (conv nets) use the adapted
support set's statistics, so an example gets the same output alone or in any batch.
"""

from __future__ import annotations

import os

import torch

from maml_tune.core.checkpoint import Checkpoint, load_checkpoint
from maml_tune.core.device import resolve_device
from maml_tune.core.inner import Params
from maml_tune.core.learner import MetaLearner
from maml_tune.core.nets import HEAD_PREFIX
from maml_tune.errors import ConfigError


class AdaptedModel:
    """A learner adapted to one task's support set."""

    def __init__(self, learner: Learner, params: Params, support_x: torch.Tensor):
        self._learner, self._params, self._support_x = learner, params, support_x

    def __repr__(self) -> str:
        outputs = self._params[f"{HEAD_PREFIX}bias"].shape[0]
        family = self._learner.config.family
        return f"<AdaptedModel of {family}: {len(self._support_x)} support examples, {outputs} outputs>"

    @torch.no_grad()
    def predict(self, x: torch.Tensor, query_norm: str = "support") -> torch.Tensor:
        """Regression outputs, or class logits, for inputs ``(B, *input_shape)``.

        ``query_norm``: ``support`` (default) normalises with the support set's statistics,
        so each row of the result depends only on the support set and that input;
        ``transductive`` uses the statistics of ``x`` itself, as Finn et al.'s evaluation
        does (rows then depend on the whole batch). Networks without batch-statistics
        norms give the same result either way.
        """
        x = self._learner._inputs(x)
        learner = self._learner.checkpoint.learner
        return learner.query_outputs(self._params, self._support_x, x, query_norm)

    def predict_classes(self, x: torch.Tensor, query_norm: str = "support") -> torch.Tensor:
        """Class indices ``(B,)`` for a classification learner (``query_norm`` as in :meth:`predict`)."""
        if self._learner.kind != "classification":
            raise ConfigError("predict_classes needs a classification learner")
        return self.predict(x, query_norm).argmax(dim=-1)


class Learner:
    """A meta-trained initialisation (and inner learning rates) loaded from a checkpoint."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device):
        self.checkpoint, self.device = checkpoint, device
        self.config = checkpoint.config
        self.kind, self.input_shape = checkpoint.kind, checkpoint.input_shape
        self.output_size = checkpoint.output_size
        self._resized: dict[int, MetaLearner] = {}  # learners for other class counts, built once each

    def __repr__(self) -> str:
        classes = "any number of" if self.any_way else f"{self.output_size}"
        what = f"{classes} classes" if self.kind == "classification" else f"{self.output_size} output(s)"
        arch = self.config.arch
        return (
            f"<Learner {self.config.family}: {self.kind}, inputs {self.input_shape}, {what}; "
            f"{arch.kind} net, {self.config.algo.algorithm}, "
            f"{self.config.algo.eval_inner_steps} inner step(s) at lr {self.config.algo.inner_lr:g}; "
            f"on {self.device}>"
        )

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"inputs must have shape (batch, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return x

    @property
    def any_way(self) -> bool:
        """Whether this learner classifies any number of classes (``arch.head`` zero or
        shared), not only the N it was meta-trained with (:attr:`output_size`)."""
        return self.kind == "classification" and self.config.arch.head_fits_any_outputs

    def adapt(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
        n_way: int | None = None,
    ) -> AdaptedModel:
        """Adapt to one task's support set (any number of examples per class); ``steps``
        defaults to the test-time inner steps. ``n_way`` is the task's number of classes
        (labels ``0 … n_way-1``): by default the learner's own N, or with an :attr:`any_way`
        learner the largest label + 1. Another N than the trained one needs :attr:`any_way`."""
        x = self._inputs(support_x)
        meta_learner = self.checkpoint.learner
        if self.kind == "classification":
            y = torch.as_tensor(support_y, dtype=torch.long, device=self.device)
            if y.shape != (len(x),):
                raise ConfigError(f"support labels must have shape ({len(x)},), got {tuple(y.shape)}")
            if n_way is None:
                labelled = int(y.max()) + 1 if y.numel() else self.output_size
                n_way = labelled if self.any_way else max(labelled, self.output_size)
            if n_way < 2:
                raise ConfigError(f"a classification task needs at least 2 classes, got {n_way}")
            if y.numel() and (y.min() < 0 or y.max() >= n_way):
                raise ConfigError(f"support labels must be in [0, {n_way}) for a {n_way}-way task")
            if n_way not in self._resized:
                self._resized[n_way] = meta_learner.resized(n_way)
            meta_learner = self._resized[n_way]
        else:
            y = torch.as_tensor(support_y, dtype=torch.float32, device=self.device)
            if y.numel() != len(x) * self.output_size:
                raise ConfigError(
                    f"support targets must hold {self.output_size} value(s) per input, "
                    f"got shape {tuple(y.shape)}"
                )
            y = y.reshape(len(x), self.output_size)
        steps = self.config.algo.eval_inner_steps if steps is None else steps
        with torch.no_grad():
            params = meta_learner.adapt(x, y, steps)
        return AdaptedModel(self, params, x)


def load_learner(path: str | os.PathLike, device: str = "cpu") -> Learner:
    """Load the checkpoint directory ``path`` onto ``device`` (``auto``, ``cpu``, ``cuda:N``)."""
    resolved = resolve_device(device)
    return Learner(load_checkpoint(path, resolved), resolved)
