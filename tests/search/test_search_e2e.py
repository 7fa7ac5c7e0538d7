"""End-to-end studies on a temporary SQLite file (tiny budgets: 30 iterations, 1-20-1 MLP)."""

from __future__ import annotations

import json

import optuna
import pytest

from maml_tune.errors import StorageError, StudyError
from maml_tune.search.runner import SearchOptions, create_or_resume, run_search
from maml_tune.search.spec import load_spec
from maml_tune.search.storage import open_storage

pytestmark = pytest.mark.slow

DOCUMENTED_ATTRS = {
    "config",
    "metrics",
    "val_history",
    "n_params",
    "wall_seconds",
    "tasks_per_sec",
    "device",
    "version",
    "iterations_done",
}


def _run(spec, storage_url, **options):
    return run_search(spec, SearchOptions(storage=storage_url, device="cpu", **options))


def _trials(storage_url, name):
    return optuna.load_study(study_name=name, storage=storage_url).get_trials()


def test_study_completes_resumes_and_opens_with_plain_optuna(write_spec, registry, storage_url, tmp_path):
    spec = load_spec(write_spec(), registry)
    result = _run(spec, storage_url)
    assert result.added == 3
    trials = _trials(storage_url, "tiny")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # plain Optuna reads the database and the documented user attributes
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    for trial in study.trials:
        assert DOCUMENTED_ATTRS <= set(trial.user_attrs), trial.user_attrs.keys()
        metrics = trial.user_attrs["metrics"]
        for key in ("val_loss", "val_loss_ci95", "test_loss", "test_loss_ci95", "adaptation_cost"):
            assert key in metrics
        assert trial.user_attrs["config"]["train"]["iterations"] == 30
        # which query normalisation produced the metrics: the run's own (the default)
        assert metrics["val_query_norm"] == metrics["test_query_norm"] == "transductive"
        assert trial.user_attrs["config"]["algo"]["query_norm"] == "transductive"
        assert trial.user_attrs["device"] == "cpu"
        assert trial.value == pytest.approx(metrics["val_loss"])
    # only the top-1 checkpoint is kept
    kept = list((tmp_path / "studies" / "checkpoints" / "tiny").glob("trial-*"))
    assert [p.name for p in kept] == [f"trial-{study.best_trial.number}"]
    assert study.best_trial.user_attrs["checkpoint"].endswith(f"trial-{study.best_trial.number}")
    # the same command again adds nothing; a larger total adds the difference
    assert _run(spec, storage_url).added == 0
    bigger = load_spec(write_spec(), registry, {"n_trials": 5})
    assert _run(bigger, storage_url).added == 2
    assert len(_trials(storage_url, "tiny")) == 5


def test_incompatible_spec_is_refused_unless_renamed(write_spec, registry, storage_url, tiny_text):
    _run(load_spec(write_spec(), registry, {"n_trials": 1}), storage_url)
    changed = load_spec(write_spec(tiny_text.replace("high = 0.5", "high = 0.9")), registry, {"n_trials": 1})
    with pytest.raises(StudyError, match=r"space.*--study-name"):
        _run(changed, storage_url)
    assert _run(changed, storage_url, study_name="tiny-2").added == 1


def test_absurd_inner_lr_is_pruned_with_reason_and_study_finishes(write_spec, registry, storage_url):
    spec = load_spec(write_spec(), registry)
    study, _ = create_or_resume(spec, open_storage(storage_url), "tiny")
    study.enqueue_trial({"algo.inner_lr": 50.0, "train.meta_lr": 1e-3})
    result = _run(spec, storage_url)
    assert result.added == 3
    trials = _trials(storage_url, "tiny")
    absurd = trials[0]
    assert absurd.params["algo.inner_lr"] == 50.0
    assert absurd.state.name in ("PRUNED", "FAIL")
    assert "diverged" in absurd.user_attrs["reason"]
    assert all(t.state.name == "COMPLETE" for t in trials[1:])


