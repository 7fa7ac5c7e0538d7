"""Float32 accuracy of the meta-gradient on an Omniglot-sized conv4, per execution strategy.

Finn et al.'s conv4 (64 channels) on 5-way 1-shot tasks with 15 queries per class, 4 tasks
per batch, at a fresh initialisation (what meta-training starts from; inner lr 0.4): each
strategy's float32 meta-gradient against the independent float64 reference of
``tests/core/reference.py`` on the same (float32-rounded) weights and drawings. For every
seed the table also gives the reference's kink (``tests/core/cases.py``): where it is
large, a ReLU or max-pool decision lies within rounding of its switching point, and any
float32 run may differ from float64 by that jump.

    python benchmarks/float32_fidelity.py                         # synthetic strokes
    python benchmarks/float32_fidelity.py --images omniglot       # the shared small set
    python benchmarks/float32_fidelity.py --device cuda --strategies vmap,batched,loop

Needs only python3 and torch (and Pillow for ``--images omniglot``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _cases import cases  # first: puts this checkout first on sys.path

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import TaskBatch

WAYS, QUERIES = 5, 15


def batch_for(seed: int, tasks: int, images: str) -> TaskBatch:
    per_task = WAYS * (1 + QUERIES)
    draw = cases.stroke_images if images == "strokes" else cases.omniglot_images
    x = draw(tasks * per_task, 28, seed).float().view(tasks, per_task, 1, 28, 28)
    labels = torch.arange(WAYS)
    return TaskBatch(x[:, :WAYS], labels.expand(tasks, -1).clone(), x[:, WAYS:],
                     labels.repeat(QUERIES).expand(tasks, -1).clone())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", choices=("strokes", "omniglot"), default="strokes")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", default="1,3", help="inner steps to measure, comma-separated")
    parser.add_argument("--strategies", default="loop,batched/c1,batched", help="as in tests/core/cases.py")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    device = torch.device(args.device)
    strategies = args.strategies.split(",")
    rows = []
    started = time.perf_counter()
    for steps in map(int, args.steps.split(",")):
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            learner = MetaLearner(ArchConfig(kind="conv"), AlgoConfig(inner_lr=0.4, inner_steps=steps),
                                  (1, 28, 28), WAYS, "classification")
            batch = batch_for(seed, args.tasks, args.images)
            want = cases.reference_vector(learner, batch)
            row = {"steps": steps, "seed": seed, "kink": cases.kink(learner, batch, None, want)}
            learner, on_device = learner.to(device), batch.to(device)
            for strategy in strategies:
                got = cases.engine_vector(learner, on_device, strategy)
                row[strategy] = ((got - want).norm() / want.norm()).item()
            rows.append(row)
            print(f"steps {steps} seed {seed} kink {row['kink']:.1e}  "
                  + "  ".join(f"{s} {row[s]:.1e}" for s in strategies), flush=True)
    print(f"\nconv4 64 channels, {args.tasks} tasks of 5-way 1-shot ({QUERIES} queries/class), "
          f"{args.images}, {args.device}; relative L2 vs float64, median / max over seeds "
          f"(smooth seeds: kink <= 1e-8) — {time.perf_counter() - started:.0f} s")
    for steps in sorted({r["steps"] for r in rows}):
        chosen = [r for r in rows if r["steps"] == steps]
        smooth = [r for r in chosen if r["kink"] <= 1e-8]
        for strategy in strategies:
            def summary(group, strategy=strategy):
                values = [r[strategy] for r in group]
                return f"{statistics.median(values):.1e} / {max(values):.1e}" if values else "-"
            print(f"  {steps} step(s) {strategy:12} all {len(chosen)}: {summary(chosen):19} "
                  f"smooth {len(smooth)}: {summary(smooth)}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
