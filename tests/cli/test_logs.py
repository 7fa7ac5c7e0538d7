"""Progress in a log file: timestamped lines (or JSON lines) written while the work runs."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from maml_tune.cli._logs import STEADY_FRACTION, LogFormat, ProgressLog, resolve_format

MAML_TUNE = str(Path(sys.executable).with_name("maml-tune"))
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_line_waits_for_the_interval_and_a_share_of_the_work():
    stream, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream, interval=10.0, clock=clock)
    total = 1000
    for done in range(1, total + 1):
        clock.now = done * 0.1  # 10 iterations per second: 100 s in all
        log.steady("train", done, total, "train", f"iteration {done}")
    lines = stream.getvalue().splitlines()
    written = [int(line.rsplit(" ", 1)[1]) for line in lines]
    # The first step, then every 10 s (100 iterations > 5% of 1000), and the last.
    assert written == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901, 1000]
    assert all(re.fullmatch(f"{STAMP} train: iteration \\d+", line) for line in lines)


def test_the_share_of_the_work_rules_when_it_is_rarer():
    stream, clock = io.StringIO(), FakeClock()
    log = ProgressLog(stream, interval=1.0, clock=clock)
    for done in range(1, 201):
        clock.now = done * 10.0  # each step takes 10 s: the 5% share (10 steps) is rarer
        log.steady("k", done, 200, "train", str(done))
    written = [int(line.rsplit(" ", 1)[1]) for line in stream.getvalue().splitlines()]
    assert written[:3] == [1, 11, 21] and written[-1] == 200
    assert all(b - a >= STEADY_FRACTION * 200 for a, b in zip(written, written[1:-1]))


def test_json_lines_are_strict_json_and_text_lines_are_never_cut_or_split():
    stream = io.StringIO()
    ProgressLog(stream, as_json=True).event("trial.end", "ignored", value=math.inf, params={"a": 1})
    record = json.loads(stream.getvalue(), parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert record["event"] == "trial.end" and record["value"] == "inf" and record["params"] == {"a": 1}
    assert re.fullmatch(STAMP, record["time"])
    stream = io.StringIO()
    long = "x" * 500
    ProgressLog(stream).event("study", f"name\nerror: fake {long}")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(f"study: name error: fake {long}")


def test_auto_is_rich_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", io.StringIO()) is LogFormat.text
    assert resolve_format("auto", Tty()) is LogFormat.rich
    assert resolve_format("json", Tty()) is LogFormat.json


def _run(*args: str, cwd) -> tuple[list[tuple[float, str]], float, subprocess.CompletedProcess]:
    """Run ``maml-tune ARGS`` with stderr to a pipe; (each stderr line with the time it arrived,
    the time the process ended, the process with its stdout)."""
    env = {**os.environ, "MAML_TUNE_DEVICE": "cpu"}
    env.pop("MAML_TUNE_LOG_FORMAT", None)
    proc = subprocess.Popen(
        [MAML_TUNE, *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=300)
    ended = time.monotonic()
    reader.join()
    return lines, ended, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "")


@pytest.mark.slow
def test_a_redirected_train_writes_progress_while_it_runs(tmp_path):
    """stderr is a pipe: timestamped lines arrive during meta-training, not only at the end."""
    lines, ended, proc = _run(
        "--log-interval", "1", "train", "--iterations", "2500", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert proc.returncode == 0, (proc.stdout, lines)
    train = [(t, line) for t, line in lines if re.match(f"{STAMP} train: iteration \\d+/2500", line)]
    assert len(train) >= 4, lines
    assert train[0][0] < ended - 3.0, "the first progress line came only at the end"
    assert train[-1][1].split("train: ")[1].startswith("iteration 2500/2500")
    assert any(re.match(f"{STAMP} validation: iteration 2500: val loss", line) for _, line in lines)
    assert "checkpoint:" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_redirected_search_logs_every_trial(tmp_path, log_format):
    lines, _, proc = _run(
        "--log-format",
        log_format,
        "search",
        "--n-trials",
        "3",
        "--storage",
        f"sqlite:///{tmp_path / 's.db'}",
        "--set",
        "budget.iterations=60",
        "--set",
        "budget.val_interval=30",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout, lines)
    if log_format == "json":
        records = [json.loads(line) for _, line in lines]
        ends = [r for r in records if r["event"] == "trial.end"]
        assert [r["trial"] for r in ends] == [0, 1, 2]
        assert all(
            r["state"] in ("COMPLETE", "PRUNED", "FAIL") and "algo.inner_lr" in r["params"] for r in ends
        )
        assert ends[0]["baseline"] is True
        assert sum(r["event"] == "trial.start" for r in records) == 3
        assert records[0]["event"] == "study" and records[0]["n_trials"] == 3
    else:
        ends = [line for _, line in lines if re.match(f"{STAMP} trial.end: trial \\d", line)]
        assert len(ends) == 3, lines
        assert re.search(r"trial 0 \[baseline\] complete val_loss \d", ends[0]), ends[0]
        assert all("algo.inner_lr=" in line for line in ends)


def test_quiet_prints_results_without_progress(tmp_path):
    lines, _, proc = _run(
        "--quiet", "train", "--iterations", "20", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert proc.returncode == 0 and lines == []
    assert "checkpoint:" in proc.stdout


def test_evaluate_logs_its_meta_test(tmp_path):
    from typer.testing import CliRunner

    from maml_tune.cli.main import app

    runner = CliRunner()
    trained = runner.invoke(app, ["--quiet", "train", "--iterations", "5", "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["--log-format", "json", "evaluate", str(tmp_path / "run"), "--tasks", "120"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert (
        records[0]["event"] == "meta-test" and records[-1]["tasks_done"] == records[-1]["tasks_total"] == 120
    )


@pytest.mark.slow
def test_a_minute_long_redirected_train_logs_at_its_steady_cadence(tmp_path):
    """About a minute of meta-training with the default 10 s cadence: lines arrive 10 s or
    more apart while it runs, the first long before the end."""
    lines, ended, proc = _run("train", "--iterations", "35000", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout, lines)
    train = [t for t, line in lines if re.match(f"{STAMP} train: iteration \\d+/35000", line)]
    assert len(train) >= 4, lines
    gaps = [b - a for a, b in zip(train, train[1:-1])]
    assert all(gap >= 9.0 for gap in gaps), gaps
    assert train[0] < ended - 30.0


def test_bench_and_a_search_worker_s_data_preparation_are_logged(tmp_path):
    from typer.testing import CliRunner

    from maml_tune.cli.main import app
    from maml_tune.cli.search import _LogDisplay
    from maml_tune.search.events import FamilyPreparing

    result = CliRunner().invoke(app, ["--log-format", "json", "bench", "--seconds", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["tasks_done"] for r in records if r["event"] == "bench windows"][-1] == 5
    stream = io.StringIO()
    display = _LogDisplay(ProgressLog(stream))
    display(FamilyPreparing(0, 0, 4840, "decoding Omniglot images"))
    display(FamilyPreparing(0, 4840, 4840, "decoding Omniglot images"))
    assert stream.getvalue().count("prepare: worker 0: decoding Omniglot images") == 2
