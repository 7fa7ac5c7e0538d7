"""The problems and algorithm cases of the float64 meta-gradient tests, shared with
``benchmarks/gpu_correctness.py`` (which runs them on CUDA without pytest).

Nothing here imports pytest; ``load(name)`` loads a sibling module of this folder by path
(the tests folder is no package).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.nets import BatchStatNorm
from maml_tune.core.tasks import TaskBatch


def load(name: str):
    """The module ``tests/core/<name>.py``, loaded once by path."""
    key = f"maml_tune_tests_core_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


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
    # 9 channels: the first block takes its patch route (core/batched.py) one task per pass.
    "conv": {
        "arch": ArchConfig(kind="conv", blocks=2, channels=9),
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
    # Memory controls: second order through the last N steps only; checkpointed steps.
    "maml-second_order_steps": (
        {"algorithm": "maml", "inner_steps": 4, "second_order_steps": 2},
        None,
    ),
    "lslr-second_order_steps-msl": (
        {"algorithm": "lslr", "inner_steps": 3, "second_order_steps": 1},
        (0.2, 0.3, 0.5),
    ),
    "maml-checkpoint": (
        {"algorithm": "maml", "inner_steps": 3, "checkpoint_inner": True},
        None,
    ),
    "anil-checkpoint": (
        {"algorithm": "anil", "inner_steps": 2, "checkpoint_inner": True},
        None,
    ),
    "lslr-checkpoint-msl": (
        {"algorithm": "lslr", "inner_steps": 3, "checkpoint_inner": True},
        (0.25, 0.25, 0.5),
    ),
    "metasgd-checkpoint-second_order_steps": (
        {"algorithm": "metasgd", "inner_steps": 3, "checkpoint_inner": True,
         "second_order_steps": 2},
        None,
    ),
}

# "batched/c1": one task per pass, as the engine runs conv nets on CPU (its own code path).
STRATEGIES = ("vmap", "loop", "batched", "batched/c1")


def accumulate(learner: MetaLearner, batch: TaskBatch, strategy: str, step_weights=None) -> torch.Tensor:
    """``learner.accumulate_meta_gradient`` under a strategy spelled as in :data:`STRATEGIES`."""
    name, _, chunk = strategy.partition("/c")
    return learner.accumulate_meta_gradient(batch, name, step_weights, task_chunk=int(chunk or 0))


def supports(case: str, strategy: str) -> bool:
    """``checkpoint_inner`` is refused under ``vmap`` (a ConfigError, tested separately)."""
    return not (strategy == "vmap" and CASES[case][0].get("checkpoint_inner", False))


def make_batch(problem: str, seed: int = 1, device: str | torch.device = "cpu") -> TaskBatch:
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
        ).to(device)
    ways = spec["output_size"]

    def images(per_class):
        return torch.randn(
            t, ways * per_class, *spec["input_shape"], generator=g, dtype=torch.float64
        )

    def labels(per_class):
        return torch.arange(ways).repeat(per_class).expand(t, -1).clone()

    return TaskBatch(images(s), labels(s), images(q), labels(q)).to(device)


def make_learner(
    problem: str, case: str, seed: int = 0, device: str | torch.device = "cpu"
) -> MetaLearner:
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
    sign_norm_scales(learner.net, g)
    return learner.to(device)


def sign_norm_scales(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Norm scales of both signs and non-zero shifts instead of the initial ones and zeros:
    the engine treats a channel with a negative scale differently (core/batched.py)."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BatchStatNorm):
                weight, bias = module.weight, module.bias
                weight.copy_(torch.rand(weight.shape, generator=generator, dtype=weight.dtype) * 3 - 1.5)
                bias.copy_(torch.randn(bias.shape, generator=generator, dtype=bias.dtype))


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


