"""``maml-tune plot`` writes Optuna's standard figures (plotly HTML, matplotlib PNG)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app

pytest.importorskip("plotly")
pytest.importorskip("matplotlib")


@pytest.mark.parametrize(
    "study,kind,suffix",
    [
        ("demo", "history", "html"),
        ("demo", "importance", "png"),
        ("demo", "parallel", "html"),
        ("demo", "slice", "png"),
        ("demo", "intermediate", "html"),
        ("pareto", "pareto", "png"),
        ("pareto", "history", "html"),
    ],
)
def test_plot_writes_the_file(study_db, tmp_path, study, kind, suffix):
    out = tmp_path / f"{study}-{kind}.{suffix}"
    result = CliRunner().invoke(
        app, ["plot", study, "--kind", kind, "--out", str(out)], env={"MAML_TUNE_STORAGE": study_db}
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    if suffix == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    else:
        assert b"plotly" in data and len(data) > 100_000


def test_plot_errors_are_one_line(study_db, tmp_path):
    env = {"MAML_TUNE_STORAGE": study_db}
    runner = CliRunner()
    single = runner.invoke(
        app, ["plot", "demo", "--kind", "pareto", "--out", str(tmp_path / "p.html")], env=env
    )
    assert single.exit_code == 1 and "needs several" in single.output
    bad = runner.invoke(app, ["plot", "demo", "--kind", "history", "--out", str(tmp_path / "p.txt")], env=env)
    assert bad.exit_code == 2 and ".html, .png" in bad.output
