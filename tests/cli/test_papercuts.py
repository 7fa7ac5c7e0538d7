"""What a new user hit on a fresh clone (issue 16), each pinned by a test that failed before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.cli.search import next_commands


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("papercuts")
    storage = f"sqlite:///{root / 'elsewhere.db'}"
    result = invoke(
        "search",
        "--n-trials",
        "2",
        "--storage",
        storage,
        "--set",
        "budget.iterations=20",
        "--set",
        "budget.val_interval=10",
        "--checkpoints",
        str(root / "ckpt"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    return storage, root, result.stdout


def test_the_closing_hints_keep_the_storage_and_match_the_readme(study):
    storage, _, stdout = study
    assert f"see: maml-tune best sinusoid --storage {storage}" in stdout
    assert (
        f"maml-tune train --from-study sinusoid --storage {storage} --trial best --iterations 20000" in stdout
    )
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "--trial best --iterations 20000" in readme


def test_the_closing_hints_mask_a_password_and_quote_for_the_shell():
    hint = next_commands("my study", "postgresql://me:pa/ss@db.example:5432/studies")
    assert "pa/ss" not in hint and "'my study'" in hint


def test_train_from_study_says_what_it_retrains_and_records_it(study, tmp_path):
    storage, _, _ = study
    result = invoke(
        "train",
        "--from-study",
        "sinusoid",
        "--trial",
        "0",
        "--storage",
        storage,
        "--iterations",
        "5",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "retraining trial 0 of study sinusoid (" in result.stderr
    assert "algo.inner_lr=0.01" in result.stderr  # the baseline's sampled parameters
    summary = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["summary"]
    assert summary["retrained_from"] == {"study": "sinusoid", "trial": 0, "storage": storage}


def test_a_missing_default_database_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAML_TUNE_STORAGE", raising=False)
    result = invoke("studies", "list")
    assert result.exit_code != 0
    (line,) = result.stderr.strip().splitlines()
    assert str(tmp_path / "studies" / "maml-tune.db") in line
    assert "relative to the current folder" in line


def test_a_study_from_a_family_s_defaults_has_its_baseline_and_a_seed(tmp_path, monkeypatch):
    """``search --family X`` (no spec of its own): trial 0 is the literature configuration,
    the study is seeded, and first_order is only sampled where it is a choice."""
    import optuna

    from maml_tune.families._spaces import default_space
    from maml_tune.search.storage import open_storage

    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(Path(__file__).parents[2] / "plugins"))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = invoke(
        "search",
        "--family",
        "spirals",
        "--n-trials",
        "2",
        "--storage",
        storage,
        "--device",
        "cpu",
        "--set",
        "budget.iterations=10",
        "--set",
        "budget.val_interval=10",
        "--checkpoints",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="spirals", storage=open_storage(storage))
    assert study.trials[0].user_attrs["baseline"] is True
    assert study.user_attrs["maml_tune"]["spec"]["study"]["seed"] == 0
    when = default_space("mlp")["algo.first_order"]["when"]["algo.algorithm"]
    assert "fomaml" not in when and "reptile" not in when and "maml" in when


def test_the_live_view_counts_running_trials_restarts_clocks_and_labels_values():
    """A trial running shows as running; a new trial's bar and clock start afresh; no ``0/None``;
    a worker's validation value is labelled as its own, not as the study's best."""
    import io

    from rich.console import Console

    from maml_tune.cli.search import _Display, _make_progress
    from maml_tune.search import events

    progress = _make_progress()
    display = _Display(progress)
    display(
        events.StudyOpened(
            "s", "sqlite:///x.db", True, 3, 0, 3, 1, ["minimize"], ["val_loss"], None, [], "cpu"
        )
    )
    display(events.Status({"counts": {"complete": 0, "pruned": 0, "fail": 0, "running": 0}}))
    display(events.TrialStarted(0, 0, {}))

    def text() -> str:
        console = Console(file=io.StringIO(), width=160)
        console.print(progress.get_renderable())
        return console.file.getvalue()

    assert "running 1" in text() and "/None" not in text()
    display(events.IterationDone(0, 0, 100, 100, 0.5))
    display(events.Validated(0, 0, 100, 0.1125))
    assert "last val 0.1125" in text() and "best val" not in text()
    worker = progress.tasks[display.workers[0]]
    assert worker.finished  # its bar reached 100/100
    display(events.TrialEnded(0, 0, "COMPLETE", [0.1125], None, False))
    display(events.TrialStarted(0, 1, {}))
    worker = progress.tasks[display.workers[0]]
    assert not worker.finished and worker.finished_time is None and worker.completed == 0
    assert "running 1" in text()


def test_the_plugin_contract_is_importable_as_documented():
    from maml_tune.families import TaskBatch, TaskFamily
    from maml_tune.families.imagefolder import ImageFolder
    from maml_tune.families.sinusoid import Sinusoid

    assert [f for f in TaskBatch.__dataclass_fields__] == ["support_x", "support_y", "query_x", "query_y"]
    assert "preprocess" in vars(TaskFamily) and ImageFolder.reads_images() and not Sinusoid.reads_images()


def test_plugins_new_takes_every_name_the_registry_does_and_check_counts_what_it_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path))
    made = invoke("plugins", "new", "my-family")
    assert made.exit_code == 0, made.output
    assert "class MyFamily" in (tmp_path / "my-family.py").read_text()
    checked = invoke("plugins", "check", "my-family")
    assert checked.exit_code == 0, checked.output
    announced = int(checked.stderr.split("): ")[1].split(" checks")[0])
    assert f"{announced}/{announced} checks passed" in checked.stdout
    assert invoke("plugins", "new", "Bad Name").exit_code == 2


def test_study_tables_fit_80_columns_without_cutting_words(study, monkeypatch):
    """``studies list`` keeps its headers whole; ``best`` shows the checkpoint path whole."""
    storage, root, _ = study
    listing = CliRunner().invoke(app, ["studies", "list", "--storage", storage], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    assert "complete" in listing.stdout and "…" not in listing.stdout
    best = CliRunner().invoke(app, ["best", "sinusoid", "--storage", storage], env={"COLUMNS": "80"})
    assert best.exit_code == 0, best.output
    table = [line for line in best.stdout.splitlines() if line[:1] in "┌│└├"]
    assert table and all(len(line) <= 80 for line in table)  # (the config JSON is one long line to copy)
    path = str(root / "ckpt" / "sinusoid" / "trial-")
    joined = "".join(line.strip("│ ") for line in table)
    assert path in joined and "…" not in best.stdout


@pytest.mark.parametrize("name", ["x[/bold]", "[/]", "[red]fake"])
def test_a_study_name_is_never_read_as_markup(tmp_path, name):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    searched = invoke(
        "search",
        "--n-trials",
        "1",
        "--study-name",
        name,
        "--storage",
        storage,
        "--device",
        "cpu",
        "--set",
        "budget.iterations=5",
        "--set",
        "budget.val_interval=5",
        "--checkpoints",
        str(tmp_path),
    )
    assert searched.exit_code == 0, searched.output
    for command in (["studies", "list"], ["studies", "show", name], ["best", name]):
        shown = CliRunner().invoke(app, [*command, "--storage", storage], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (command, shown.output)
        assert name in shown.stdout, (command, shown.stdout)


def test_the_search_summary_shows_the_winner_its_test_metric_and_what_the_metric_means(study):
    _, _, stdout = study
    assert "its parameters" in stdout and "algo.inner_lr=" in stdout
    assert "its meta-test" in stdout and "test_loss" in stdout
    assert "val_loss: query loss after adaptation on the meta-validation tasks" in stdout.replace("\n", " ")


def test_the_test_run_says_how_long_it_takes():
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "tests/core"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert "the full suite takes about 10 minutes on 2 CPU cores" in done.stdout, done.stdout[-2000:]
