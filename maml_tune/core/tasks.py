"""The batch of tasks the engine consumes: stacked tensors with a leading task dimension."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch

SPLITS = ("train", "val", "test")
KINDS = ("regression", "classification")


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks, each with a support set of ``S`` and a query set of ``Q`` examples.

    Inputs are ``(T, S, *input_shape)`` / ``(T, Q, *input_shape)`` floats. Targets are
    ``(T, S, output_size)`` floats for regression and ``(T, S)`` int64 class indices
    in ``[0, output_size)`` for classification.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.support_x, self.support_y, self.query_x, self.query_y)

    def chunks(self, size: int) -> list[TaskBatch]:
        return [
            TaskBatch(*(t[start : start + size] for t in self.tensors()))
            for start in range(0, self.n_tasks, size)
        ]


class TaskSampler(Protocol):
    """What the engine needs from a task family (structurally: the core never imports families)."""

    kind: str
    input_shape: tuple[int, ...]
    output_size: int

    def sample(
        self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device
    ) -> TaskBatch: ...


def split_generator(split: str, seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for ``split`` seeded from ``seed``; different splits never share a stream."""
    # CPU generators only use the low 32 bits of a seed, so mix split and seed into them.
    digest = hashlib.sha256(f"{split}:{seed}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:4], "little"))
    return generator


def check_batch(batch: object, sampler: TaskSampler, split: str, n_tasks: int) -> None:
    """Raise :class:`~maml_tune.errors.FamilyError` when a family's ``sample`` broke the contract
    (not a :class:`TaskBatch`, wrong task count, input shape or target shape); cheap enough
    to run on every batch, it turns a deep shape error into one line naming the family."""
    from maml_tune.errors import FamilyError

    name = getattr(sampler, "name", type(sampler).__name__)
    where = f"task family {name!r}: sample({split!r}, {n_tasks})"
    if not isinstance(batch, TaskBatch):
        raise FamilyError(f"{where} returned {type(batch).__name__}, expected a TaskBatch")
    tensors = batch.tensors()
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise FamilyError(f"{where}: every field of the TaskBatch must be a torch.Tensor")
    sx, sy, qx, qy = tensors
    shape = tuple(sampler.input_shape)
    for label, x, y in (("support", sx, sy), ("query", qx, qy)):
        if x.dim() < 2 or x.shape[0] != n_tasks or tuple(x.shape[2:]) != shape:
            raise FamilyError(
                f"{where}: {label} inputs have shape {tuple(x.shape)}, expected ({n_tasks}, examples, "
                f"{', '.join(map(str, shape))})"
            )
        expected = (
            (n_tasks, x.shape[1], sampler.output_size)
            if sampler.kind == "regression"
            else (n_tasks, x.shape[1])
        )
        if tuple(y.shape) != expected:
            raise FamilyError(f"{where}: {label} targets have shape {tuple(y.shape)}, expected {expected}")
