"""Small real study databases for the dashboard tests, docs and benchmark, made by the search code.

``build_single`` runs a tiny sinusoid search (random sampler, median pruner) with one
diverging trial (pruned), one invalid configuration (failed), then leaves one trial RUNNING
(with two reported validations and a heartbeat-free worker) and one WAITING.
``build_multi`` runs a two-objective study (test_loss, adaptation_cost) in the same database.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

SINGLE = """
[family]
name = "sinusoid"

[space]
"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }
"train.meta_lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }
"algo.inner_steps" = { type = "int", low = 1, high = 2 }
"arch.width" = { type = "int", low = 8, high = 24 }

[fixed]
"arch.depth" = 1
"train.meta_batch" = 4
"train.seed" = 0

[budget]
iterations = 20
val_interval = 5
val_tasks = 10
eval_tasks = 10

[study]
name = "demo"
sampler = "random"
pruner = "median"
seed = 0
n_trials = 8
top_k_checkpoints = 1
inherit_space = false

[study.pruner_options]
n_startup_trials = 3
n_warmup_steps = 5
"""

MULTI_EXTRA = """
[objective]
metrics = ["test_loss", "adaptation_cost"]
"""


def _spec(folder: Path, text: str, name: str, overrides: dict | None = None):
    from maml_tune.families.registry import Registry
    from maml_tune.search.spec import load_spec

    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path, Registry(str(folder / "no-plugins")), overrides or {})


def build_single(folder: Path, url: str, n_trials: int = 8, name: str = "demo") -> None:
    """The single-objective study ``name`` (see the module docstring)."""
    import torch

    from maml_tune.search.runner import SearchOptions, create_or_resume, run_search
    from maml_tune.search.storage import open_storage

    torch.set_num_threads(1)
    spec = _spec(folder, SINGLE.replace('name = "demo"', f'name = "{name}"'), name, {"n_trials": n_trials})
    study, _ = create_or_resume(spec, open_storage(url), name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.enqueue_trial({"algo.inner_lr": 50.0, "train.meta_lr": 1e-3})  # diverges: pruned
        study.enqueue_trial({"algo.inner_steps": 0})  # invalid configuration: failed
    run_search(spec, SearchOptions(storage=url, device="cpu", checkpoint_root=str(folder / "checkpoints")))
    add_running(url, name)


def add_running(url: str, name: str) -> None:
    """One RUNNING trial with two validations reported, and one WAITING (enqueued) trial."""
    import optuna

    from maml_tune.search.storage import open_storage

    storage = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask(
        {
            "algo.inner_lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True),
            "train.meta_lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        }
    )
    trial.set_user_attr("device", "cpu")
    trial.report(3.5, 5)
    trial.report(3.25, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.enqueue_trial({"algo.inner_lr": 0.01, "train.meta_lr": 1e-3})


def build_multi(folder: Path, url: str, n_trials: int = 5, name: str = "pareto") -> None:
    import torch

    from maml_tune.search.runner import SearchOptions, run_search

    torch.set_num_threads(1)
    text = SINGLE.replace('name = "demo"', f'name = "{name}"').replace('pruner = "median"', 'pruner = "none"')
    text = text.split("[study.pruner_options]")[0] + MULTI_EXTRA
    spec = _spec(folder, text, name, {"n_trials": n_trials})
    run_search(spec, SearchOptions(storage=url, device="cpu", checkpoint_root=str(folder / "checkpoints")))
