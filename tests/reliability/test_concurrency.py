"""Eight local worker processes on one study, on SQLite and on PostgreSQL: no storage error,
exact trial counts, nothing left RUNNING; meanwhile the dashboard (and ``studies show``)
read the same SQLite database in a loop without a single lock error."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from reliability_helpers import (
    assert_finished_study,
    cli_env,
    run_cli,
    start_cli,
    stop_group,
    trial_rows,
    unique_name,
    write_spec,
)

from maml_tune.families.registry import Registry
from maml_tune.search.events import StorageFailed, WorkerFailed
from maml_tune.search.runner import SearchOptions, run_search
from maml_tune.search.spec import load_spec

pytestmark = pytest.mark.slow

WORKERS = 8
N_TRIALS = 16


def _dashboard_available(tmp_path) -> bool:
    done = run_cli(["dashboard", "--help"], tmp_path, cli_env(tmp_path), timeout=120)
    return done.returncode == 0


def _run(tmp_path, url, name):
    spec = load_spec(write_spec(tmp_path, iterations=10), Registry(), {"n_trials": N_TRIALS})
    events: list[dict] = []
    result = run_search(
        spec,
        SearchOptions(
            storage=url,
            study_name=name,
            workers=WORKERS,
            device="cpu",
            threads=1,
            checkpoint_root=str(tmp_path / "ckpt"),
        ),
        events.append,
    )
    assert result.worker_errors == []
    assert not [e for e in events if isinstance(e, (StorageFailed, WorkerFailed))]
    rows = assert_finished_study(url, name, complete=N_TRIALS)
    assert len(rows) == N_TRIALS
    return rows


def test_eight_workers_on_sqlite_while_the_dashboard_reads(tmp_path, sqlite_url):
    readers = [["studies", "show", "rel", "--storage", sqlite_url, "--json"]]
    dashboard = _dashboard_available(tmp_path)
    if dashboard:
        readers.append(["dashboard", "rel", "--storage", sqlite_url])
    env = cli_env(tmp_path)
    stop = threading.Event()
    outcomes: list = []

    def read_in_a_loop():
        while not stop.is_set():
            for args in readers:
                done = run_cli(args, tmp_path, env, timeout=120)
                outcomes.append((args[0], done.returncode, done.stderr))

    reader = threading.Thread(target=read_in_a_loop, daemon=True)
    reader.start()
    try:
        _run(tmp_path, sqlite_url, "rel")
    finally:
        stop.set()
        reader.join(timeout=120)
    for command, code, stderr in outcomes:
        assert "locked" not in stderr.lower(), stderr
        # before the study exists the readers may say so; every other read succeeds
        assert code == 0 or "no study" in stderr or "no studies" in stderr or "no study database" in stderr, (
            command,
            code,
            stderr,
        )
    assert [o for o in outcomes if o[0] == "studies" and o[1] == 0], "studies show never read the study"
    if dashboard:
        assert [o for o in outcomes if o[0] == "dashboard" and o[1] == 0], (
            "the dashboard never read the study"
        )
    shown = json.loads(run_cli(readers[0], tmp_path, env).stdout)
    assert shown["counts"]["complete"] == N_TRIALS and shown["counts"]["running"] == 0
    if not dashboard:
        pytest.skip("the dashboard command does not exist yet: only `studies show` read during the run")


@pytest.mark.postgres
def test_eight_workers_on_postgres(tmp_path, postgres_url):
    from reliability_helpers import drop_study, unique_name

    name = unique_name()
    try:
        rows = _run(tmp_path, postgres_url, name)
        assert len({r["user"]["worker"] for r in rows}) > 1
    finally:
        drop_study(postgres_url, name)
    assert name not in optuna.get_all_study_names(postgres_url)


@pytest.fixture
def fresh_postgres_database(postgres_url):
    """A PostgreSQL database of its own (no tables yet), dropped afterwards."""
    import sqlalchemy

    name = unique_name("race").replace("-", "_")
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, existing",
    [
        ("sqlite", False),
        ("sqlite", True),
        pytest.param("postgres", False, marks=pytest.mark.postgres),
    ],
    ids=["sqlite-new-file", "sqlite-new-study", "postgres-new-database"],
)
def test_separate_processes_started_together_all_join_one_study(tmp_path, request, backend, existing):
    """8 ``maml-tune search`` processes started at once on a new database (SQLite file, or a
    PostgreSQL database without tables) or on a new study in an existing one: whichever creates
    the tables and the study, the others join it (no UNIQUE/'already exists' race, no 'not
    created by maml-tune' while the creator writes its marker); the study completes."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_database")
    spec = write_spec(tmp_path, iterations=5)
    env = cli_env(tmp_path)
    if existing:
        first = run_cli(
            [
                "search",
                str(spec),
                "--storage",
                url,
                "--study-name",
                "other",
                "--n-trials",
                "1",
                "--checkpoints",
                str(tmp_path / "ck"),
            ],
            tmp_path,
            env,
        )
        assert first.returncode == 0, first.stderr
    args = [
        "search",
        str(spec),
        "--storage",
        url,
        "--study-name",
        "race",
        "--n-trials",
        "8",
        "--checkpoints",
        str(tmp_path / "ck"),
    ]
    processes = [start_cli(args, tmp_path, env) for _ in range(8)]
    try:
        outcomes = [(p.wait(timeout=400), p.stderr.read()) for p in processes]
    finally:
        for p in processes:
            stop_group(p)
    failed = [stderr.strip().splitlines()[-1] for code, stderr in outcomes if code != 0]
    assert not failed, failed
    rows = trial_rows(url, "race")
    assert sum(r["state"] == "COMPLETE" for r in rows) >= 8 and not [
        r for r in rows if r["state"] == "RUNNING"
    ]
