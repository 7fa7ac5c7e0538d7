"""Any-way prediction on Omniglot: which heads let a 5-way model serve 20-way tasks.

Meta-trains Omniglot 5-way 1-shot once per head (``arch.head`` = fixed, zero, shared) and
once 20-way 1-shot (fixed head), all with the same settings and iterations; then meta-tests
every model on 600 held-out tasks 5-way and 20-way (the fixed 5-way head cannot serve 20
classes: that cell says so). Chance is 20% and 5%. Prints a Markdown table and, with
``--json``, the numbers.

    python benchmarks/any_way.py --data ../shared/data/omniglot
    python benchmarks/any_way.py --data ../shared/data/omniglot --iterations 50 --tasks 100  # quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding the Omniglot zip files")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=600, help="held-out test tasks per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args()

    import torch

    from maml_tune.core.run import meta_test, train_and_test
    from maml_tune.errors import ConfigError
    from maml_tune.families.omniglot import Omniglot

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cache = tempfile.mkdtemp(prefix="any-way-")
    settings = {
        "arch.channels": args.channels, "train.meta_batch": args.meta_batch,
        "train.iterations": args.iterations, "train.val_interval": args.iterations,
        "algo.test_inner_steps": 1, "train.seed": 0, "eval_tasks": args.tasks,
    }

    def family(n_way: int) -> Omniglot:
        found = Omniglot({"data_dir": args.data, "cache_dir": cache, "n_way": n_way, "k_shot": 1})
        found.prepare()
        return found

    families = {5: family(5), 20: family(20)}
    models = [("fixed", 5), ("zero", 5), ("shared", 5), ("fixed", 20)]
    rows = []
    for head, trained_way in models:
        config = families[trained_way].run_config({**settings, "arch.head": head})
        started = time.perf_counter()
        outcome = train_and_test(config, families[trained_way], device)
        seconds = round(time.perf_counter() - started, 1)
        row = {"head": head, "trained_way": trained_way, "train_seconds": seconds}
        for way in (5, 20):
            try:
                learner = outcome.learner.resized(way)
            except ConfigError as exc:
                row[f"{way}-way"] = {"refused": str(exc)}
                continue
            result = meta_test(learner, config.override({"family.n_way": way}), families[way], device)
            row[f"{way}-way"] = {"accuracy": result.accuracy_after.mean, "ci95": result.accuracy_after.ci95,
                                 "before": result.accuracy_before.mean}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.as_json:
        print(json.dumps({"settings": settings, "rows": rows}, indent=2))
        return
    print("\n| head | trained | 5-way accuracy | 20-way accuracy | train s |\n|---|---|---|---|---|")
    for row in rows:
        cells = []
        for way in (5, 20):
            cell = row[f"{way}-way"]
            cells.append("refused (fixed head)" if "refused" in cell
                         else f"{100 * cell['accuracy']:.1f}% ± {100 * cell['ci95']:.1f}")
        trained = f"{row['trained_way']}-way"
        print(f"| {row['head']} | {trained} | {cells[0]} | {cells[1]} | {row['train_seconds']} |")


if __name__ == "__main__":
    main()
