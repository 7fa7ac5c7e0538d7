"""``maml-tune train`` keeps what it meta-trained when the meta-test after it fails or is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.core.checkpoint import load_checkpoint

MAML_TUNE = str(Path(sys.executable).with_name("maml-tune"))

# The meta-test draws test tasks in chunks; the pre-flight check before training draws one.
META_TEST_DRAW = """
from maml_tune.families.sinusoid import Sinusoid


class Badtest(Sinusoid):
    name = "badtest"

    def sample(self, split, n_tasks, generator, device):
        if split == "test" and n_tasks > 1:
            {action}
        return super().sample(split, n_tasks, generator, device)
"""


def _train_args(tmp_path, action: str) -> list[str]:
    """``train`` arguments for a family whose meta-test draws do ``action``; plugins in tmp_path."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "badtest.py").write_text(META_TEST_DRAW.replace("{action}", action))
    return [
        "--plugins-dir",
        str(plugins),
        "train",
        "--family",
        "badtest",
        "--iterations",
        "5",
        "--set",
        "arch.width=8",
        "--out",
        str(tmp_path / "run"),
    ]


@pytest.mark.parametrize(
    ("error", "code", "why"),
    [
        ("RuntimeError('the test shard went away')", 1, "the test shard went away"),
        ("KeyboardInterrupt()", 130, "interrupted"),
    ],
)
def test_a_failed_or_interrupted_meta_test_leaves_the_trained_checkpoint(
    tmp_path, monkeypatch, error, code, why
):
    monkeypatch.setenv("MAML_TUNE_DEVICE", "cpu")
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["--quiet", *_train_args(tmp_path, f"raise {error}")])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.exit_code == code, done.output
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert why in lines[0] and "during the meta-test" in lines[0] and f"maml-tune evaluate {out}" in lines[0]
    checkpoint = load_checkpoint(out)
    assert checkpoint.config.train.iterations == 5 and checkpoint.summary is None  # no test metrics


@pytest.mark.slow
def test_ctrl_c_during_a_long_meta_test_stops_train_at_once_and_keeps_the_checkpoint(tmp_path):
    """A real SIGINT while the meta-test runs (here: a test draw that stalls for ten minutes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAML_TUNE_")}
    env.update(MAML_TUNE_DEVICE="cpu", OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    args = _train_args(tmp_path, "import time; time.sleep(600)")
    train = subprocess.Popen(
        [MAML_TUNE, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "checkpoint.json").exists(), "no checkpoint before the meta-test"
        time.sleep(1)  # inside the stalled draw
        train.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        _, stderr = train.communicate(timeout=30)
    finally:
        train.kill()
    assert time.monotonic() - stopped < 10
    assert train.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted during the meta-test" in errors[0], stderr
    assert "Traceback" not in stderr
    assert load_checkpoint(out).summary is None
