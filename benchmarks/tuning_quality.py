"""Tuning quality at an equal CPU budget: default sinusoid study vs the Finn et al. baseline.

1. Run the default sinusoid study (``studies/sinusoid.toml``) to completion; its wall time W
   is the CPU budget.
2. Evaluate the best trial's checkpoint (trained with the study's per-trial budget) on 600
   held-out test tasks.
3. Train Finn et al.'s configuration (1-40-40-1, inner lr 0.01, 1 step, meta-batch 25,
   meta lr 1e-3) for the same wall time W and evaluate it on the same 600 tasks.
4. For information: the best configuration retrained for W as well (search + retrain = 2W).

    python benchmarks/tuning_quality.py                    # default study (16 trials)
    python benchmarks/tuning_quality.py --n-trials 8 --iterations 200   # quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _iterations_for(seconds: float, config, family, device) -> int:
    """Meta-iterations of ``config`` that fit in ``seconds`` (measured on a short calibration run)."""
    from maml_tune.core.trainer import MetaTrainer

    probe = config.override({"train.iterations": 50, "train.val_interval": 10_000})
    result = MetaTrainer(probe, family, device).run()
    rate = result.iterations / max(result.train_seconds, 1e-9)
    return max(1, int(seconds * rate))


def _train_and_test(config, family, device, tasks: int, seed: int):
    from maml_tune.core.evaluation import evaluate
    from maml_tune.core.trainer import MetaTrainer

    result = MetaTrainer(config, family, device).run()
    test = evaluate(
        result.learner,
        family,
        split="test",
        tasks=tasks,
        steps=config.algo.eval_inner_steps,
        seed=seed,
        strategy=result.strategy,
        device=device,
    )
    return result, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=None, help="default: the spec's (16)")
    parser.add_argument("--iterations", type=int, default=None, help="per-trial budget (default: the spec's)")
    parser.add_argument("--tasks", type=int, default=600, help="held-out test tasks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()

    import optuna
    import torch

    from maml_tune.core.checkpoint import load_checkpoint
    from maml_tune.core.config import RunConfig
    from maml_tune.core.evaluation import evaluate
    from maml_tune.families.registry import Registry
    from maml_tune.search.runner import SearchOptions, run_search
    from maml_tune.search.spec import default_spec_path, load_spec

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    folder = Path(tempfile.mkdtemp(prefix="maml-tune-quality-"))
    storage = args.storage or f"sqlite:///{folder / 'quality.db'}"
    sets = {"budget.iterations": str(args.iterations)} if args.iterations else {}
    spec = load_spec(default_spec_path(), Registry(), {"n_trials": args.n_trials, "sets": sets})
    name = f"quality-{int(time.time())}"
    started = time.perf_counter()
    run_search(
        spec,
        SearchOptions(
            storage=storage,
            study_name=name,
            device="cpu",
            checkpoint_root=str(folder / "checkpoints"),
            threads=args.threads,
        ),
    )
    budget = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=storage)
    best = study.best_trial
    family = Registry().create("sinusoid", dict(spec.family_options))
    family.prepare()
    eval_seed = RunConfig().eval_seed

    def row(test, extra):
        return {"test_loss": test.loss_after.mean, "test_loss_ci95": test.loss_after.ci95, **extra}

    checkpoint = load_checkpoint(best.user_attrs["checkpoint"], device)
    from maml_tune.core.strategies import choose

    tuned_test = evaluate(
        checkpoint.learner,
        family,
        split="test",
        tasks=args.tasks,
        steps=checkpoint.config.algo.eval_inner_steps,
        seed=eval_seed,
        strategy=choose(checkpoint.config.arch, device, checkpoint.config.algo).strategy,
        device=device,
    )
    literature = family.run_config({"train.val_interval": 10_000})
    iterations = _iterations_for(budget, literature, family, device)
    base_result, base_test = _train_and_test(
        literature.override({"train.iterations": iterations}), family, device, args.tasks, eval_seed
    )
    tuned_config = RunConfig.from_dict(best.user_attrs["config"]).override({"train.val_interval": 10_000})
    tuned_iterations = _iterations_for(budget, tuned_config, family, device)
    retrain_result, retrain_test = _train_and_test(
        tuned_config.override({"train.iterations": tuned_iterations, "eval_tasks": args.tasks}),
        family,
        device,
        args.tasks,
        eval_seed,
    )
    counts = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(
        json.dumps(
            {
                "study_wall_seconds": budget,
                "trials": counts,
                "test_tasks": args.tasks,
                "best_params": best.params,
                "tuned_as_found": row(
                    tuned_test, {"iterations": best.user_attrs["config"]["train"]["iterations"]}
                ),
                "baseline_equal_time": row(
                    base_test, {"iterations": iterations, "train_seconds": base_result.train_seconds}
                ),
                "tuned_retrained_equal_time": row(
                    retrain_test,
                    {"iterations": tuned_iterations, "train_seconds": retrain_result.train_seconds},
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
