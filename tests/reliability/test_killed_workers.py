"""A worker killed with SIGKILL in the middle of a trial, on SQLite and on PostgreSQL.

The worker runs the real ``maml-tune search``; short heartbeats (1 s, grace 2 s) let the next
search see the killed trial as stale. That search fails it (Optuna heartbeat), re-queues it
(retry callback: same parameters, ``failed_trial`` pointing back) and still ends with exactly
the requested number of complete trials and nothing RUNNING.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from reliability_helpers import (
    assert_finished_study,
    assert_retried,
    cli_env,
    fully_sampled,
    run_cli,
    running_trials,
    start_cli,
    stop_group,
    trial_rows,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow

N_TRIALS = 2


def test_sigkill_mid_trial_is_failed_retried_and_the_study_completes(any_url, tmp_path):
    url, name = any_url
    spec = write_spec(tmp_path, iterations=60)
    env = cli_env(tmp_path, MAML_TUNE_HEARTBEAT_INTERVAL="1", MAML_TUNE_GRACE_PERIOD="2")
    args = [
        "search",
        str(spec),
        "--storage",
        url,
        "--study-name",
        name,
        "--n-trials",
        str(N_TRIALS),
        "--checkpoints",
        str(tmp_path / "ckpt"),
    ]
    worker = start_cli(args, tmp_path, env)
    try:
        running = wait_for(lambda: running_trials(url, name), 120, "a RUNNING trial")
        time.sleep(0.3)  # inside the trial: heartbeats recorded, meta-training under way
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_group(worker)
    killed = running[0]["number"]
    time.sleep(3)  # past the 2 s grace period: the heartbeat is stale

    again = run_cli(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"re-queued trial(s) {killed}" in again.stderr

    rows = assert_finished_study(url, name, complete=N_TRIALS)
    failed = next(r for r in rows if r["number"] == killed)
    assert failed["state"] == "FAIL"
    assert "heartbeat" in failed["user"]["reason"]
    assert_retried(rows, killed)
    assert len(rows) == N_TRIALS + 1


def _workers_args(spec, url, name, tmp_path, n_trials):
    return [
        "search",
        str(spec),
        "--storage",
        url,
        "--study-name",
        name,
        "--n-trials",
        str(n_trials),
        "--workers",
        "2",
        "--checkpoints",
        str(tmp_path / "ckpt"),
    ]


def _sampled(url: str, name: str, at_least: int = 1):
    """RUNNING trials whose parameters are sampled (a retry repeats them), if ``at_least``."""
    rows = [r for r in running_trials(url, name) or [] if fully_sampled(r)]
    return rows if len(rows) >= at_least else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_process_is_replaced_and_the_study_completes(tmp_path):
    """kill -9 of one of two worker processes: its trial is failed with a reason and re-queued
    at once, a new worker takes its share, and the search ends 0 with exactly --n-trials complete."""
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "workers"
    spec = write_spec(tmp_path, iterations=60)
    search = start_cli(_workers_args(spec, url, name, tmp_path, 4), tmp_path, cli_env(tmp_path))
    try:
        # Kill it under way, once its parameters are sampled (the retry must repeat them).
        running = wait_for(lambda: _sampled(url, name), 180, "a RUNNING trial with its parameters")
        victim = running[0]
        pid = victim["user"]["process"]["pid"]
        assert pid != search.pid
        os.kill(pid, signal.SIGKILL)
        _, stderr = search.communicate(timeout=300)
    finally:
        stop_group(search)
    assert search.returncode == 0, stderr[-2000:]
    assert "killed by signal 9" in stderr and "started a new worker" in stderr
    rows = assert_finished_study(url, name, complete=4)
    failed = next(r for r in rows if r["number"] == victim["number"])
    assert failed["state"] == "FAIL" and failed["user"].get("reason"), failed
    assert_retried(rows, victim["number"])


def test_workers_stop_when_their_search_is_killed(tmp_path):
    """kill -9 of the search under --workers 2: its workers notice within seconds, close their
    trials as interrupted and exit, instead of running the study on unsupervised."""
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "orphans"
    spec = write_spec(tmp_path, iterations=400)
    search = start_cli(_workers_args(spec, url, name, tmp_path, 6), tmp_path, cli_env(tmp_path))
    try:
        running = wait_for(lambda: running_trials(url, name, 2), 180, "two RUNNING trials")
        pids = [r["user"]["process"]["pid"] for r in running]
        os.kill(search.pid, signal.SIGKILL)
        search.wait(timeout=10)
        wait_for(lambda: not any(_alive(pid) for pid in pids) or None, 60, "the workers to exit")
    finally:
        stop_group(search)
    rows = trial_rows(url, name)
    assert not [r for r in rows if r["state"] == "RUNNING"], [r["state"] for r in rows]
    assert sum(r["state"] == "COMPLETE" for r in rows) < 6


def test_a_trial_failed_by_another_worker_s_heartbeat_check_gets_a_reason(tmp_path):
    """Two searches run one study with short heartbeats; one is killed mid-trial. The other
    fails the stale trial at its next trial start (Optuna's heartbeat check) and re-queues it;
    the failed trial records why (it used to be left without a reason)."""
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "stale"
    spec = write_spec(tmp_path, iterations=1500)  # trials of seconds: both searches in one
    env = cli_env(tmp_path, MAML_TUNE_HEARTBEAT_INTERVAL="1", MAML_TUNE_GRACE_PERIOD="2")
    args = [
        "search",
        str(spec),
        "--storage",
        url,
        "--study-name",
        name,
        "--n-trials",
        "6",
        "--checkpoints",
        str(tmp_path / "ckpt"),
    ]
    victim = start_cli(args, tmp_path, env)
    try:
        wait_for(lambda: running_trials(url, name), 120, "the first search's trial")
        survivor = start_cli(args, tmp_path, env)
        running = wait_for(lambda: _sampled(url, name, 2), 120, "a trial of each search, parameters sampled")
        killed = next(r for r in running if r["user"]["process"]["pid"] == victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        _, stderr = survivor.communicate(timeout=300)
    finally:
        stop_group(victim)
        stop_group(survivor)
    assert survivor.returncode == 0, stderr[-2000:]
    rows = trial_rows(url, name)
    # The survivor ran the killed search's trial again without it taking its own share: six trials
    # count (COMPLETE, or PRUNED where one diverged) besides the failed one its retry replaces.
    table = "\n".join(f"{r['number']} {r['state']} {r['user'].get('reason')}" for r in rows)
    assert [r["state"] for r in rows].count("FAIL") == 1, table
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 6, table
    assert "RUNNING" not in [r["state"] for r in rows], table
    failed = next(r for r in rows if r["number"] == killed["number"])
    assert failed["state"] == "FAIL" and "heartbeats" in failed["user"]["reason"], failed
    assert_retried(rows, failed["number"])
