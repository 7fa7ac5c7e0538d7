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
    run_cli,
    running_trials,
    start_cli,
    stop_group,
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
