"""Dashboard speed on a large study: snapshot render and one watch refresh.

Builds a 5,000-trial single-objective study in a temporary SQLite file (through Optuna's
storage API, with the user attributes the real objective writes), then times

* a snapshot: open the study, read every trial, compute every panel (PED-ANOVA importance
  included) and render it to a recorded rich Console 160 columns wide, as
  ``maml-tune dashboard`` does;
* a watch refresh: 10 new trials are added, then one refresh of the same dashboard (fetching
  only what changed) and its render.

Run: ``python benchmarks/dashboard_speed.py [--trials 5000] [--db PATH]`` (with ``--db`` an
existing file is reused, so repeated runs skip the build). Targets: snapshot < 1 s, refresh
with 10 new trials < 0.2 s.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rich.console import Console


def _trials(n: int, start: int, rng: random.Random) -> list:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    dists = {
        "algo.algorithm": CategoricalDistribution(["maml", "fomaml", "anil", "metasgd", "lslr"]),
        "algo.inner_lr": FloatDistribution(1e-3, 1.0, log=True),
        "algo.inner_steps": IntDistribution(1, 5),
        "algo.test_inner_steps": IntDistribution(1, 10),
        "arch.depth": IntDistribution(1, 4),
        "arch.width": IntDistribution(16, 128, log=True),
        "train.meta_lr": FloatDistribution(1e-4, 1e-2, log=True),
        "train.meta_batch": IntDistribution(4, 32, log=True),
    }
    out = []
    for _ in range(start, start + n):
        params = {
            "algo.algorithm": rng.choice(dists["algo.algorithm"].choices),
            "algo.inner_lr": 10 ** rng.uniform(-3, 0),
            "algo.inner_steps": rng.randint(1, 5),
            "algo.test_inner_steps": rng.randint(1, 10),
            "arch.depth": rng.randint(1, 4),
            "arch.width": rng.randint(16, 128),
            "train.meta_lr": 10 ** rng.uniform(-4, -2),
            "train.meta_batch": rng.randint(4, 32),
        }
        value = abs(params["algo.inner_lr"] - 0.05) * 10 + rng.random()
        roll = rng.random()
        state = TrialState.COMPLETE if roll < 0.8 else TrialState.PRUNED if roll < 0.95 else TrialState.FAIL
        steps = 4 if state == TrialState.COMPLETE else 2
        curve = {100 * (s + 1): value * (1 + 1.0 / (s + 1)) for s in range(steps)}
        config = {
            "family": "sinusoid",
            "family_options": {"k_shot": 10, "k_query": 10},
            "arch": {
                "kind": "mlp",
                "depth": params["arch.depth"],
                "width": params["arch.width"],
                "activation": "relu",
            },
            "algo": {
                "algorithm": params["algo.algorithm"],
                "first_order": False,
                "inner_lr": params["algo.inner_lr"],
                "inner_steps": params["algo.inner_steps"],
                "test_inner_steps": params["algo.test_inner_steps"],
            },
            "train": {
                "meta_lr": params["train.meta_lr"],
                "meta_batch": params["train.meta_batch"],
                "iterations": 400,
                "val_interval": 100,
            },
            "eval_tasks": 200,
            "eval_seed": 2,
        }
        attrs = {
            "version": "0.1.0",
            "device": "cpu",
            "worker": 0,
            "config": config,
            "wall_seconds": 12.5,
            "iterations_done": 100 * steps,
            "val_history": [
                {"iteration": k, "loss_after": v, "loss_after_ci95": 0.1 * v} for k, v in curve.items()
            ],
        }
        if state == TrialState.COMPLETE:
            attrs["metrics"] = {
                "val_loss": value,
                "val_loss_ci95": 0.1 * value,
                "test_loss": value * 1.1,
                "test_loss_ci95": 0.1 * value,
                "adaptation_cost": 1000,
            }
            attrs.update(n_params=1761, tasks_per_sec=850.0)
        else:
            attrs["reason"] = (
                "pruned at iteration 200 by the median pruner"
                if state == TrialState.PRUNED
                else "RuntimeError: synthetic failure"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(
                optuna.trial.create_trial(
                    state=state,
                    value=value if state == TrialState.COMPLETE else None,
                    params=params,
                    distributions=dists,
                    user_attrs=attrs,
                    intermediate_values=curve,
                )
            )
    return out


def _bulk_insert(url: str, study_id: int, trials: list) -> None:
    """Write FrozenTrials into Optuna's tables in one transaction (the rows ``add_trials`` writes,
    without its per-trial commits, which take minutes for thousands of trials)."""
    import datetime as dt
    import json

    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models as m

    engine = sa.create_engine(url)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    finite = m.TrialValueModel.TrialValueType.FINITE
    finite_iv = m.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    with engine.begin() as conn:
        first = (conn.execute(sa.select(sa.func.max(m.TrialModel.__table__.c.trial_id))).scalar() or 0) + 1
        number0 = conn.execute(
            sa.select(sa.func.count()).where(m.TrialModel.__table__.c.study_id == study_id)
        ).scalar()
        rows, params, values, attrs, inter = [], [], [], [], []
        for i, t in enumerate(trials):
            tid = first + i
            start = now - dt.timedelta(seconds=12 * (len(trials) - i))
            rows.append(
                {
                    "trial_id": tid,
                    "number": number0 + i,
                    "study_id": study_id,
                    "state": t.state,
                    "datetime_start": start,
                    "datetime_complete": start + dt.timedelta(seconds=11),
                }
            )
            for name, value in t.params.items():
                dist = t.distributions[name]
                params.append(
                    {
                        "trial_id": tid,
                        "param_name": name,
                        "param_value": dist.to_internal_repr(value),
                        "distribution_json": distribution_to_json(dist),
                    }
                )
            if t.values:
                values.append({"trial_id": tid, "objective": 0, "value": t.values[0], "value_type": finite})
            for key, value in t.user_attrs.items():
                attrs.append({"trial_id": tid, "key": key, "value_json": json.dumps(value)})
            for step, value in t.intermediate_values.items():
                inter.append(
                    {
                        "trial_id": tid,
                        "step": step,
                        "intermediate_value": value,
                        "intermediate_value_type": finite_iv,
                    }
                )
        conn.execute(sa.insert(m.TrialModel.__table__), rows)
        conn.execute(sa.insert(m.TrialParamModel.__table__), params)
        conn.execute(sa.insert(m.TrialValueModel.__table__), values)
        conn.execute(sa.insert(m.TrialUserAttributeModel.__table__), attrs)
        conn.execute(sa.insert(m.TrialIntermediateValueModel.__table__), inter)
    engine.dispose()


def build(path: Path, n: int, via_optuna: bool = False) -> str:
    import optuna

    from maml_tune.search.results import STUDY_ATTR
    from maml_tune.search.storage import open_storage

    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, heartbeat=False)
    if "bench" in optuna.get_all_study_names(storage):
        return url
    study = optuna.create_study(study_name="bench", storage=storage, direction="minimize")
    study.set_user_attr(STUDY_ATTR, {"spec": {"family": "sinusoid"}, "version": "0.1.0"})
    study.set_metric_names(["val_loss"])
    rng = random.Random(0)
    started = time.perf_counter()
    trials = _trials(n, 0, rng)
    if via_optuna:
        study.add_trials(trials)  # minutes for 5,000 trials
    else:
        _bulk_insert(url, study._study_id, trials)
    loaded = optuna.load_study(study_name="bench", storage=url).get_trials(deepcopy=False)
    assert len(loaded) == n and loaded[-1].user_attrs["config"]["family"] == "sinusoid"  # Optuna reads it
    print(f"built {n} trials in {time.perf_counter() - started:.1f} s: {path}", file=sys.stderr)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (reused when it exists)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--via-optuna", action="store_true", help="build with study.add_trials (slow)")
    args = parser.parse_args()

    import optuna

    from maml_tune.dashboard import render
    from maml_tune.dashboard.source import open_source
    from maml_tune.dashboard.state import Dashboard

    folder = Path(tempfile.mkdtemp(prefix="maml-tune-bench-"))
    db = args.db or folder / "bench.db"
    url = build(db, args.trials, args.via_optuna)

    def console() -> Console:
        return Console(
            width=160, record=True, file=io.StringIO(), force_terminal=True, color_system="truecolor"
        )

    snapshots = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        source = open_source(url, "bench")
        view = Dashboard(source, top_k=5).view(refresh=False)
        con = console()
        con.print(render.dashboard(view, 160))
        snapshots.append(time.perf_counter() - started)
        source.close()
    assert view.counts["total"] >= args.trials and view.importance.values, "snapshot incomplete"

    source = open_source(url, "bench")
    board = Dashboard(source, top_k=5, importance_interval=30.0)
    board.view(refresh=False)
    study = optuna.load_study(study_name="bench", storage=url)
    rng = random.Random(len(source.trials))
    refreshes, fetched = [], []
    for _ in range(args.repeat):
        study.add_trials(_trials(10, 0, rng))
        started = time.perf_counter()
        view = board.view(force_importance=False)
        con = console()
        con.print(render.dashboard(view, 160, 50))
        refreshes.append(time.perf_counter() - started)
        fetched.append(source.last.new)
    source.close()
    assert all(n == 10 for n in fetched), fetched
    if args.db is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    print(f"command: python benchmarks/dashboard_speed.py --trials {args.trials} --repeat {args.repeat}")
    print(f"study: {view.counts['total']} trials ({view.counts['complete']} complete), width 160")
    print(
        f"snapshot (open + read all + importance + render): median {statistics.median(snapshots):.3f} s, "
        f"min {min(snapshots):.3f} s, max {max(snapshots):.3f} s (target < 1 s)"
    )
    print(
        f"watch refresh with 10 new trials (fetch + render): median {statistics.median(refreshes):.3f} s, "
        f"min {min(refreshes):.3f} s, max {max(refreshes):.3f} s (target < 0.2 s); fetched {fetched} new"
    )


if __name__ == "__main__":
    main()
