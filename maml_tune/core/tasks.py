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

    def task(self, index: int) -> TaskBatch:
        """The single task ``index``, keeping a leading task dimension of 1."""
        return TaskBatch(*(t[index : index + 1] for t in self.tensors()))

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
