"""Ctrl-C during ``maml-tune search``, sent the way a terminal sends it: SIGINT to the whole
foreground process group (the search and, with ``--workers``, its worker processes).

First Ctrl-C (or a SIGTERM): the running trial is closed as FAIL with ``reason`` "interrupted
by a signal (SIGINT or SIGTERM)" and re-queued, one line is printed, the exit code is 130,
and the same command resumes the study. Second Ctrl-C: the process exits at once; the
database stays consistent and the next search recovers any trial left RUNNING.
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
    trial_rows,
    wait_for,
    write_spec,
)

from maml_tune.search.interrupt import REASON

pytestmark = pytest.mark.slow

N_TRIALS = 2


def _args(spec, url, tmp_path, *extra):
    return [
        "search",
        str(spec),
        "--storage",
        url,
        "--n-trials",
        str(N_TRIALS),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        *extra,
    ]


def _interrupt(tmp_path, extra=(), running=1, signals=1, group=True, signum=signal.SIGINT):
    """Start a search, wait for ``running`` RUNNING trials, send ``signum`` ``signals`` times."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = write_spec(tmp_path, iterations=80)
    env = cli_env(tmp_path)
    args = _args(spec, url, tmp_path, *extra)
    search = start_cli(args, tmp_path, env)
    try:
        found = wait_for(lambda: running_trials(url, "rel", running), 150, f"{running} RUNNING trial(s)")
        time.sleep(0.3)
        sent = time.monotonic()
        for _ in range(signals):
            if group:
                os.killpg(search.pid, signum)
            else:
                os.kill(search.pid, signum)
            time.sleep(0.05)
        _, stderr = search.communicate(timeout=150)
        elapsed = time.monotonic() - sent
    finally:
        stop_group(search)
    return url, args, env, search.returncode, stderr, [r["number"] for r in found], elapsed


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_first_ctrl_c_closes_the_trial_exits_130_and_the_search_resumes(tmp_path):
    url, args, env, code, stderr, numbers, _ = _interrupt(tmp_path)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "interrupted" in _last_line(stderr) and "run the same command again" in _last_line(stderr)
    # What it says of the running trial is read back from the study (it used to be assumed).
    assert f"trial(s) {numbers[0]} failed and re-queued" in _last_line(stderr), _last_line(stderr)
    rows = trial_rows(url, "rel")
    interrupted = next(r for r in rows if r["number"] == numbers[0])
    assert interrupted["state"] == "FAIL"
    assert interrupted["user"]["reason"] == REASON
    assert not [r for r in rows if r["state"] == "RUNNING"]
    assert [r for r in rows if r["state"] == "WAITING"], "the interrupted trial was not re-queued"

    again = run_cli(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = assert_finished_study(url, "rel", complete=N_TRIALS)
    assert_retried(rows, numbers[0])


def test_sigterm_stops_a_search_as_ctrl_c_does(tmp_path):
    """``scancel``, ``kill`` and a pod's stop send SIGTERM to the search alone: the running trial
    is closed with the interrupt's reason and re-queued, exit 130, and the study resumes."""
    url, args, env, code, stderr, numbers, _ = _interrupt(tmp_path, group=False, signum=signal.SIGTERM)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "SIGTERM" in _last_line(stderr)
    rows = trial_rows(url, "rel")
    interrupted = next(r for r in rows if r["number"] == numbers[0])
    assert interrupted["state"] == "FAIL" and interrupted["user"]["reason"] == REASON
    assert [r for r in rows if r["state"] == "WAITING"], "the interrupted trial was not re-queued"
    again = run_cli(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_retried(assert_finished_study(url, "rel", complete=N_TRIALS), numbers[0])


def test_second_ctrl_c_exits_at_once_and_the_next_search_recovers(tmp_path):
    url, args, env, code, stderr, numbers, elapsed = _interrupt(tmp_path, signals=2)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < 10
    rows = trial_rows(url, "rel")
    first = next(r for r in rows if r["number"] == numbers[0])
    # closed by the first Ctrl-C, or left RUNNING by the second: both are consistent
    assert first["state"] in ("FAIL", "RUNNING"), first
    if first["state"] == "FAIL":
        assert first["user"]["reason"] == REASON

    again = run_cli(args, tmp_path, env)  # at once: no waiting for a heartbeat grace period
    assert again.returncode == 0, again.stderr[-2000:]
    rows = assert_finished_study(url, "rel", complete=N_TRIALS)
    assert_retried(rows, numbers[0])


def test_ctrl_c_with_worker_processes_closes_every_running_trial(tmp_path):
    url, args, env, code, stderr, numbers, _ = _interrupt(tmp_path, extra=("--workers", "2"), running=2)
    assert code == 130, stderr[-2000:]
    assert "interrupted" in _last_line(stderr)
    closed = ", ".join(map(str, sorted(numbers)))
    assert f"trial(s) {closed} failed and re-queued" in _last_line(stderr), _last_line(stderr)
    rows = trial_rows(url, "rel")
    assert not [r for r in rows if r["state"] == "RUNNING"], rows
    for number in numbers:
        row = next(r for r in rows if r["number"] == number)
        assert row["state"] == "FAIL" and row["user"]["reason"] == REASON, row
    assert len([r for r in rows if r["state"] == "WAITING"]) == 2  # both re-queued for the next search


def test_sigint_to_the_parent_alone_is_forwarded_to_the_workers(tmp_path):
    url, _, _, code, stderr, numbers, elapsed = _interrupt(
        tmp_path, extra=("--workers", "2"), running=2, group=False
    )
    assert code == 130, stderr[-2000:]
    # Measured 2.4-2.8 s. Two workers' progress events used to starve the parent's interrupt
    # check: it forwarded the signal 6-7 s late (then ~9 s in all) or not at all (120 s).
    assert elapsed < 8, f"stopped {elapsed:.1f} s after the signal"
    rows = trial_rows(url, "rel")
    assert not [r for r in rows if r["state"] == "RUNNING"], rows
    for number in numbers:
        row = next(r for r in rows if r["number"] == number)
        assert row["state"] == "FAIL" and row["user"]["reason"] == REASON, row


STALLING_PLUGIN = '''
import time

from maml_tune.families.sinusoid import Sinusoid


class Stalling(Sinusoid):
    """Sinusoid tasks, except that the 20th meta-training draw takes ten minutes."""

    name = "stalling"
    draws = 0

    def sample(self, split, n_tasks, generator, device):
        if split == "train":
            Stalling.draws += 1
            if Stalling.draws == 20:
                time.sleep(600)
        return super().sample(split, n_tasks, generator, device)
'''


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_inside_one_very_long_meta_iteration_stops_within_seconds(tmp_path, workers):
    """No safe point comes for ten minutes (one meta-iteration stalls in the family's draw):
    the first Ctrl-C is delivered inside the computation after ESCALATE_AFTER_S, so the trial
    is closed with the interrupt's reason and re-queued, and the search exits 130 at once."""
    from maml_tune.search.interrupt import ESCALATE_AFTER_S

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stalling.py").write_text(STALLING_PLUGIN)
    spec = write_spec(tmp_path, iterations=100)
    spec.write_text(spec.read_text().replace('name = "sinusoid"', 'name = "stalling"'))
    env = cli_env(tmp_path, MAML_TUNE_PLUGINS_DIR=str(plugins))
    search = start_cli(_args(spec, url, tmp_path, "--workers", workers), tmp_path, env)
    try:
        found = wait_for(lambda: running_trials(url, "rel", int(workers)), 150, "RUNNING trials")
        time.sleep(2)  # every worker is inside its stalled draw by now
        sent = time.monotonic()
        os.killpg(search.pid, signal.SIGINT)
        _, stderr = search.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        stop_group(search)
    assert search.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert elapsed < ESCALATE_AFTER_S + 10, elapsed
    rows = trial_rows(url, "rel")
    for number in [r["number"] for r in found]:
        row = next(r for r in rows if r["number"] == number)
        assert row["state"] == "FAIL" and row["user"]["reason"] == REASON, row
    assert len([r for r in rows if r["state"] == "WAITING"]) == int(workers)
