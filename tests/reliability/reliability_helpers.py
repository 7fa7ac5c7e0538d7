"""Helpers for the reliability tests: the real ``maml-tune`` console script, study database
inspection over plain SQL (so a test never holds Optuna state), and PostgreSQL discovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tomllib

MAML_TUNE = str(Path(sys.executable).with_name("maml-tune"))
POSTGRES_URL = os.environ.get("MAML_TUNE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")

# A sinusoid study whose trials take about a second on one busy core.
SPEC = """
[family]
name = "sinusoid"

[space]
"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }
"train.meta_lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }

[fixed]
"arch.depth" = 1
"arch.width" = 20
"train.meta_batch" = 5
"train.seed" = 0

[budget]
iterations = {iterations}
val_interval = 10
val_tasks = 10
eval_tasks = 10

[study]
name = "rel"
sampler = "random"
pruner = "none"
seed = 0
n_trials = 3
top_k_checkpoints = 1
inherit_space = false
"""


SAMPLED = tuple(tomllib.loads(SPEC.replace("{iterations}", "1"))["space"])
"""The parameters a trial of :data:`SPEC` samples (Optuna stores them one at a time)."""


def fully_sampled(row: dict[str, Any]) -> bool:
    """Whether the trial ``row`` has stored every parameter of :data:`SPEC`'s space: one killed
    after only some is retried with those and fresh draws of the rest, not as it was."""
    return set(SAMPLED) <= set(row["params"])


def write_spec(folder: Path, iterations: int = 20, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(SPEC.replace("{iterations}", str(iterations)))
    return path


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``maml-tune`` subprocess: nothing inherited from the caller's study settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAML_TUNE_")}
    env.update(
        MAML_TUNE_PLUGINS_DIR=str(tmp_path / "no-plugins"),
        MAML_TUNE_DEVICE="cpu",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAML_TUNE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``maml-tune`` as the leader of a new process group (like a job in a terminal)."""
    return subprocess.Popen(
        [MAML_TUNE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen) -> None:
    """Kill what is left of a test's process group (cleanup only)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.communicate(timeout=10)
    except Exception:
        pass


# ----------------------------------------------------------------------------- database


def engine(url: str):
    import sqlalchemy

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return sqlalchemy.create_engine(url, **kwargs)


def trial_rows(url: str, study: str) -> list[dict[str, Any]]:
    """Every trial of ``study``: number, state, params, user and system attributes (plain SQL)."""
    import sqlalchemy

    eng = engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(
                sqlalchemy.text(
                    "SELECT t.trial_id, t.number, t.state FROM trials t JOIN studies s "
                    "ON s.study_id = t.study_id WHERE s.study_name = :n ORDER BY t.number"
                ),
                {"n": study},
            ).all()
            out = []
            for trial_id, number, state in rows:
                params = dict(
                    c.execute(
                        sqlalchemy.text(
                            "SELECT param_name, param_value FROM trial_params WHERE trial_id = :i"
                        ),
                        {"i": trial_id},
                    ).all()
                )
                user, system = (
                    {
                        k: json.loads(v)
                        for k, v in c.execute(
                            sqlalchemy.text(f"SELECT key, value_json FROM {table} WHERE trial_id = :i"),
                            {"i": trial_id},
                        ).all()
                    }
                    for table in ("trial_user_attributes", "trial_system_attributes")
                )
                state_name = state.name if hasattr(state, "name") else str(state)
                out.append(
                    {"number": number, "state": state_name, "params": params, "user": user, "system": system}
                )
            return out
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
        return []  # tables not created yet (SQLite: OperationalError, PostgreSQL: ProgrammingError)
    finally:
        eng.dispose()


def states(rows: list[dict[str, Any]]) -> list[str]:
    return [r["state"] for r in rows]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns a truthy value (returned), else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def running_trials(url: str, study: str, at_least: int = 1):
    rows = trial_rows(url, study)
    running = [r for r in rows if r["state"] == "RUNNING" and "process" in r["user"]]
    return running if len(running) >= at_least else None


def assert_finished_study(url: str, study: str, complete: int) -> list[dict[str, Any]]:
    """Exactly ``complete`` COMPLETE trials, nothing RUNNING or WAITING, every failure explained."""
    rows = trial_rows(url, study)
    assert states(rows).count("COMPLETE") == complete, [(r["number"], r["state"]) for r in rows]
    assert not [r for r in rows if r["state"] in ("RUNNING", "WAITING")], rows
    for row in rows:
        if row["state"] == "FAIL":
            assert row["user"].get("reason"), row
    return rows


def assert_retried(rows: list[dict[str, Any]], failed_number: int) -> dict[str, Any]:
    """The trial that retried ``failed_number``: same parameters, pointing back at it, COMPLETE."""
    failed = next(r for r in rows if r["number"] == failed_number)
    retries = [r for r in rows if failed_number in r["system"].get("retry_history", [])]
    assert len(retries) == 1, (failed_number, rows)
    retry = retries[0]
    assert retry["system"]["failed_trial"] == failed_number
    assert retry["params"] == failed["params"]
    assert retry["state"] == "COMPLETE"
    assert "reason" not in retry["user"], retry["user"]
    return retry


# ----------------------------------------------------------------------------- PostgreSQL


def postgres_or_skip() -> str:
    import sqlalchemy

    try:
        eng = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
        eng.dispose()
    except Exception as exc:
        from maml_tune.search.storage import mask_url

        reason = f"PostgreSQL not reachable at {mask_url(POSTGRES_URL)}: {str(exc).splitlines()[0]}"
        if os.environ.get("MAML_TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (MAML_TUNE_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return POSTGRES_URL


def unique_name(prefix: str = "rel") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def drop_study(url: str, name: str) -> None:
    import optuna

    try:
        if name in optuna.get_all_study_names(url):
            optuna.delete_study(study_name=name, storage=url)
    except Exception:
        pass
