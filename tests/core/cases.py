"""The problems and algorithm cases of the meta-gradient tests (float64 exactness and
float32 fidelity), shared with ``benchmarks/gpu_correctness.py`` (which runs them on CUDA
without pytest).

Nothing here imports pytest; ``load(name)`` loads a sibling module of this folder by path
(the tests folder is no package). Real Omniglot drawings need Pillow and
``maml_tune.families``, imported only when they are asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import sys
import zipfile
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

# 2 × (conv → batch-stat norm → relu → pool) on 1×8×8; 3-way, 2 shots, 2 queries/class.
# 9 channels: the first block takes its patch route (core/batched.py) one task per pass.
_CONV = {
    "arch": ArchConfig(kind="conv", blocks=2, channels=9),
    "input_shape": (1, 8, 8),
    "output_size": 3,
    "kind": "classification",
    "tasks": 3,
    "support": 2,
    "query": 2,
    "inner_lr": 0.2,
}

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
    "conv": _CONV,
    # The same on 1×9×9 with Finn et al.'s VALID pooling: 9 → 4 → 2, each pool dropping
    # the overhanging row and column (the SAME pooling above would give 9 → 5 → 3).
    "conv_valid": {
        "arch": ArchConfig(kind="conv", blocks=2, channels=9, downsample="pool_valid"),
        "input_shape": (1, 9, 9),
        "output_size": 3,
        "kind": "classification",
        "tasks": 3,
        "support": 2,
        "query": 2,
        "inner_lr": 0.2,
    },
    # ResNet-12 at widths 2-5-10-20 on 3x10x10 (10 -> 5 -> 3 -> 2 -> 1, partial pooling
    # windows), the residual sums and global average pooling; 3-way as above.
    "resnet12": {
        **_CONV, "arch": ArchConfig(kind="resnet12", channels=2), "input_shape": (3, 10, 10), "inner_lr": 0.1,
    },
    # The conv problem with heads that serve any N: reset to zero, and one shared row.
    "conv_zero_head": {**_CONV, "arch": dataclasses.replace(_CONV["arch"], head="zero")},
    "conv_shared_head": {**_CONV, "arch": dataclasses.replace(_CONV["arch"], head="shared")},
}

# Float32 fidelity (tests/core/test_float32_fidelity.py): the engine in float32 on realistic
# inputs against the float64 reference. Inner rates are small enough that the meta-gradient
# is smooth at float32's resolution; with large ones a ReLU or max-pool decision that flips
# between float32 and float64 moves the float64 gradient itself by 1e-3 (see that test).
FLOAT32_PROBLEMS = {
    "sinusoid": {**PROBLEMS["mlp"], "images": None},
    # 3 × (conv → norm → relu → pool) on Omniglot-sized 1×28×28 strokes (28 → 14 → 7 → 4:
    # the last pooling windows are partial); 16 channels, so the first block takes its
    # patch route one task per pass; 3-way 1-shot, 5 queries per class, 2 tasks.
    "conv28": {
        "arch": ArchConfig(kind="conv", blocks=3, channels=16),
        "input_shape": (1, 28, 28),
        "output_size": 3,
        "kind": "classification",
        "tasks": 2,
        "support": 1,
        "query": 5,
        "inner_lr": 0.03,
        "images": ("strokes", "omniglot"),
    },
    # The same with VALID pooling (28 → 14 → 7 → 3: the last pool drops the overhanging row
    # and column), the fused blocks' other pooling geometry.
    "conv28_valid": {
        "arch": ArchConfig(kind="conv", blocks=3, channels=16, downsample="pool_valid"),
        "input_shape": (1, 28, 28),
        "output_size": 3,
        "kind": "classification",
        "tasks": 2,
        "support": 1,
        "query": 5,
        "inner_lr": 0.03,
        "images": ("strokes",),
    },
    # ResNet-12 (widths 3-8-15-30) on the same strokes, 5-shot: residual sums, strided
    # shortcuts and global average pooling through the batched strategy's channels-last path
    # (28 -> 14 -> 7 -> 4 -> 2). A smooth activation and strided stages, so the function has
    # no switching points (with ReLUs and max-pools some of its ~40k decisions always lay
    # within float32's rounding: no seed was smooth). Twelve norms on 2x2 to 14x14 maps make
    # even the loop's float32 meta-gradient err by 2e-6 to 6e-4 (measured 2026-12-04), so
    # the absolute bound is 1e-3. The channels-last path's error over the 21 cases is a median
    # 1.5x and at most 3.0x the loop's (vmap: 1.0x, 1.5x), so its bound is 4x the loop's.
    "resnet12_28": {
        "arch": ArchConfig(kind="resnet12", channels=3, activation="gelu", downsample="stride"),
        "input_shape": (1, 28, 28),
        "output_size": 3,
        "kind": "classification",
        "tasks": 2,
        "support": 5,
        "query": 5,
        "inner_lr": 0.03,
        "images": ("strokes",),
        "rel_l2": 1e-3,
        "loop_factor": 4.0,
        "smooth": True,
    },
}
_ALL_PROBLEMS = {**PROBLEMS, **FLOAT32_PROBLEMS}

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
    "boil": ({"algorithm": "boil", "inner_steps": 2}, None),
    "boil-support_norm": ({"algorithm": "boil", "inner_steps": 2, "query_norm": "support"}, None),
    "reptile": ({"algorithm": "reptile", "inner_steps": 3}, None),
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
    # Query normalised with the adapted support set's statistics (non-transductive).
    "maml-support_norm": ({"algorithm": "maml", "inner_steps": 2, "query_norm": "support"}, None),
    "lslr-support_norm-msl": (
        {"algorithm": "lslr", "inner_steps": 3, "query_norm": "support"},
        (0.2, 0.3, 0.5),
    ),
    "fomaml-support_norm": ({"algorithm": "fomaml", "inner_steps": 2, "query_norm": "support"}, None),
}

# "batched/c1": one task per pass, as the engine runs conv nets on CPU (its own code path).
STRATEGIES = ("vmap", "loop", "batched", "batched/c1")


def accumulate(learner: MetaLearner, batch: TaskBatch, strategy: str, step_weights=None) -> torch.Tensor:
    """``learner.accumulate_meta_gradient`` under a strategy spelled as in :data:`STRATEGIES`."""
    name, _, chunk = strategy.partition("/c")
    return learner.accumulate_meta_gradient(batch, name, step_weights, task_chunk=int(chunk or 0))


def supports(case: str, strategy: str, problem: str | None = None) -> bool:
    """``checkpoint_inner`` is refused under ``vmap``, and a zero head under an algorithm that
    does not adapt the head (BOIL), each with a ConfigError tested separately."""
    overrides = CASES[case][0]
    if strategy == "vmap" and overrides.get("checkpoint_inner", False):
        return False
    head = _ALL_PROBLEMS[problem]["arch"].head if problem else "fixed"
    return not (head == "zero" and overrides["algorithm"] == "boil")


def make_batch(
    problem: str, seed: int = 1, device: str | torch.device = "cpu", images: str = "gaussian"
) -> TaskBatch:
    """A float64 batch of ``problem``'s tasks; classification inputs are ``images``:
    ``gaussian`` noise, ``strokes`` (:func:`stroke_images`) or real ``omniglot`` drawings
    (:func:`omniglot_images`)."""
    spec = _ALL_PROBLEMS[problem]
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
    shape = spec["input_shape"]
    if images == "gaussian":
        x = torch.randn(t, ways * (s + q), *shape, generator=g, dtype=torch.float64)
    elif images == "strokes":
        x = stroke_images(t * ways * (s + q), shape[-1], seed).view(t, -1, *shape)
    elif images == "omniglot":
        x = omniglot_images(t * ways * (s + q), shape[-1], seed).view(t, -1, *shape)
    else:
        raise ValueError(f"unknown images {images!r}")

    def labels(per_class):
        return torch.arange(ways).repeat(per_class).expand(t, -1).clone()

    support, query = x[:, : ways * s], x[:, ways * s :]
    return TaskBatch(support, labels(s), query, labels(q)).to(device)


def stroke_images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """``(n, 1, size, size)`` float64 drawings like Omniglot's at ``size`` pixels: 2–4 strokes
    of two anti-aliased line segments each, ink 1 on a blank (exactly 0) page, about three
    quarters of the pixels blank. Pure torch, so it runs wherever the tests do."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    pixels = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # (P, 2)
    strokes = torch.randint(2, 5, (n,), generator=g)
    corners = 0.15 + 0.7 * torch.rand(n, 4, 3, 2, generator=g, dtype=torch.float64)
    start, end = corners[:, :, :-1].reshape(n, 8, 1, 2), corners[:, :, 1:].reshape(n, 8, 1, 2)
    along = end - start
    t = (((pixels - start) * along).sum(-1) / along.square().sum(-1)).clamp(0, 1)
    distance = (pixels - (start + t.unsqueeze(-1) * along)).norm(dim=-1)  # (n, 8, P)
    unused = torch.arange(8).view(1, 8) >= 2 * strokes.view(n, 1)
    nearest = distance.masked_fill(unused.unsqueeze(-1), float("inf")).amin(dim=1)
    ink = (1.9 - nearest * size).clamp(0, 1)  # a stroke about 2 pixels wide, soft edges
    return ink.view(n, 1, size, size)


