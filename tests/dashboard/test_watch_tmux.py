"""``maml-tune dashboard --watch`` in a real terminal (tmux) while a search writes to the same SQLite file."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studies import SINGLE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


def _trials_in(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def _totals(screen: str) -> list[int]:
    return [int(n) for n in re.findall(r"trials\s+(\d+) = ", screen)]


def test_watch_shows_new_trials_while_a_search_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    cli = str(bin_dir / "maml-tune")
    spec = tmp_path / "spec.toml"
    spec.write_text(SINGLE.replace("iterations = 20", "iterations = 30"))
    db = tmp_path / "watch.db"
    url = f"sqlite:///{db}"
    env = {
        **os.environ,
        "MAML_TUNE_STORAGE": url,
        "MAML_TUNE_DEVICE": "cpu",
        "MAML_TUNE_PLUGINS_DIR": str(tmp_path / "no-plugins"),
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / "search.log").open("w")
    search = subprocess.Popen(
        [cli, "search", str(spec), "--n-trials", "10", "--checkpoints", str(tmp_path / "ckpt")],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    socket = f"maml-tune-test-{os.getpid()}"
    tmux = ["tmux", "-L", socket]
    try:
        deadline = time.time() + 60
        while _trials_in(db) < 1 and time.time() < deadline:
            assert search.poll() is None, (tmp_path / "search.log").read_text()
            time.sleep(0.2)
        command = (
            f"cd {tmp_path} && MAML_TUNE_STORAGE={url} MAML_TUNE_PLUGINS_DIR={tmp_path / 'no-plugins'} "
            f"{cli} dashboard demo --watch --refresh 0.5; sleep 30"
        )
        subprocess.run(
            [*tmux, "new-session", "-d", "-s", "dash", "-x", "160", "-y", "60", command], check=True
        )
        seen: list[int] = []
        screen = ""
        deadline = time.time() + 75
        while time.time() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "dash"], capture_output=True, text=True
            ).stdout
            seen.extend(_totals(screen))
            if search.poll() is not None and seen and seen[-1] == _trials_in(db):
                break
        assert search.wait(timeout=60) == 0, (tmp_path / "search.log").read_text()
        assert seen, screen
        assert len(set(seen)) >= 2 and max(seen) > min(seen), (seen, screen)  # new trials appeared live
        assert max(seen) == _trials_in(db) == 10, (seen, screen)
        assert "best trials" in screen and "maml-tune dashboard" in screen
        subprocess.run([*tmux, "send-keys", "-t", "dash", "C-c"], check=True)
        time.sleep(1.0)
        after = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "dash"], capture_output=True, text=True
        ).stdout
        assert "Traceback" not in after
    finally:
        if search.poll() is None:
            search.terminate()
            search.wait(timeout=30)
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        log.close()
    output = (tmp_path / "search.log").read_text()
    assert "database is locked" not in output.lower(), output
    assert "Traceback" not in output, output
