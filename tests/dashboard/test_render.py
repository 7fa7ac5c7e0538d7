"""Rendering the dashboard of real studies to recorded consoles at 80 and 160 columns."""

from __future__ import annotations

import io
import json
import re

import optuna
import pytest
from rich.console import Console

from maml_tune.dashboard import render
from maml_tune.dashboard.source import OptunaSource, open_source
from maml_tune.dashboard.state import Dashboard


def _console(width: int) -> Console:
    return Console(width=width, record=True, file=io.StringIO(), color_system=None, legacy_windows=False)


def _text(renderable, width: int) -> str:
    console = _console(width)
    console.print(renderable)
    return console.export_text()


def _view(url: str, study: str, **kwargs):
    source = open_source(url, study)
    return source, Dashboard(source, **kwargs).view(refresh=False)


def _optuna(url: str, name: str):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=url)


def _compact(text: str) -> str:
    return re.sub(r"[│╭╮╰╯─]+", " ", text)


@pytest.mark.parametrize("width", [80, 160])
def test_single_objective_panels_hold_the_right_numbers(study_db, width):
    study = _optuna(study_db, "demo")
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    source, view = _view(study_db, "demo")
    text = _text(render.dashboard(view, width), width)
    assert all(len(line) <= width for line in text.splitlines())
    flat = _compact(text)
    counts = (
        f"{len(trials)} = {states.count('COMPLETE')} complete · {states.count('PRUNED')} pruned · "
        f"{states.count('FAIL')} failed · 1 running · 1 waiting"
    )
    assert counts in flat
    best = study.best_trial
    ci = best.user_attrs["metrics"]["val_loss_ci95"]
    assert f"{best.value:.4g} ± {ci:.2g}" in flat and f"trial #{best.number}" in flat
    assert "sqlite:///" in flat and "val_loss (minimize)" in flat
    # the best-trials table lists the completed trials best first, with their parameters
    completed = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (t.value, t.number))
    table = text[text.index("best trials") : text.index("running trials")]
    rows = [line for line in table.splitlines() if re.match(r"^│ ?\d+ ", line)]
    assert [int(r.split()[1]) for r in rows] == [t.number for t in completed[:5]]
    first = rows[0]
    assert f"{best.value:.4g}" in first and render.short(best.params["algo.inner_lr"]) in first
    assert f"{best.params['algo.inner_steps']}/{best.params['algo.inner_steps']}" in first
    assert f"1x{best.params['arch.width']} relu" in first
    # running trial: its last reported step and value
    running = [t for t in trials if t.state.name == "RUNNING"][0]
    assert re.search(rf"│ ?{running.number} +10 +3\.25 ", text), text
    # history, importance (5 completed trials: evaluated), learning curves of the best and running
    assert "optimisation history" in text and "best so far" in text
    assert "hyperparameter importance (PED-ANOVA)" in text
    assert set(view.importance.values) == {"algo.inner_lr", "train.meta_lr", "algo.inner_steps", "arch.width"}
    assert f"#{best.number}" in text and f"#{running.number} (running)" in text
    if width >= render.WIDE:  # two columns side by side
        assert any(
            "best trials" in line and "hyperparameter importance" in line for line in text.splitlines()
        )
    source.close()


def test_importance_is_explained_when_too_few_trials(study_db):
    from maml_tune.dashboard.state import MIN_IMPORTANCE_TRIALS

    source, view = _view(study_db, "pareto")
    completed = view.counts["complete"]
    assert completed < MIN_IMPORTANCE_TRIALS
    text = _text(render.importance(view, 80), 80)
    assert f"needs {MIN_IMPORTANCE_TRIALS} completed trials ({completed} so far)" in text
    source.close()


@pytest.mark.parametrize("width", [80, 160])
def test_multi_objective_shows_the_pareto_set(study_db, width):
    study = _optuna(study_db, "pareto")
    front = sorted(t.number for t in study.best_trials)
    source, view = _view(study_db, "pareto")
    assert view.pareto and [t.number for t in view.top] == front
    text = _text(render.dashboard(view, width), width)
    assert all(len(line) <= width for line in text.splitlines())
    assert "Pareto set" in text and "Pareto front (test_loss vs adaptation_cost)" in text
    assert f"Pareto set of {len(front)} trial(s)" in text
    assert "test_loss (minimize), adaptation_cost (minimize)" in _compact(text)
    table = text[text.index("Pareto set ") :]
    for trial in study.best_trials:
        assert re.search(rf"│ ?{trial.number} +{re.escape(f'{trial.values[0]:.4g}')} ", table), table
        assert f"{trial.values[1]:.4g}" in table
    source.close()


def test_study_list_when_several_studies(study_db):
    from maml_tune.dashboard.live import snapshot

    console = _console(80)
    data = snapshot(console, study_db, None)
    text = console.export_text()
    names = [row["name"] for row in data["studies"]]
    assert names == ["demo", "pareto"]
    demo = [line for line in text.splitlines() if line.strip().startswith("demo")][0].split()
    assert demo[1:8] == ["sinusoid", "min", "5", "2", "1", "1", "1"]
    assert "Pareto" in text and all(len(line) <= 80 for line in text.splitlines())


