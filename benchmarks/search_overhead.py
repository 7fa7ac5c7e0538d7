"""Study overhead: sampler + storage time as a share of a study's wall time.

Runs a sinusoid study in this process and times the part of every trial that is model
work (meta-training, validation, test evaluation, checkpoint); everything else (sampling,
trial creation, reporting, user attributes, heartbeats, tell, checkpoint top-k pruning) is
overhead. Target: <= 5% for trials of about 10 s.

    python benchmarks/search_overhead.py --trials 10 --iterations 2000            # ~10 s trials, SQLite
    python benchmarks/search_overhead.py --storage postgresql://root@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=2000, help="meta-iterations per trial")
    parser.add_argument("--val-interval", type=int, default=200)
    parser.add_argument("--storage", default=None, help="default: a fresh SQLite file in a temporary folder")
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import optuna
    import torch

    from maml_tune.families.registry import Registry
    from maml_tune.search import objective as objective_module
    from maml_tune.search.events import TrialEnded, TrialStarted
    from maml_tune.search.runner import SearchOptions, run_search
    from maml_tune.search.spec import default_spec_path, load_spec

    torch.set_num_threads(args.threads)
    work: list[float] = []
    original = objective_module.TrialObjective._run

    def timed_run(self, *a, **k):
        started = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            work.append(time.perf_counter() - started)

    objective_module.TrialObjective._run = timed_run
    folder = Path(tempfile.mkdtemp(prefix="maml-tune-overhead-"))
    storage = args.storage or f"sqlite:///{folder / 'overhead.db'}"
    name = f"overhead-{int(time.time())}"
    spec = load_spec(
        default_spec_path(),
        Registry(),
        {
            "n_trials": args.trials,
            "sampler": args.sampler,
            "pruner": "none",
            "baseline": False,
            "sets": {
                "budget.iterations": str(args.iterations),
                "budget.val_interval": str(args.val_interval),
                "arch.depth": "2",
                "arch.width": "40",
                "algo.inner_steps": "1",
                "train.meta_batch": "25",
                "algo.algorithm": "maml",
                "algo.first_order": "false",
            },
        },
    )
    marks: list[tuple[str, float]] = []

    def events(event) -> None:
        if isinstance(event, TrialStarted):
            marks.append(("trial_start", time.perf_counter()))
        elif isinstance(event, TrialEnded):
            marks.append(("trial_end", time.perf_counter()))

    started = time.perf_counter()
    result = run_search(
        spec,
        SearchOptions(
            storage=storage,
            study_name=name,
            device="cpu",
            checkpoint_root=str(folder / "checkpoints"),
            threads=args.threads,
        ),
        events,
    )
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    overhead = wall - sum(work)
    first = next(t for k, t in marks if k == "trial_start")
    last = [t for k, t in marks if k == "trial_end"][-1]
    steady = (last - first) - sum(work)
    report = {
        "storage": result.storage,
        "sampler": args.sampler,
        "trials": len(trials),
        "mean_trial_seconds": sum(work) / max(len(work), 1),
        "wall_seconds": wall,
        "overhead_seconds": overhead,
        "overhead_share": overhead / wall,
        "startup_seconds": first - started,
        "steady_overhead_share": steady / (last - first),
        "overhead_per_trial_seconds": steady / max(len(trials), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
