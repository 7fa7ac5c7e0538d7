"""Retries that a kill could lose or double: a search killed while it re-queues an orphaned
trial, the same trial killed on every run, and searches racing to re-queue one trial.

The kills are real SIGKILLs. To land one inside the re-queue, the search runs with a
``sitecustomize`` module on its ``PYTHONPATH`` that makes it SIGKILL itself at that point
(before it claims the re-queue, or after the claim and before the insert).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import textwrap

import pytest
from reliability_helpers import (
    assert_finished_study,
    assert_retried,
    cli_env,
    fully_sampled,
    run_cli,
    start_cli,
    stop_group,
    trial_rows,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow

KILL_HOOK = """
import os, signal

_point = os.environ.get("KILL_AT")
if _point == "claim":
    import maml_tune.search.storage as _storage

    def _die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    _storage._claim_retry = _die
elif _point == "insert":
    import optuna.study

    def _die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    optuna.study.Study.add_trial = _die
"""


def _args(spec, url: str, name: str, tmp_path, n_trials: int) -> list[str]:
    return [
        "search",
        str(spec),
        "--storage",
        url,
        "--study-name",
        name,
        "--n-trials",
        str(n_trials),
        "--checkpoints",
        str(tmp_path / "ckpt"),
    ]


def _kill_mid_trial(args, tmp_path, env, url: str, name: str, retry_of: int | None = None) -> dict:
    """Start a search, SIGKILL it once its trial (the retry of ``retry_of``, if given) has
    sampled parameters; the killed trial's row."""
    search = start_cli(args, tmp_path, env)

    def its_trial():
        for row in trial_rows(url, name):
            mine = row["state"] == "RUNNING" and row["user"].get("process", {}).get("pid") == search.pid
            if mine and fully_sampled(row) and row["system"].get("failed_trial") == retry_of:
                return row
        return None

    try:
        trial = wait_for(its_trial, 180, f"a trial of search {search.pid} under way")
        os.kill(search.pid, signal.SIGKILL)
        search.wait(timeout=10)
    finally:
        stop_group(search)
    return trial


@pytest.mark.parametrize("point", ["claim", "insert"])
def test_a_search_killed_while_it_re_queues_an_orphan_leaves_it_to_the_next(point, tmp_path):
    """kill -9 of a search while it recovers an orphan (after failing it, before the retry is
    stored): the trial stays FAIL without a retry, and the next search re-queues it."""
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "window"
    spec = write_spec(tmp_path, iterations=400)
    args = _args(spec, url, name, tmp_path, 2)
    env = cli_env(tmp_path)
    orphan = _kill_mid_trial(args, tmp_path, env, url, name)

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(KILL_HOOK))
    dying = run_cli(args, tmp_path, {**env, "PYTHONPATH": str(hooks), "KILL_AT": point})
    assert dying.returncode == -signal.SIGKILL, dying.stderr[-2000:]
    rows = trial_rows(url, name)
    assert [r["state"] for r in rows] == ["FAIL"], rows
    assert "is gone (killed)" in rows[0]["user"]["reason"]

    again = run_cli(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"re-queued trial(s) {orphan['number']}" in again.stderr
    rows = assert_finished_study(url, name, complete=2)
    assert_retried(rows, orphan["number"])
    assert len(rows) == 3


def test_the_same_trial_killed_on_every_run_is_given_up_and_replaced(tmp_path):
    """A trial whose worker is killed on its first run and both retries (the retry limit) is not
    run again; a new trial takes its place, so the study still ends with --n-trials complete,
    and the search and ``studies show`` say in one line which configuration was given up."""
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "thrice"
    spec = write_spec(tmp_path, iterations=400)
    args = _args(spec, url, name, tmp_path, 2)
    env = cli_env(tmp_path)
    first = _kill_mid_trial(args, tmp_path, env, url, name)
    for _ in range(2):
        retry = _kill_mid_trial(args, tmp_path, env, url, name, retry_of=first["number"])
        assert retry["params"] == first["params"]

    final = run_cli(args, tmp_path, env)
    assert final.returncode == 0, final.stderr[-2000:]
    rows = assert_finished_study(url, name, complete=2)
    assert [r["state"] for r in rows] == ["FAIL"] * 3 + ["COMPLETE"] * 2, rows
    given_up = [line for line in final.stderr.splitlines() if "gave up" in line]
    assert len(given_up) == 1, final.stderr[-2000:]
    assert f"configuration of trial {first['number']}" in given_up[0] and "all 3 runs" in given_up[0]

    shown = run_cli(["studies", "show", name, "--storage", url], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    assert sum("gave up on the configuration of trial 0" in line for line in shown.stdout.splitlines()) == 1
    data = json.loads(run_cli(["studies", "show", name, "--storage", url, "--json"], tmp_path, env).stdout)
    assert data["given_up"] == [
        {
            "number": rows[2]["number"],
            "first_trial": first["number"],
            "runs": 3,
            "params": first["params"],
            "reason": rows[2]["user"]["reason"],
        }
    ]
    assert data["counts"]["complete"] == 2

    # Running the search again adds nothing: the study is complete.
    again = run_cli(args, tmp_path, env)
    assert again.returncode == 0 and len(trial_rows(url, name)) == 5, again.stderr[-2000:]


def _requeue_in_process(url: str, name: str, barrier, results) -> None:
    import optuna

    from maml_tune.search.storage import open_storage, requeue

    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    failed = study.get_trials(deepcopy=False)[0]
    barrier.wait()
    results.put(requeue(study, failed))


def _lost_trial(url: str, name: str) -> None:
    """A study holding one trial failed because its worker was lost (not yet re-queued)."""
    import optuna

    from maml_tune.search.storage import STALE_REASON, open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=False))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("reason", STALE_REASON)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


@pytest.mark.parametrize("processes", [8])
def test_searches_racing_to_re_queue_one_trial_re_queue_it_once(any_url, processes):
    """Eight processes re-queue the same lost trial at the same instant (searches recovering
    together): exactly one succeeds, and the study holds exactly one retry."""
    url, name = any_url
    _lost_trial(url, name)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_requeue_in_process, args=(url, name, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    outcomes = [results.get(timeout=10) for _ in workers]
    assert outcomes.count(True) == 1, outcomes
    rows = trial_rows(url, name)
    assert [r["state"] for r in rows] == ["FAIL", "WAITING"], rows
    assert rows[1]["system"]["retry_history"] == [0]