OMNIGLOT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
OMNIGLOT_ARCHIVE = OMNIGLOT_DIR / "images_background_small1.zip"


def omniglot_images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """``(n, 1, size, size)`` float64: ``n`` real drawings picked by ``seed`` from the shared
    Omniglot small set, through the Omniglot family's own transform (strokes 1, page 0)."""
    from PIL import Image

    from maml_tune.families.omniglot import preprocess_images

    with zipfile.ZipFile(OMNIGLOT_ARCHIVE) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".png"))
        picked = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))[:n]
        drawings = [Image.open(io.BytesIO(archive.read(names[i]))) for i in picked.tolist()]
        return preprocess_images(drawings, size).double()


def make_learner(
    problem: str, case: str, seed: int = 0, device: str | torch.device = "cpu"
) -> MetaLearner:
    spec = _ALL_PROBLEMS[problem]
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
    the engine treats a channel with a negative scale differently (core/batched.py). Every
    third channel is negative; magnitudes are U[0.5, 1.5], away from the flat scale 0."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BatchStatNorm):
                weight, bias = module.weight, module.bias
                sign = torch.where(torch.arange(weight.numel()) % 3 == 0, -1.0, 1.0).to(weight.dtype)
                weight.copy_(sign * (0.5 + torch.rand(weight.shape, generator=generator, dtype=weight.dtype)))
                bias.copy_(0.5 * torch.randn(bias.shape, generator=generator, dtype=bias.dtype))


