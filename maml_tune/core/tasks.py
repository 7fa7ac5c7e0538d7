"""The batch of tasks the engine consumes: stacked tensors with a leading task dimension."""

from __future__ import annotations

import hashlib
import math
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


MAX_INPUT_SIZE = 2**26
"""Most numbers in one input example (``prod(input_shape)``): a 3 x 4096 x 4096 image fits."""
MAX_OUTPUT_SIZE = 2**20
"""Most classes per task (or target dimensions) a family may declare."""


def check_declared_shapes(sampler: TaskSampler) -> None:
    """Raise :class:`~maml_tune.errors.FamilyError` unless the family's ``input_shape`` is a tuple
    of positive integers, at most :data:`MAX_INPUT_SIZE` numbers, and its ``output_size`` an
    integer from 1 (2 classes) to :data:`MAX_OUTPUT_SIZE`. Called once before a family's first
    batch is checked and before a network is built for it (after ``prepare``: some families
    learn their shapes from the data); :func:`check_batch` relies on it."""
    from maml_tune.errors import FamilyError

    where = f"task family {getattr(sampler, 'name', type(sampler).__name__)!r}"
    shape = sampler.input_shape
    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise FamilyError(f"{where}: input_shape must be a tuple of positive integers, got {shape!r}")
    if math.prod(shape) > MAX_INPUT_SIZE:
        raise FamilyError(
            f"{where}: input_shape {tuple(shape)} holds {math.prod(shape)} numbers per example;"
            f" at most {MAX_INPUT_SIZE} are supported"
        )
    size, low = sampler.output_size, 2 if sampler.kind == "classification" else 1
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= MAX_OUTPUT_SIZE:
        what = "classes" if sampler.kind == "classification" else "target dimensions"
        raise FamilyError(
            f"{where}: output_size must be an integer from {low} to {MAX_OUTPUT_SIZE} ({what}), got {size!r}"
        )


def check_batch(batch: object, sampler: TaskSampler, split: str, n_tasks: int) -> None:
    """Raise :class:`~maml_tune.errors.FamilyError` when a family's ``sample`` broke the contract
    (not a :class:`TaskBatch`, wrong task count, shape or dtype, labels outside the classes);
    cheap enough to run on every batch, it turns a deep error into one line naming the family."""
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
        if x.dtype != torch.float32:
            raise FamilyError(f"{where}: {label} inputs are {x.dtype}, expected torch.float32")
        want = torch.float32 if sampler.kind == "regression" else torch.int64
        if y.dtype != want:
            raise FamilyError(f"{where}: {label} targets are {y.dtype}, expected {want}")
    if sampler.kind == "classification" and sy.numel() and qy.numel():
        # One synchronisation per batch; an out-of-range label would be a device-side assert on CUDA.
        low, high = torch.stack([sy.min(), qy.min(), sy.max(), qy.max()]).aminmax()
        low, high = int(low), int(high)
        if low < 0 or high >= sampler.output_size:
            raise FamilyError(
                f"{where}: labels run from {low} to {high}, expected 0 to {sampler.output_size - 1}"
                " (output_size - 1)"
            )
