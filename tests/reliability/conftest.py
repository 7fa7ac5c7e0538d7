"""Fixtures of the reliability tests: an isolated folder and environment, SQLite and PostgreSQL URLs."""

from __future__ import annotations

import pytest
from reliability_helpers import cli_env, drop_study, postgres_or_skip, unique_name


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MAML_TUNE_STORAGE", "MAML_TUNE_STUDY", "MAML_TUNE_DEVICE", "MAML_TUNE_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path / "no-plugins"))
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def postgres_url() -> str:
    return postgres_or_skip()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request, tmp_path):
    """``(url, study_name)`` on SQLite and on PostgreSQL (the PostgreSQL study is deleted afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}", "rel"
        return
    url = postgres_or_skip()
    name = unique_name()
    yield url, name
    drop_study(url, name)
