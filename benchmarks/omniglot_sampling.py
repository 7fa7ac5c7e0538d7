"""Omniglot task-sampling throughput, and its share of a meta-training iteration.

    python benchmarks/omniglot_sampling.py --data ../shared/data/omniglot

Samples 20-way 1-shot 15-query tasks (28×28, rotations on) on the CPU from the in-memory
uint8 tensor, then times full meta-iterations (sample + meta-gradient + Adam step) of
the default conv4 network on the same workload, and prints sampling's share of them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maml_tune.core.learner import MetaLearner
from maml_tune.core.strategies import choose
from maml_tune.core.tasks import split_generator
from maml_tune.families.omniglot import Omniglot


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--n-way", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=50, help="sampled batches to time")
    parser.add_argument("--iterations", type=int, default=3, help="meta-iterations to time")
    args = parser.parse_args()
    device = torch.device("cpu")
    family = Omniglot({"data_dir": args.data, "n_way": args.n_way, "k_shot": 1, "k_query": 15})
    started = time.perf_counter()
    family.prepare()
    print(f"prepare (decode or cache load): {time.perf_counter() - started:.2f} s")
    generator = split_generator("train", 0)
    family.sample("train", args.meta_batch, generator, device)
    times = []
    for _ in range(args.batches):
        started = time.perf_counter()
        family.sample("train", args.meta_batch, generator, device)
        times.append(time.perf_counter() - started)
    sample_s = statistics.median(times)
    print(f"sampling: {args.meta_batch / sample_s:,.0f} tasks/s "
          f"({sample_s * 1000:.1f} ms per batch of {args.meta_batch} {args.n_way}-way 1-shot tasks)")
    config = family.run_config({"train.meta_batch": args.meta_batch})
    strategy = choose(config.arch, device, config.algo, config.train.strategy).strategy
    torch.manual_seed(0)
    learner = MetaLearner(config.arch, config.algo, family.input_shape, family.output_size, family.kind)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.train.meta_lr)
    step_times = []
    for _ in range(args.iterations):
        started = time.perf_counter()
        batch = family.sample("train", args.meta_batch, generator, device)
        optimizer.zero_grad(set_to_none=True)
        learner.accumulate_meta_gradient(batch, strategy, task_chunk=config.train.task_chunk)
        optimizer.step()
        step_times.append(time.perf_counter() - started)
    step_s = statistics.median(step_times)
    print(f"meta-training ({strategy}, {config.algo.inner_steps} inner step(s), second order): "
          f"{args.meta_batch / step_s:,.1f} tasks/s ({step_s:.2f} s per iteration)")
    print(f"sampling share of a meta-iteration: {100 * sample_s / step_s:.2f}%")


if __name__ == "__main__":
    main()
