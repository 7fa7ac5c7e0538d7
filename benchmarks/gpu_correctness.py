"""Meta-gradient correctness on a GPU, and the accuracy of bf16/fp16 autocast there.

1. Every case of ``tests/core/cases.py`` (MLP and conv; MAML 1/3 steps, first order,
   ANIL, Meta-SGD, LSLR, multi-step loss, ``second_order_steps``, ``checkpoint_inner``)
   under every strategy that supports it, in float64 on the GPU, against the independent
   float64 reference of ``tests/core/reference.py`` computed on the CPU. Pass: per tensor
   ``max|g - g_ref| / max|g_ref|`` ≤ 1e-6 (structurally-zero tensors: ``max|g|`` ≤ 1e-12),
   as in the CPU tests.
2. Float32 fidelity: every case of the Omniglot-sized conv problem of
   ``tests/core/test_float32_fidelity.py`` (synthetic strokes), float32 on the GPU against
   the float64 CPU reference, with TF32 convolutions on (PyTorch's default) and off. Pass
   (TF32 off, as on the CPU): relative L2 ≤ 1e-4 and each strategy within 3× the loop's
   error; TF32 rows are reported only.
3. Mixed precision: the float32-master meta-gradient under bf16 and fp16 autocast against
   fp32 on the GPU (relative L2 error and cosine similarity) for the sinusoid MLP and an
   Omniglot-shaped conv4 (5-way 1-shot, 8 tasks), per strategy; fp32 itself is compared
   with float64 to show the TF32 baseline error (PyTorch runs fp32 convs in TF32).

Needs only python3 and torch (no pytest, typer, optuna). Run from the repository root:

    python3 benchmarks/gpu_correctness.py --device cuda --json $OUT/correctness.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _cases import cases  # first: puts this checkout first on sys.path

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import TaskBatch

reference = cases.load("reference")


def engine_gradients(problem: str, case: str, strategy: str, device: torch.device) -> dict:
    learner = cases.make_learner(problem, case, device=device)
    _, step_weights = cases.CASES[case]
    learner.zero_grad(set_to_none=True)
    cases.accumulate(learner, cases.make_batch(problem, device=device), strategy, step_weights)
    out = {name: (torch.zeros_like(p) if p.grad is None else p.grad).detach().cpu()
           for name, p in learner.net.named_parameters()}
    for name, lr in zip(learner.learned_rate_names, learner.lrs):
        out[f"lr:{name}"] = None if lr.grad is None else lr.grad.detach().cpu()
    return out


def reference_gradients(problem: str, case: str) -> dict:
    learner = cases.make_learner(problem, case)
    spec = cases.PROBLEMS[problem]
    _, step_weights = cases.CASES[case]
    _, weight_grads, lr_grads = reference.meta_gradient(
        spec["arch"], learner.algo, spec["kind"], dict(learner.net.named_parameters()),
        dict(zip(learner.learned_rate_names, learner.lrs)), *cases.make_batch(problem).tensors(),
        step_weights=step_weights,
    )
    return {**weight_grads, **{f"lr:{name}": g for name, g in lr_grads.items()}}


def check_float64(device: torch.device) -> tuple[list[dict], bool]:
    rows, ok = [], True
    for problem in cases.PROBLEMS:
        for case in cases.CASES:
            want = reference_gradients(problem, case)
            for strategy in cases.STRATEGIES:
                if not cases.supports(case, strategy, problem):
                    continue
                errors = cases.relative_errors(engine_gradients(problem, case, strategy, device), want)
                worst = 0.0
                passed = True
                for name, err in errors.items():
                    zero = want[name].abs().max().item() <= cases.ZERO_TOL
                    passed &= err <= (cases.ZERO_TOL if zero else cases.REL_TOL)
                    if not zero:
                        worst = max(worst, err)
                ok &= passed
                rows.append({"problem": problem, "case": case, "strategy": strategy,
                             "max_rel_error": worst, "passed": bool(passed)})
                print(f"float64 {problem:4} {case:40} {strategy:8} max rel err {worst:9.2e}  "
                      f"{'ok' if passed else 'FAIL'}", flush=True)
    return rows, ok


def check_float32(device: torch.device) -> tuple[list[dict], bool]:
    rows, ok = [], True
    for case, (_, step_weights) in cases.CASES.items():
        for seed in range(4):  # the first seed whose float64 meta-gradient is smooth
            learner = cases.make_learner("conv28", case, seed=seed).float()
            batch = cases.float32_batch(cases.make_batch("conv28", seed, images="strokes"))
            want = cases.reference_vector(learner, batch, step_weights)
            if cases.kink(learner, batch, step_weights, want) <= 1e-8:
                break
        learner, batch = learner.to(device), batch.to(device)
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            errors = {
                strategy: ((cases.engine_vector(learner, batch, strategy, step_weights) - want).norm()
                           / want.norm()).item()
                for strategy in cases.STRATEGIES if cases.supports(case, strategy)
            }
            passed = all(e <= 1e-4 and e <= 3 * errors["loop"] for e in errors.values())
            if not tf32:
                ok &= passed
            rows.append({"case": case, "seed": seed, "tf32": tf32, "rel_l2_error": errors, "passed": passed})
            print(f"float32 conv28 {case:40} tf32 {'on ' if tf32 else 'off'} "
                  + " ".join(f"{s}={e:.1e}" for s, e in errors.items())
                  + ("" if tf32 else f"  {'ok' if passed else 'FAIL'}"), flush=True)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
    return rows, ok


def mixed_problem(kind: str, device: torch.device):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    if kind == "sinusoid":
        learner = MetaLearner(ArchConfig(), AlgoConfig(inner_lr=0.01), (1,), 1, "regression")
        sx, qx = (torch.rand(25, 10, 1, generator=g) * 10 - 5 for _ in range(2))
        amp = torch.rand(25, 1, 1, generator=g) * 4.9 + 0.1
        batch = TaskBatch(sx, amp * torch.sin(sx), qx, amp * torch.sin(qx))
    else:  # Omniglot-shaped conv4, 5-way 1-shot, 15 queries per class, 8 tasks
        learner = MetaLearner(ArchConfig(kind="conv"), AlgoConfig(inner_lr=0.4), (1, 28, 28), 5,
                              "classification")
        sy, qy = torch.arange(5).expand(8, -1).clone(), torch.arange(5).repeat(15).expand(8, -1).clone()
        batch = TaskBatch(torch.rand(8, 5, 1, 28, 28, generator=g), sy,
                          torch.rand(8, 75, 1, 28, 28, generator=g), qy)
    return learner.to(device), batch.to(device)


def flat_gradient(learner, batch, strategy, precision) -> torch.Tensor:
    learner.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(batch, strategy, precision=precision)
    return torch.cat([p.grad.flatten().double().cpu() for p in learner.parameters()])


def check_mixed(device: torch.device) -> list[dict]:
    rows = []
    for kind, strategies in (("sinusoid", ("vmap", "batched")), ("conv4-5way", ("loop", "batched", "vmap"))):
        learner, batch = mixed_problem(kind, device)
        for strategy in strategies:
            fp32 = flat_gradient(learner, batch, strategy, "fp32")
            learner64 = learner.double()
            batch64 = TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch.tensors()))
            exact = flat_gradient(learner64, batch64, strategy, "fp32")
            learner.float()
            for precision in ("fp32", "bf16", "fp16"):
                got = fp32 if precision == "fp32" else flat_gradient(learner, batch, strategy, precision)
                want = exact if precision == "fp32" else fp32
                rel = ((got - want).norm() / want.norm()).item()
                cos = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
                against = "float64" if precision == "fp32" else "fp32"
                rows.append({"problem": kind, "strategy": strategy, "precision": precision,
                             "against": against, "rel_l2_error": rel, "cosine": cos})
                print(f"mixed   {kind:10} {strategy:8} {precision} vs {against:7}: rel L2 err {rel:.3e}, "
                      f"cosine {cos:.6f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    rows64, ok = check_float64(device)
    rows32, ok32 = check_float32(device)
    mixed = check_mixed(device)
    result = {
        "device": str(device), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "float64_all_passed": ok, "float64": rows64,
        "float32_all_passed": ok32, "float32": rows32, "mixed_precision": mixed,
        "seconds": time.perf_counter() - started,
    }
    print(f"float64 meta-gradients on {device}: {'all passed' if ok else 'FAILURES'} "
          f"({len(rows64)} checks, {result['seconds']:.0f} s)", flush=True)
    print(f"float32 fidelity on {device} (TF32 off): {'all passed' if ok32 else 'FAILURES'} "
          f"({len(rows32) // 2} cases)", flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    sys.exit(0 if ok and ok32 else 1)


if __name__ == "__main__":
    main()
