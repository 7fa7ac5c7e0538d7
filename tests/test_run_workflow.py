"""One configuration gives the same numbers through a search trial, ``train`` and ``evaluate``.

The configuration trains in bf16, because precision is where the copies of the run workflow
once drifted apart (the search meta-tested in the trial's precision, train and evaluate in fp32).
"""

from __future__ import annotations

import json
import textwrap

import optuna
import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.core.checkpoint import load_checkpoint
from maml_tune.search.record import TrialAttrs
from maml_tune.search.storage import open_storage

SPEC = """
[family]
name = "sinusoid"

[space]
"algo.inner_lr" = { type = "categorical", choices = [0.02] }

[fixed]
"arch.width" = 16
"train.meta_batch" = 4
"train.seed" = 3
"train.precision" = "bf16"

[budget]
iterations = 24
val_interval = 12
val_tasks = 15
eval_tasks = 30

[study]
name = "workflow"
sampler = "random"
n_trials = 1
baseline = false
top_k_checkpoints = 1
"""

COMPARED = ("val_loss", "val_loss_before", "test_loss", "test_loss_ci95", "test_loss_before", "test_tasks")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    spec = root / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC))
    storage = f"sqlite:///{root / 'study.db'}"
    searched = invoke(
        "search", str(spec), "--storage", storage, "--checkpoints", str(root / "ckpts"), "--device", "cpu"
    )
    assert searched.exit_code == 0, searched.output
    (trial,) = optuna.load_study(study_name="workflow", storage=open_storage(storage)).trials
    trained = invoke(
        "train",
        "--from-study",
        "workflow",
        "--storage",
        storage,
        "--out",
        str(root / "train"),
        "--device",
        "cpu",
    )
    assert trained.exit_code == 0, trained.output
    evaluated = invoke("evaluate", str(root / "train"), "--device", "cpu", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    return trial, root, json.loads(evaluated.stdout)


def test_a_search_trial_and_its_retrain_store_the_same_metrics(runs):
    trial, root, _ = runs
    stored = trial.user_attrs["metrics"]
    retrained = load_checkpoint(root / "train").summary
    kept = load_checkpoint(trial.user_attrs["checkpoint"]).summary
    assert retrained.iterations == kept.iterations == 24
    assert {k: retrained.metrics[k] for k in COMPARED} == {k: stored[k] for k in COMPARED}
    assert {k: kept.metrics[k] for k in COMPARED} == {k: stored[k] for k in COMPARED}
    assert (kept.study, kept.trial) == ("workflow", trial.number)
    assert retrained.validation == tuple(kept.validation)
    assert [v["iteration"] for v in trial.user_attrs["val_history"]] == [12, 24]


def test_a_trial_stores_only_typed_record_fields(runs):
    trial, _, _ = runs
    record = TrialAttrs.of(trial)
    assert record.to_user_attrs() == trial.user_attrs
    assert (record.device, record.iterations_done, record.baseline) == ("cpu", 24, False)


def test_evaluate_repeats_the_meta_test_of_training(runs):
    trial, root, evaluated = runs
    stored = trial.user_attrs["metrics"]
    assert evaluated["tasks"] == stored["test_tasks"] == 30
    assert evaluated["loss_after"] == stored["test_loss"]
    assert evaluated["loss_after_ci95"] == stored["test_loss_ci95"]
    assert evaluated["loss_before"] == stored["test_loss_before"]
    full = invoke("evaluate", str(root / "train"), "--device", "cpu", "--json", "--precision", "fp32")
    assert full.exit_code == 0, full.output
    assert json.loads(full.stdout)["loss_after"] != stored["test_loss"], "--precision fp32 was ignored"
