"""The meta-gradient of every algorithm and execution strategy is exact.

Each case builds a float64 :class:`MetaLearner`, lets ``accumulate_meta_gradient`` fill
the ``.grad`` of its meta-parameters, and compares them with ``tests/core/reference.py``:
an independent functional forward pass and a task-by-task ``torch.autograd.grad`` inner
loop. Every execution strategy (``vmap``, ``loop``, ``batched``) is checked. Error measure
(per meta-parameter tensor): ``max|g - g_ref| / max|g_ref|`` must be ≤ 1e-6; a tensor
whose reference gradient is structurally zero (max|g_ref| ≤ 1e-12, e.g.
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

from maml_tune.core.batched import make_batched_forward, stack_params
from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.nets import build_network
from maml_tune.errors import ConfigError


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


def _load_cases():
    name = "maml_tune_tests_core_cases"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cases.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cases = _load_cases()
REL_TOL, ZERO_TOL = cases.REL_TOL, cases.ZERO_TOL
PROBLEMS, CASES, STRATEGIES = cases.PROBLEMS, cases.CASES, cases.STRATEGIES
make_batch, make_learner, relative_errors = cases.make_batch, cases.make_learner, cases.relative_errors
SUPPORTED = [(p, c, s) for p in PROBLEMS for c in CASES for s in STRATEGIES if cases.supports(c, s, p)]



@functools.cache
def engine_gradients(problem: str, case: str, strategy: str) -> dict[str, torch.Tensor]:
    """The engine's meta-gradient, keyed by net parameter name and ``lr:<name>``."""
    learner = make_learner(problem, case)
    _, step_weights = CASES[case]
    learner.zero_grad(set_to_none=True)
    cases.accumulate(learner, make_batch(problem), strategy, step_weights)
    out = {}
    for name, p in learner.net.named_parameters():
        out[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    for name, lr in zip(learner.learned_rate_names, learner.lrs):
        out[f"lr:{name}"] = None if lr.grad is None else lr.grad.detach().clone()
    return out


@functools.cache
def reference_gradients(problem: str, case: str) -> dict[str, torch.Tensor]:
    learner = make_learner(problem, case)
    spec = PROBLEMS[problem]
    _, step_weights = CASES[case]
    lrs = dict(zip(learner.learned_rate_names, learner.lrs))
    _, weight_grads, lr_grads = reference.meta_gradient(
        spec["arch"],
        learner.algo,
        spec["kind"],
        dict(learner.net.named_parameters()),
        lrs,
        *make_batch(problem).tensors(),
        step_weights=step_weights,
    )
    out = dict(weight_grads)
    out.update({f"lr:{name}": g for name, g in lr_grads.items()})
    return out


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
            name for name, _ in learner.net.named_parameters()
        ), problem
        # ... and computes the same function (so the name mapping is the right one).
        x = make_batch(problem).support_x[0]
        weights = learner.weights()
        torch.testing.assert_close(
            reference.forward(spec["arch"], weights, x),
            learner.functional_forward(weights, x),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize(("problem", "case", "strategy"), SUPPORTED)
def test_meta_gradient_matches_reference(problem, case, strategy):
    assert_close(
        engine_gradients(problem, case, strategy),
        reference_gradients(problem, case),
        f"{problem}/{case}/{strategy} vs reference",
    )


@pytest.mark.parametrize(("problem", "case", "strategy"), [(p, c, s) for p, c, s in SUPPORTED if s != "loop"])
def test_vectorised_strategies_agree_with_the_loop(problem, case, strategy):
    assert_close(
        engine_gradients(problem, case, strategy),
        engine_gradients(problem, case, "loop"),
        f"{problem}/{case} {strategy} vs loop",
    )


@pytest.mark.parametrize("query_norm", ["transductive", "support"])
@pytest.mark.parametrize("strategy", ["vmap", "batched"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_evaluation_outcomes_agree_across_strategies(problem, strategy, query_norm):
    learner = make_learner(problem, "metasgd")
    batch = make_batch(problem)
    want = learner.outcome(batch, 3, "loop", query_norm=query_norm)
    got = learner.outcome(batch, 3, strategy, query_norm=query_norm)
    for field in ("loss_before", "loss_after", "accuracy_before", "accuracy_after"):
        if getattr(want, field) is not None:
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "batched"])
def test_a_prediction_tied_between_classes_scores_one_over_their_number(strategy):
    """A shared head ties every class before adaptation: accuracy is exactly chance, whichever
    class sits first and however the strategy rounds (argmax scored one class by position)."""
    learner, batch = make_learner("conv_shared_head", "metasgd"), make_batch("conv_shared_head")
    ways = PROBLEMS["conv_shared_head"]["output_size"]
    before = learner.outcome(batch, 3, strategy).accuracy_before
    assert before.tolist() == pytest.approx([1 / ways] * len(before), abs=1e-7)



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
        dict(learner.net.named_parameters()),
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
    assert learner.learned_rate_names == learner.adapted_names and len(learner.lrs) > 0
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
            # Every step's rate matters (a rate only used at the final step would also be non-zero),
            # except the body's first step behind a zero head: there the support loss does not
            # depend on the body yet, so that step moves nothing.
            # Likewise the head bias's first step behind a zero or shared head: every class
            # starts with the same logit, so on a balanced support set its gradient is 0.
            unmoved_first_step = (learner.arch.head == "zero" and not name.startswith("head.")) or (
                learner.arch.head != "fixed" and name == "head.bias"
            )
            if unmoved_first_step:
                assert g[0].abs().item() <= ZERO_TOL and (g[1:].abs() > 0).all(), (name, g)
                continue
            assert (g.abs() > 0).all(), f"lr:{name}: some step got no gradient: {g}"


@pytest.mark.parametrize("strategy", ["vmap", "batched"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_task_chunks_give_the_same_meta_gradient(problem, strategy):
    """Back-propagating a few tasks at a time (to bound memory) changes nothing."""
    learner = make_learner(problem, "maml-3step")
    learner.zero_grad(set_to_none=True)
    loss = learner.accumulate_meta_gradient(make_batch(problem), strategy, task_chunk=2)
    got = {name: p.grad.detach().clone() for name, p in learner.net.named_parameters()}
    want = reference_gradients(problem, "maml-3step")
    assert_close(got, {name: want[name] for name in got}, f"{problem}/{strategy} in chunks of 2")
    learner.zero_grad(set_to_none=True)
    assert loss.item() == pytest.approx(learner.accumulate_meta_gradient(make_batch(problem), "loop").item())


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_second_order_steps_spans_first_to_full_second_order(problem):
    """``second_order_steps`` = all steps is plain MAML; 0 is first-order MAML; in between
    differs from both (so the partial case checked against the reference is a third thing)."""
    def grads(**algo):
        learner = make_learner(problem, "maml-1step")  # the same weights for every variant
        learner.algo = AlgoConfig(inner_lr=PROBLEMS[problem]["inner_lr"], **algo)
        learner.zero_grad(set_to_none=True)
        learner.accumulate_meta_gradient(make_batch(problem), "batched")
        return {n: p.grad.clone() for n, p in learner.net.named_parameters()}

    full = grads(inner_steps=3)
    assert_close(grads(inner_steps=3, second_order_steps=3), full, "3 of 3")
    assert_close(grads(inner_steps=3, second_order_steps=9), full, "9 of 3")
    first = grads(inner_steps=3, first_order=True)
    assert_close(grads(inner_steps=3, second_order_steps=0), first, "0 of 3")
    partial = grads(inner_steps=3, second_order_steps=1)
    assert max(relative_errors(partial, full).values()) > 1e-3
    assert max(relative_errors(partial, first).values()) > 1e-3


def test_support_query_norm_is_a_different_meta_objective_only_with_norms():
    """``query_norm = "support"`` changes the conv net's meta-gradient by far more than the
    tolerance (so the cases above check something), and nothing for the MLP (no norms)."""
    def reference_for(problem, **algo):
        learner = make_learner(problem, "maml-support_norm")
        spec = PROBLEMS[problem]
        _, grads, _ = reference.meta_gradient(
            spec["arch"], AlgoConfig(inner_lr=spec["inner_lr"], inner_steps=2, **algo), spec["kind"],
            dict(learner.net.named_parameters()), None, *make_batch(problem).tensors(),
        )
        return grads

    for problem, changed in (("conv", True), ("mlp", False)):
        support, transductive = reference_for(problem, query_norm="support"), reference_for(problem)
        difference = max(relative_errors(support, transductive).values())
        assert (difference > 1e-2) if changed else (difference < 1e-12), (problem, difference)


def test_checkpoint_inner_is_refused_under_vmap():
    learner = make_learner("mlp", "maml-checkpoint")
    with pytest.raises(ConfigError, match="checkpoint_inner"):
        learner.accumulate_meta_gradient(make_batch("mlp"), "vmap")


def test_auto_strategy_avoids_vmap_with_checkpoint_inner():
    from maml_tune.core.strategies import choose

    algo = AlgoConfig(checkpoint_inner=True)
    cuda = torch.device("cuda")  # only inspected, never allocated on
    assert choose(PROBLEMS["conv"]["arch"], cuda).strategy.name == "vmap"
    chosen = choose(PROBLEMS["conv"]["arch"], cuda, algo)
    assert chosen.strategy.name == "batched" and "checkpoint_inner" in chosen.reason
    with pytest.raises(ConfigError, match="batched, loop or auto, not vmap"):
        choose(PROBLEMS["mlp"]["arch"], torch.device("cpu"), algo, "vmap")


def test_auto_on_cpu_is_batched_with_one_conv_task_per_pass():
    from maml_tune.core.strategies import choose

    cpu = torch.device("cpu")
    conv, mlp = PROBLEMS["conv"]["arch"], PROBLEMS["mlp"]["arch"]
    assert (choose(mlp, cpu).strategy.name, choose(mlp, cpu).task_chunk) == ("batched", 0)
    assert (choose(conv, cpu).strategy.name, choose(conv, cpu).task_chunk) == ("batched", 1)
    assert choose(conv, cpu, task_chunk=8).task_chunk == 8
    assert choose(conv, cpu, requested="batched").task_chunk == 0
    assert "requested" in choose(conv, cpu, requested="loop").reason


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_checkpointed_inner_steps_do_not_change_evaluation(strategy):
    """Evaluation runs without recording, where checkpointing is skipped: same outcomes."""
    plain, checkpointed = make_learner("conv", "maml-3step"), make_learner("conv", "maml-checkpoint")
    batch = make_batch("conv")
    a, b = plain.outcome(batch, 3, strategy), checkpointed.outcome(batch, 3, strategy)
    torch.testing.assert_close(a.loss_after, b.loss_after, rtol=0, atol=0)


@pytest.mark.parametrize(
    "arch",
    [
        ArchConfig(kind="conv", blocks=3, channels=9, activation="relu"),
        ArchConfig(kind="conv", blocks=2, channels=9, activation="leaky_relu"),
    ],
    ids=["relu", "leaky-relu"],
)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("n_tasks", [1, 2], ids=["one-task", "two-tasks"])
@pytest.mark.parametrize("stat_rows", [None, 4], ids=["own-statistics", "first-rows-statistics"])
def test_fused_blocks_have_the_modules_first_and_second_derivatives(arch, in_channels, n_tasks, stat_rows):
    """The batched forward's fused conv → norm → pool blocks (the first layer's own route with
    one task per pass, the general one otherwise) compute the module's function and its first
    and second derivatives: odd sizes (partial pooling windows), norm scales of both signs,
    statistics of the whole batch or of its first rows (``support`` query normalisation)."""
    torch.manual_seed(0)
    shape = (in_channels, 11, 11)
    net = build_network(arch, shape, 4).double()
    cases.sign_norm_scales(net, torch.Generator().manual_seed(1))
    names = [name for name, _ in net.named_parameters()]
    x = torch.randn(n_tasks, 6, *shape, dtype=torch.float64)
    r = torch.randn(n_tasks, 6, 4, dtype=torch.float64)
    forward = make_batched_forward(net)

    def first_and_second(run):
        params = {name: p.detach().clone().requires_grad_() for name, p in net.named_parameters()}
        # First derivatives twice: a plain backward pass and a create_graph one take different routes.
        plain_grads = torch.autograd.grad((run(params) * r).sum(), list(params.values()))
        loss = (run(params) * r).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        curvature = torch.autograd.grad(
            sum((g * g).sum() for g in grads), list(params.values()), materialize_grads=True
        )
        return list(plain_grads), [g.detach() for g in grads], list(curvature)

    with torch.no_grad():
        torch.testing.assert_close(
            forward(stack_params(dict(net.named_parameters()), n_tasks), x, stat_rows),
            torch.stack([net(task, stat_rows) for task in x]), rtol=1e-12, atol=1e-12,
        )
    batched = first_and_second(lambda params: forward(stack_params(params, n_tasks), x, stat_rows))
    plain = first_and_second(
        lambda params: torch.stack(
            [torch.func.functional_call(net, params, (task,), {"stat_rows": stat_rows}) for task in x]
        )
    )
    for got, want in zip(batched, plain, strict=True):
        for name, g, w in zip(names, got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("case", ["maml-3step", "metasgd", "anil", "maml-support_norm"])
def test_a_shared_head_is_the_zero_head_under_cross_entropy(case):
    """Softmax is blind to a logit added to every class, so a classifier's shared row changes
    nothing: the same meta-loss and body meta-gradient as the zero head, none for the row."""
    shared, zero = make_learner("conv_shared_head", case), make_learner("conv_zero_head", case)
    batch = make_batch("conv_shared_head")
    losses = [cases.accumulate(learner, batch, "batched") for learner in (shared, zero)]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-12)
    assert max(p.grad.abs().max().item() for p in shared.net.head.parameters()) <= ZERO_TOL
    for (name, a), (_, b) in zip(shared.net.body.named_parameters(), zero.net.body.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("problem", ["conv_zero_head", "conv"])
def test_a_zero_head_makes_adaptation_blind_to_the_order_of_the_classes(problem):
    """Relabelling a task's classes leaves a zero-head learner's query loss unchanged; a
    fixed head's meta-learned rows are tied to label positions, so its loss changes."""
    learner, batch = make_learner(problem, "maml-3step"), make_batch(problem)
    order = torch.tensor([2, 0, 1])
    relabelled = type(batch)(batch.support_x, order[batch.support_y], batch.query_x, order[batch.query_y])
    before, after = (learner.outcome(b, 3, "batched").loss_after for b in (batch, relabelled))
    if learner.arch.head == "zero":
        torch.testing.assert_close(before, after, rtol=1e-10, atol=1e-12)
    else:
        assert (before - after).abs().max().item() > 1e-3
