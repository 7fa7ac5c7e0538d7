"""``maml-tune train`` keeps what it meta-trained when the meta-test after it fails or is stopped."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.core.checkpoint import load_checkpoint

# The meta-test draws test tasks in chunks; the pre-flight check before training draws one.
FAILING_TEST = """
from maml_tune.families.sinusoid import Sinusoid


class Failingtest(Sinusoid):
    name = "failingtest"

    def sample(self, split, n_tasks, generator, device):
        if split == "test" and n_tasks > 1:
            raise {error}
        return super().sample(split, n_tasks, generator, device)
"""


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
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "failingtest.py").write_text(FAILING_TEST.replace("{error}", error))
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(plugins))
    monkeypatch.setenv("MAML_TUNE_DEVICE", "cpu")
    out = tmp_path / "run"
    done = CliRunner().invoke(
        app,
        [
            "--quiet",
            "train",
            "--family",
            "failingtest",
            "--iterations",
            "5",
            "--set",
            "arch.width=8",
            "--out",
            str(out),
        ],
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.exit_code == code, done.output
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert why in lines[0] and "during the meta-test" in lines[0] and f"maml-tune evaluate {out}" in lines[0]
    checkpoint = load_checkpoint(out)
    assert checkpoint.config.train.iterations == 5 and checkpoint.summary is None  # no test metrics