def test_header_masks_the_password(study_db):
    source, _ = _view(study_db, "demo")
    source.url = "postgresql+psycopg://user:s3cret@db.example/studies"
    view = Dashboard(source).view(refresh=False)
    text = _text(render.header(view), 120)
    assert "s3cret" not in text and "user:***@db.example" in text
    source.close()


def test_incremental_refresh_fetches_only_what_changed(study_db, tmp_path):
    import sqlite3

    from maml_tune.search.storage import open_storage

    copy = tmp_path / "copy.db"
    with sqlite3.connect(study_db[len("sqlite:///") :]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    url = f"sqlite:///{copy}"
    source = open_source(url, "demo")
    known = len(source.trials)
    assert source.refresh().new == 0 and source.last.changed == 0
    study = optuna.load_study(study_name="demo", storage=open_storage(url, heartbeat=False))
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"][0]
    study.tell(running.number, 1.5)  # the running trial completes
    study.add_trial(
        optuna.trial.create_trial(
            params={"algo.inner_lr": 0.02},
            distributions={"algo.inner_lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)},
            value=0.5,
        )
    )
    stats = source.refresh()
    assert stats.new == 1 and stats.changed == 1 and len(source.trials) == known + 1
    assert (
        source.by_number(running.number).state == "COMPLETE" and source.by_number(running.number).value == 1.5
    )
    board = Dashboard(source)
    view = board.view(refresh=False)
    assert view.best.value == 0.5 and view.counts["running"] == 0
    source.close()


def test_dashboard_never_writes(study_db):
    import sqlalchemy
    import sqlalchemy.exc

    source = open_source(study_db, "demo")
    with pytest.raises(
        sqlalchemy.exc.OperationalError, match="readonly|read-only|query_only|attempt to write"
    ):
        with source.engine.begin() as conn:
            conn.execute(sqlalchemy.text("DELETE FROM trials"))
    source.close()


def test_empty_database_is_a_clear_error(tmp_path):
    import sqlite3

    from maml_tune.errors import StorageError, StudyError

    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(StudyError, match="no studies"):
        open_source(f"sqlite:///{tmp_path / 'empty.db'}", None)
    with pytest.raises(StorageError, match="no study database"):
        open_source(f"sqlite:///{tmp_path / 'missing.db'}", None)
    assert not (tmp_path / "missing.db").exists()


def test_fallback_source_agrees(study_db):
    sql_source, sql_view = _view(study_db, "demo")
    fallback = OptunaSource(study_db, "demo")
    fallback.refresh()
    view = Dashboard(fallback).view(refresh=False)
    assert view.counts == sql_view.counts
    assert [t.number for t in view.top] == [t.number for t in sql_view.top]
    assert view.best_ci == sql_view.best_ci
    sql_source.close()


def test_trial_command_text_and_json(study_db):
    from typer.testing import CliRunner

    from maml_tune.cli.main import app

    study = _optuna(study_db, "demo")
    runner = CliRunner()
    env = {"MAML_TUNE_STORAGE": study_db, "COLUMNS": "100"}
    by_state = {t.state.name: t for t in study.get_trials()}
    best = study.best_trial
    data = json.loads(runner.invoke(app, ["trial", "demo", str(best.number), "--json"], env=env).stdout)
    assert data["values"] == [best.value] and data["checkpoint"] == best.user_attrs["checkpoint"]
    assert data["config"] == best.user_attrs["config"]
    assert data["intermediate_values"] == {str(k): v for k, v in best.intermediate_values.items()}
    assert data["metrics"]["val_loss_ci95"] == best.user_attrs["metrics"]["val_loss_ci95"]
    text = runner.invoke(app, ["trial", "demo", str(best.number)], env=env).stdout
    assert f"trial #{best.number} of demo" in text and "intermediate values" in text and "config" in text
    for state in ("FAIL", "PRUNED"):
        trial = by_state[state]
        result = runner.invoke(app, ["trial", "demo", str(trial.number)], env=env)
        assert result.exit_code == 0, result.output
        assert trial.user_attrs["reason"].split(":")[0] in _compact(result.stdout)
    missing = runner.invoke(app, ["trial", "demo", "999"], env=env)
    assert missing.exit_code == 1 and "has no trial 999" in missing.output


def test_dashboard_command_snapshot(study_db):
    from typer.testing import CliRunner

    from maml_tune.cli.main import app

    result = CliRunner().invoke(
        app, ["dashboard", "demo", "--top", "2"], env={"MAML_TUNE_STORAGE": study_db, "COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert "best trials (top 2)" in result.stdout
    nosuch = CliRunner().invoke(app, ["dashboard", "nosuch"], env={"MAML_TUNE_STORAGE": study_db})
    assert nosuch.exit_code == 1 and "no study named 'nosuch'" in nosuch.output