def float32_batch(batch: TaskBatch) -> TaskBatch:
    """``batch`` with its float tensors rounded to float32."""
    return TaskBatch(*(t.float() if t.is_floating_point() else t for t in batch.tensors()))


def engine_vector(learner: MetaLearner, batch: TaskBatch, strategy: str, step_weights=None) -> torch.Tensor:
    """The engine's meta-gradient (net weights, then learned rates) as one float64 vector."""
    learner.zero_grad(set_to_none=True)
    accumulate(learner, batch, strategy, step_weights)
    parts = [torch.zeros_like(p) if p.grad is None else p.grad for p in learner.net.parameters()]
    parts += [lr.grad for lr in learner.lrs]
    return torch.cat([p.flatten().double().cpu() for p in parts])


def reference_vector(
    learner: MetaLearner, batch: TaskBatch, step_weights=None, weights: dict | None = None
) -> torch.Tensor:
    """``reference.meta_gradient`` in float64 at ``learner``'s weights (or ``weights``) and
    rates on ``batch`` (on the CPU), laid out as :func:`engine_vector`."""
    names = [name for name, _ in learner.net.named_parameters()]
    if weights is None:
        weights = {name: p.detach().double().cpu() for name, p in learner.net.named_parameters()}
    lrs = {name: lr.detach().double().cpu() for name, lr in zip(learner.learned_rate_names, learner.lrs)}
    tensors = [t.double().cpu() if t.is_floating_point() else t.cpu() for t in batch.tensors()]
    _, weight_grads, lr_grads = load("reference").meta_gradient(
        learner.arch, learner.algo, learner.kind, weights, lrs, *tensors, step_weights=step_weights
    )
    parts = [weight_grads[name] for name in names]
    parts += [lr_grads[name] for name in learner.learned_rate_names]
    return torch.cat([p.flatten() for p in parts])


KINK_STEP = 1e-6
"""Relative move of the weights in :func:`kink`: ten times float32's rounding."""


def kink(
    learner: MetaLearner, batch: TaskBatch, step_weights, want: torch.Tensor, directions: int = 2
) -> float:
    """The largest ``‖g(θ+δ) + g(θ−δ) − 2·g(θ)‖ / ‖g(θ)‖`` of the float64 meta-gradient ``g``
    (``want = g(θ)``) over ``directions`` random relative moves ``δ`` of the weights of size
    :data:`KINK_STEP`: about 0 where ``g`` is smooth, the size of the jump where a ReLU or
    max-pool decision switches within reach (then float32 and float64 may take different sides)."""
    weights = {name: p.detach().double().cpu() for name, p in learner.net.named_parameters()}
    worst = 0.0
    for direction in range(directions):
        g = torch.Generator().manual_seed(7 + direction)
        move = {n: KINK_STEP * w * torch.randn(w.shape, generator=g, dtype=w.dtype)
                for n, w in weights.items()}
        plus, minus = (
            reference_vector(learner, batch, step_weights, {n: w + s * move[n] for n, w in weights.items()})
            for s in (1, -1)
        )
        worst = max(worst, ((plus + minus - 2 * want).norm() / want.norm()).item())
    return worst


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