def test_pruner_prunes(write_spec, registry, storage_url, tiny_text):
    text = tiny_text.replace('pruner = "none"', 'pruner = "median"')
    extra = """
    [study.pruner_options]
    n_startup_trials = 1
    n_warmup_steps = 0
    """
    spec = load_spec(write_spec(text, extra=extra), registry, {"n_trials": 4})
    study, _ = create_or_resume(spec, open_storage(storage_url), "tiny")
    study.enqueue_trial({"algo.inner_lr": 0.05, "train.meta_lr": 1e-2})  # learns quickly
    for _ in range(3):  # barely learns: worse than the first at every validation
        study.enqueue_trial({"algo.inner_lr": 1e-3, "train.meta_lr": 1e-4})
    _run(spec, storage_url)
    pruned = [t for t in _trials(storage_url, "tiny") if t.state.name == "PRUNED"]
    assert pruned, "the median pruner pruned nothing"
    assert all("pruned at iteration" in t.user_attrs["reason"] for t in pruned)
    assert all(t.user_attrs["iterations_done"] < 30 for t in pruned)


def test_multi_objective_study_returns_a_pareto_set(write_spec, registry, storage_url):
    from maml_tune.search.results import best

    spec = load_spec(
        write_spec(
            extra="""
    [objective]
    metrics = ["test_loss", "adaptation_cost"]
    """
        ),
        registry,
        {"n_trials": 4},
    )
    assert spec.study.pruner == "none"  # Optuna cannot prune multi-objective studies
    _run(spec, storage_url)
    data = best(storage_url, "tiny")
    assert data["pareto"] and data["directions"] == ["minimize", "minimize"]
    values = [t["values"] for t in data["trials"]]
    assert values and all(len(v) == 2 for v in values)
    for a in values:  # no member dominates another
        assert not any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in values)


def test_storage_errors_mask_the_password():
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://user:s3cret@127.0.0.1:1/nodb")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(StorageError, match="invalid storage URL|no database driver"):
        open_storage("nosuchdialect://x")


def test_cli_search_read_commands_and_retrain(write_spec, storage_url, tmp_path):
    from typer.testing import CliRunner

    from maml_tune.cli.main import app

    runner = CliRunner()
    spec = write_spec()
    env = {"MAML_TUNE_STORAGE": storage_url, "MAML_TUNE_DEVICE": "cpu"}
    result = runner.invoke(app, ["search", str(spec), "--n-trials", "2", "--baseline", "--json"], env=env)
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["studies", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert rows[0]["name"] == "tiny" and rows[0]["counts"]["complete"] == 2 and rows[0]["baseline_trial"] == 0
    shown = json.loads(runner.invoke(app, ["studies", "show", "tiny", "--json"], env=env).stdout)
    assert shown["trials"][0]["baseline"] and shown["trials"][0]["params"]["algo.inner_lr"] == 0.01
    best = json.loads(runner.invoke(app, ["best", "--json"], env=env).stdout)
    assert best["trials"][0]["user_attrs"]["config"]["family"] == "sinusoid"
    for fmt in ("csv", "json"):
        exported = runner.invoke(
            app, ["studies", "export", "tiny", "-o", str(tmp_path / f"t.{fmt}")], env=env
        )
        assert exported.exit_code == 0, exported.output
    assert (tmp_path / "t.csv").read_text().startswith("number,state")
    assert len(json.loads((tmp_path / "t.json").read_text())["trials"]) == 2
    retrain = runner.invoke(
        app,
        [
            "train",
            "--from-study",
            "tiny",
            "--trial",
            "best",
            "--iterations",
            "5",
            "--out",
            str(tmp_path / "retrained"),
        ],
        env=env,
    )
    assert retrain.exit_code == 0, retrain.output
    saved = json.loads((tmp_path / "retrained" / "checkpoint.json").read_text())["config"]
    assert saved["train"]["iterations"] == 5 and saved["arch"]["width"] == 20
    missing = runner.invoke(app, ["best", "nosuch", "--json"], env=env)
    assert missing.exit_code == 1 and "no study named" in missing.output
    deleted = runner.invoke(app, ["studies", "delete", "tiny", "--yes", "--json"], env=env)
    assert deleted.exit_code == 0 and json.loads(deleted.stdout)["deleted"] == "tiny"
