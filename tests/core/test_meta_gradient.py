"""The meta-gradient of every algorithm and execution strategy is exact.

Each case builds a float64 :class:`MetaLearner`, lets ``accumulate_meta_gradient`` fill
the ``.grad`` of its meta-parameters, and compares them with ``tests/core/reference.py``:
an independent functional forward pass and a task-by-task ``torch.autograd.grad`` inner
loop. Every execution strategy (``vmap``, ``loop``, ``batched``) is checked. Error measure
(per meta-parameter tensor): ``max|g - g_ref| / max|g_ref|`` must be ≤ 1e-6; a tensor whose reference gradient is structurally zero (max|g_ref| ≤ 1e-12, e.g.
the bias of a conv directly followed by the batch-statistics norm) must instead satisfy
``max|g| ≤ 1e-12``.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import TaskBatch


def _load_reference():
    name = "maml_tune_meta_gradient_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).with_name("reference.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reference = _load_reference()

REL_TOL = 1e-6
ZERO_TOL = 1e-12

# ---------------------------------------------------------------------------------------
# Problems: a small regression MLP and a small conv classifier.
# ---------------------------------------------------------------------------------------

PROBLEMS = {
    # 1-40-40-1 (Finn et al.); 4 tasks, 5 support / 5 query points.
    "mlp": {
        "arch": ArchConfig(),
        "input_shape": (1,),
        "output_size": 1,
        "kind": "regression",
        "tasks": 4,
        "support": 5,
        "query": 5,
        "inner_lr": 0.1,
    },
    # 2 × (conv → batch-stat norm → relu → pool) on 1×8×8; 3-way, 2 shots, 2 queries/class.
    "conv": {
        "arch": ArchConfig(kind="conv", blocks=2, channels=4),
        "input_shape": (1, 8, 8),
        "output_size": 3,
        "kind": "classification",
        "tasks": 3,
        "support": 2,
        "query": 2,
        "inner_lr": 0.2,
    },
}

# name -> (AlgoConfig overrides, step_weights)
CASES = {
    "maml-1step": ({"algorithm": "maml", "inner_steps": 1}, None),
    "maml-3step": ({"algorithm": "maml", "inner_steps": 3}, None),
    "fomaml": ({"algorithm": "fomaml", "inner_steps": 2}, None),
    "maml-first_order": (
        {"algorithm": "maml", "first_order": True, "inner_steps": 2},
        None,
    ),
    "anil": ({"algorithm": "anil", "inner_steps": 2}, None),
    "metasgd": ({"algorithm": "metasgd", "inner_steps": 2}, None),
    "lslr": ({"algorithm": "lslr", "inner_steps": 3}, None),
    "multi_step_loss": ({"algorithm": "maml", "inner_steps": 3}, (0.2, 0.3, 0.5)),
    "lslr-multi_step_loss": (
        {"algorithm": "lslr", "inner_steps": 3},
        (0.25, 0.25, 0.5),
    ),
}

STRATEGIES = ("vmap", "loop", "batched")


def make_batch(problem: str, seed: int = 1) -> TaskBatch:
    spec = PROBLEMS[problem]
    g = torch.Generator().manual_seed(seed)
    t, s, q = spec["tasks"], spec["support"], spec["query"]
    if spec["kind"] == "regression":

        def x(n):
            return (
                torch.rand(t, n, *spec["input_shape"], generator=g, dtype=torch.float64)
                * 10
                - 5
            )

        sx, qx = x(s), x(q)
        amp = torch.rand(t, 1, 1, generator=g, dtype=torch.float64) * 4.9 + 0.1
        phase = torch.rand(t, 1, 1, generator=g, dtype=torch.float64) * torch.pi
        return TaskBatch(
            sx, amp * torch.sin(sx + phase), qx, amp * torch.sin(qx + phase)
        )
    ways = spec["output_size"]

    def images(per_class):
        return torch.randn(
            t, ways * per_class, *spec["input_shape"], generator=g, dtype=torch.float64
        )

    def labels(per_class):
        return torch.arange(ways).repeat(per_class).expand(t, -1).clone()

    return TaskBatch(images(s), labels(s), images(q), labels(q))


def make_learner(problem: str, case: str, seed: int = 0) -> MetaLearner:
    spec = PROBLEMS[problem]
    overrides, _ = CASES[case]
    algo = AlgoConfig(inner_lr=spec["inner_lr"], **overrides)
    torch.manual_seed(seed)
    learner = MetaLearner(
        spec["arch"], algo, spec["input_shape"], spec["output_size"], spec["kind"]
    )
    learner.double()
    # Non-equal learned rates: every element (Meta-SGD) or every step (LSLR) differs.
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for lr in learner.lrs:
            lr.mul_(0.5 + torch.rand(lr.shape, generator=g, dtype=lr.dtype))
    return learner


@functools.cache
def engine_gradients(problem: str, case: str, strategy: str) -> dict[str, torch.Tensor]:
    """The engine's meta-gradient, keyed by net parameter name and ``lr:<name>``."""
    learner = make_learner(problem, case)
    _, step_weights = CASES[case]
    learner.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(make_batch(problem), strategy, step_weights)
    out = {}
    for name, p in learner.net.named_parameters():
        out[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    for name, lr in zip(learner.adapted_names, learner.lrs):
        out[f"lr:{name}"] = None if lr.grad is None else lr.grad.detach().clone()
    return out


@functools.cache
def reference_gradients(problem: str, case: str) -> dict[str, torch.Tensor]:
    learner = make_learner(problem, case)
    spec = PROBLEMS[problem]
    _, step_weights = CASES[case]
    lrs = dict(zip(learner.adapted_names, learner.lrs))
    _, weight_grads, lr_grads = reference.meta_gradient(
        spec["arch"],
        learner.algo,
        spec["kind"],
        learner.weights(),
        lrs,
        *make_batch(problem).tensors(),
        step_weights=step_weights,
    )
    out = dict(weight_grads)
    out.update({f"lr:{name}": g for name, g in lr_grads.items()})
    return out


def relative_errors(got: dict, want: dict) -> dict[str, float]:
    """Per tensor: max|got - want| / max|want|, or max|got| where ``want`` is structurally zero."""
    assert set(got) == set(want)
    errors = {}
    for name, w in want.items():
        g = got[name]
        assert g is not None, f"{name}: no gradient"
        assert g.shape == w.shape, name
        scale = w.abs().max().item()
        diff = (g - w).abs().max().item()
        errors[name] = diff / scale if scale > ZERO_TOL else g.abs().max().item()
    return errors


def assert_close(got: dict, want: dict, what: str) -> None:
    errors = relative_errors(got, want)
    bad = {}
    for name, err in errors.items():
        zero = want[name].abs().max().item() <= ZERO_TOL
        if err > (ZERO_TOL if zero else REL_TOL):
            bad[name] = err
    assert not bad, f"{what}: meta-gradient mismatch (relative errors): {bad}"


def conv_biases_before_norm(learner: MetaLearner) -> list[str]:
    body = list(learner.net.body) if hasattr(learner.net, "body") else []
    return [
        f"body.{i}.bias"
        for i, m in enumerate(body[:-1])
        if isinstance(m, torch.nn.Conv2d)
        and type(body[i + 1]).__name__ == "BatchStatNorm"
    ]


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_reference_reads_the_networks_parameter_names():
    for problem, spec in PROBLEMS.items():
        learner = make_learner(problem, "maml-1step")
        assert sorted(reference.parameter_names(spec["arch"])) == sorted(
            learner.weights()
        ), problem
        # ... and computes the same function (so the name mapping is the right one).
        x = make_batch(problem).support_x[0]
        torch.testing.assert_close(
            reference.forward(spec["arch"], learner.weights(), x),
            learner.net(x),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_meta_gradient_matches_reference(problem, case, strategy):
    assert_close(
        engine_gradients(problem, case, strategy),
        reference_gradients(problem, case),
        f"{problem}/{case}/{strategy} vs reference",
    )


@pytest.mark.parametrize("strategy", ["vmap", "batched"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_vectorised_strategies_agree_with_the_loop(problem, case, strategy):
    assert_close(
        engine_gradients(problem, case, strategy),
        engine_gradients(problem, case, "loop"),
        f"{problem}/{case} {strategy} vs loop",
    )


@pytest.mark.parametrize("strategy", ["vmap", "batched"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_evaluation_outcomes_agree_across_strategies(problem, strategy):
    learner = make_learner(problem, "metasgd")
    batch = make_batch(problem)
    want = learner.outcome(batch, 3, "loop")
    got = learner.outcome(batch, 3, strategy)
    for field in ("loss_before", "loss_after", "accuracy_before", "accuracy_after"):
        if getattr(want, field) is not None:
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_second_order_terms_are_large_enough_to_be_checked(problem):
    """The tolerance is meaningful: dropping the second-order terms changes the gradient a lot."""
    second = reference_gradients(problem, "maml-3step")
    learner = make_learner(problem, "maml-3step")
    algo = AlgoConfig(inner_lr=learner.algo.inner_lr, inner_steps=3, first_order=True)
    spec = PROBLEMS[problem]
    _, first, _ = reference.meta_gradient(
        spec["arch"],
        algo,
        spec["kind"],
        learner.weights(),
        None,
        *make_batch(problem).tensors(),
    )
    errors = relative_errors(first, second)
    assert max(errors.values()) > 1e-2, errors


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["maml-3step", "multi_step_loss", "lslr"])
def test_conv_bias_before_batch_stat_norm_has_zero_meta_gradient(case, strategy):
    """A conv bias feeding the batch-statistics norm is cancelled by the mean subtraction, so
    its exact meta-gradient is 0. Under vmap, ``F.batch_norm``'s (wrong) second-order
    gradient makes it non-zero: this catches that class of error without any reference."""
    grads = engine_gradients("conv", case, strategy)
    conv_biases = conv_biases_before_norm(make_learner("conv", case))
    assert len(conv_biases) == PROBLEMS["conv"]["arch"].blocks
    for name in conv_biases:
        assert grads[name].abs().max().item() <= ZERO_TOL, (name, grads[name])
        # ... while the conv weight beside it does get a gradient.
        assert grads[name.replace(".bias", ".weight")].abs().max().item() > 1e-6


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["metasgd", "lslr", "lslr-multi_step_loss"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_learned_inner_rates_receive_gradient(problem, case, strategy):
    grads = engine_gradients(problem, case, strategy)
    learner = make_learner(problem, case)
    assert len(learner.lrs) == len(learner.adapted_names) > 0
    cancelled = set(conv_biases_before_norm(learner))
    for name in learner.adapted_names:
        g = grads[f"lr:{name}"]
        assert g is not None, f"lr:{name} got no gradient"
        assert torch.isfinite(g).all()
        if name in cancelled:
            # Stepping this bias changes nothing downstream of the norm: its rate's gradient is 0.
            assert g.abs().max().item() <= ZERO_TOL, (name, g)
            continue
        assert g.abs().max().item() > 0, f"lr:{name} has an all-zero gradient"
        if case.startswith("lslr"):
            # Every step's rate matters (a rate only used at the final step would also be non-zero).
            assert (g.abs() > 0).all(), f"lr:{name}: some step got no gradient: {g}"
