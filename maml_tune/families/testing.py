"""The task-family conformance suite, shipped so any family (built-in or third-party) can run it.

From pytest, subclass :class:`TaskFamilyConformance` and implement ``make_family``::

    from maml_tune.families.testing import TaskFamilyConformance

    class TestMyFamily(TaskFamilyConformance):
        def make_family(self):
            return MyFamily({"n_way": 3})

Every check becomes one test. Outside pytest, :func:`run_conformance` returns one
:class:`CheckResult` per check (this is what ``maml-tune plugins check`` prints).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maml_tune.core.config import ArchConfig, resolve_key
from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import SPLITS, TaskBatch, split_generator
from maml_tune.core.trainer import MetaTrainer, build_learner
from maml_tune.families._contract import TaskFamily
from maml_tune.families.registry import contract_problem

CPU = torch.device("cpu")
N_TASKS = 4
LEARN_ITERATIONS = 40
LEARN_META_BATCH = 8
LEARN_EVAL_TASKS = 40
LEARN_CONV_CHANNELS = 16


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    reason: str = ""


def _sample(family: TaskFamily, split: str, seed: int, n_tasks: int = N_TASKS) -> TaskBatch:
    return family.sample(split, n_tasks, split_generator(split, seed), CPU)


def check_contract(family: TaskFamily) -> None:
    """Class attributes, shapes, default architecture, literature config and search space are valid."""
    problem = contract_problem(type(family))
    assert problem is None, problem
    shape = family.input_shape
    assert isinstance(shape, tuple) and shape and all(isinstance(d, int) and d > 0 for d in shape), (
        f"input_shape must be a non-empty tuple of positive ints, got {shape!r}"
    )
    assert isinstance(family.output_size, int) and family.output_size > 0, (
        f"output_size must be a positive int, got {family.output_size!r}"
    )
    ArchConfig(**family.default_architecture())
    family.run_config()
    for key in family.default_search_space():
        resolve_key(key)


def check_shapes_and_dtypes(family: TaskFamily) -> None:
    """Every split returns stacked float32 inputs and targets of the documented shapes, all finite."""
    for split in SPLITS:
        batch = _sample(family, split, seed=0)
        sx, sy, qx, qy = batch.tensors()
        where = f"split {split!r}"
        assert sx.dtype == qx.dtype == torch.float32, f"{where}: inputs must be float32, got {sx.dtype}"
        assert sx.shape[0] == qx.shape[0] == sy.shape[0] == qy.shape[0] == N_TASKS, (
            f"{where}: asked for {N_TASKS} tasks, got leading dims {[t.shape[0] for t in batch.tensors()]}"
        )
        assert tuple(sx.shape[2:]) == tuple(qx.shape[2:]) == family.input_shape, (
            f"{where}: inputs must be (tasks, examples, *{family.input_shape}), got "
            f"{tuple(sx.shape)} and {tuple(qx.shape)}"
        )
        assert sx.shape[1] > 0 and qx.shape[1] > 0, f"{where}: empty support or query set"
        if family.kind == "regression":
            for name, x, y in (("support", sx, sy), ("query", qx, qy)):
                expected = (N_TASKS, x.shape[1], family.output_size)
                assert tuple(y.shape) == expected, (
                    f"{where}: {name} targets must be {expected}, got {tuple(y.shape)}"
                )
                assert y.dtype == torch.float32, f"{where}: regression targets must be float32, got {y.dtype}"
        else:
            for name, x, y in (("support", sx, sy), ("query", qx, qy)):
                expected = (N_TASKS, x.shape[1])
                assert tuple(y.shape) == expected, (
                    f"{where}: {name} labels must be {expected}, got {tuple(y.shape)}"
                )
                assert y.dtype == torch.int64, f"{where}: labels must be int64, got {y.dtype}"
                assert y.min() >= 0 and y.max() < family.output_size, (
                    f"{where}: labels must lie in [0, {family.output_size})"
                )
        for tensor in batch.tensors():
            assert tensor.device.type == "cpu", f"{where}: tensors must be on the requested device"
            assert torch.isfinite(tensor.float()).all(), f"{where}: non-finite values"


def check_seeded_determinism(family: TaskFamily) -> None:
    """The same generator seed gives identical tasks; another seed gives different tasks."""
    first, again, other = (_sample(family, "train", seed) for seed in (0, 0, 1))
    for a, b in zip(first.tensors(), again.tensors()):
        assert torch.equal(a, b), "two generators with the same seed produced different tasks"
    assert not torch.equal(first.support_x, other.support_x), "different seeds produced identical tasks"


def check_split_disjointness(family: TaskFamily) -> None:
    """No input example drawn for validation or test also appears in training tasks."""
    train = _sample(family, "train", seed=0, n_tasks=16)
    seen = torch.cat([train.support_x.flatten(0, 1), train.query_x.flatten(0, 1)]).flatten(1)
    seen_rows = {tuple(row.tolist()) for row in seen}
    for split in ("val", "test"):
        batch = _sample(family, split, seed=0, n_tasks=16)
        rows = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]).flatten(1)
        shared = sum(tuple(row.tolist()) in seen_rows for row in rows)
        assert shared == 0, f"{shared} input examples of split {split!r} also appear in 'train' tasks"


def check_vmap_safety(family: TaskFamily) -> None:
    """The default network adapts identically when tasks are vmapped and when they are looped."""
    config = family.run_config()
    torch.manual_seed(0)
    learner = MetaLearner(config.arch, config.algo, family.input_shape, family.output_size, family.kind)
    batch = _sample(family, "train", seed=0)
    vmapped = learner.outcome(batch, steps=1, strategy="vmap")
    looped = learner.outcome(batch, steps=1, strategy="loop")
    assert torch.allclose(vmapped.loss_after, looped.loss_after, rtol=1e-4, atol=1e-5), (
        f"vmapped and looped post-adaptation losses differ: {vmapped.loss_after} vs {looped.loss_after}"
    )


def check_learns(family: TaskFamily) -> None:
    """A few meta-iterations improve adaptation: a lower post-adaptation validation loss
    (or, for classification, a higher post-adaptation validation accuracy).

    Conv nets (and ResNet-12) are narrowed to :data:`LEARN_CONV_CHANNELS` channels so the check stays quick
    on a CPU: it tests that the family's tasks are learnable, not the architecture.
    """
    overrides = {
        "train.iterations": LEARN_ITERATIONS,
        "train.meta_batch": LEARN_META_BATCH,
        "train.val_interval": LEARN_ITERATIONS,
        "train.val_tasks": LEARN_EVAL_TASKS,
    }
    if family.run_config().arch.kind in ("conv", "resnet12"):
        overrides["arch.channels"] = min(family.run_config().arch.channels, LEARN_CONV_CHANNELS)
    config = family.run_config(overrides)
    trainer = MetaTrainer(config, family, CPU)
    before = trainer.validate(build_learner(config, family, CPU))
    after = trainer.validate(trainer.run().learner)
    lower_loss = after.loss_after.mean < before.loss_after.mean
    # Early in training an adapted classifier's loss is noisy while its accuracy rises.
    higher_accuracy = (
        family.kind == "classification" and after.accuracy_after.mean > before.accuracy_after.mean
    )
    assert lower_loss or higher_accuracy, (
        f"{LEARN_ITERATIONS} meta-iterations did not lower the post-adaptation loss "
        f"({before.loss_after.mean:.4g} → {after.loss_after.mean:.4g})"
        + (
            f" nor raise the accuracy ({before.accuracy_after.mean:.3f} → {after.accuracy_after.mean:.3f})"
            if family.kind == "classification"
            else ""
        )
    )


CHECKS: dict[str, Callable[[TaskFamily], None]] = {
    "contract": check_contract,
    "shapes_and_dtypes": check_shapes_and_dtypes,
    "seeded_determinism": check_seeded_determinism,
    "split_disjointness": check_split_disjointness,
    "vmap_safety": check_vmap_safety,
    "learns": check_learns,
}


def run_conformance(make_family: Callable[[], TaskFamily]) -> list[CheckResult]:
    """Run every check on a fresh, prepared family; a failure never stops the other checks."""
    results = []
    try:
        family = make_family()
        family.prepare()
    except Exception as exc:
        reason = f"could not create and prepare the family: {type(exc).__name__}: {exc}"
        return [CheckResult(name, False, reason) for name in CHECKS]
    for name, check in CHECKS.items():
        try:
            with torch.random.fork_rng():
                check(family)
        except AssertionError as exc:
            results.append(CheckResult(name, False, str(exc) or "assertion failed"))
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            results.append(
                CheckResult(name, False, f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")
            )
        else:
            results.append(CheckResult(name, True))
    return results


class TaskFamilyConformance:
    """Pytest mixin: one test per conformance check for the family ``make_family`` returns."""

    def make_family(self) -> TaskFamily:
        raise NotImplementedError

    def _family(self) -> TaskFamily:
        family = self.make_family()
        family.prepare()
        return family


def _make_test(check: Callable[[TaskFamily], None]):
    def test(self: TaskFamilyConformance) -> None:
        with torch.random.fork_rng():
            check(self._family())

    test.__doc__ = check.__doc__
    return test


for _name, _check in CHECKS.items():
    setattr(TaskFamilyConformance, f"test_{_name}", _make_test(_check))
