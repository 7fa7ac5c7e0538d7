"""Fixtures: real study databases made by the search code once per session (see studies.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import studies  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MAML_TUNE_STORAGE", "MAML_TUNE_STUDY", "MAML_TUNE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path / "no-plugins"))


@pytest.fixture(scope="session")
def study_db(tmp_path_factory) -> str:
    """A database with study ``demo`` (single objective: complete, pruned, failed, running, waiting
    trials) and study ``pareto`` (two objectives)."""
    folder = tmp_path_factory.mktemp("dashboard-db")
    url = f"sqlite:///{folder / 'studies.db'}"
    studies.build_single(folder, url)
    studies.build_multi(folder, url)
    return url
