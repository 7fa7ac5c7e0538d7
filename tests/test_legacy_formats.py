"""Study databases and checkpoints written by an earlier release still load and give the same numbers.

The files under ``fixtures/legacy`` were written by main at commit 5bb1bcc (before the issue-13 redesign):
``study.db`` by ``maml-tune search`` (study "legacy", sinusoid, 3 trials), ``ckpts/legacy/trial-0`` as that
search's kept checkpoint, ``train-ckpt`` by ``maml-tune train``; the ``*.json`` files are what
``maml-tune evaluate --tasks 20 --json`` and ``maml-tune best --json`` printed then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
NUMBERS = ("tasks", "steps", "query_norm", "loss_before", "loss_before_ci95", "loss_after", "loss_after_ci95")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [("ckpts/legacy/trial-0", "trial-0.evaluate.json"), ("train-ckpt", "train-ckpt.evaluate.json")],
)
def test_old_checkpoint_evaluates_to_the_same_numbers(checkpoint, expected):
    result = invoke("evaluate", str(LEGACY / checkpoint), "--tasks", "20", "--json")
    assert result.exit_code == 0, result.output
    now = json.loads(result.stdout)
    then = json.loads((LEGACY / expected).read_text())
    # The same to float32 rounding: CPUs of other vector widths sum in another order
    # (measured 2026-12-04: 2e-8 relative apart).
    close = {key: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for key, v in now.items()}
    assert {key: close[key] for key in NUMBERS} == {key: then[key] for key in NUMBERS}


def test_old_study_database_reads_the_same(tmp_path):
    database = tmp_path / "study.db"
    shutil.copy(LEGACY / "study.db", database)
    storage = f"sqlite:///{database}"
    result = invoke("best", "legacy", "--storage", storage, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((LEGACY / "best.json").read_text())
    listing = invoke("studies", "list", "--storage", storage, "--json")
    assert listing.exit_code == 0, listing.output
    (study,) = json.loads(listing.stdout)
    assert study["name"] == "legacy"


def test_old_trials_read_into_the_typed_record_without_loss(tmp_path):
    import optuna

    from maml_tune.search.record import TrialAttrs

    database = tmp_path / "study.db"
    shutil.copy(LEGACY / "study.db", database)
    trials = optuna.load_study(study_name="legacy", storage=f"sqlite:///{database}").trials
    assert len(trials) == 3
    for trial in trials:
        record = TrialAttrs.of(trial)
        assert record.to_user_attrs() == trial.user_attrs
        assert record.config["train"]["iterations"] > 0 and "val_loss" in record.metrics
