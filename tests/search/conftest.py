"""Fixtures for the search tests: a tiny sinusoid spec and a temporary SQLite study database."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_SPEC = """
[family]
name = "sinusoid"

[space]
"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }
"train.meta_lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }

[fixed]
"arch.depth" = 1
"arch.width" = 20
"train.meta_batch" = 5
"train.seed" = 0

[budget]
iterations = 30
val_interval = 10
val_tasks = 20
eval_tasks = 20

[study]
name = "tiny"
sampler = "random"
pruner = "none"
seed = 0
n_trials = 3
top_k_checkpoints = 1
inherit_space = false
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run every test in its own folder (studies/, checkpoints) with no inherited study settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("MAML_TUNE_STORAGE", "MAML_TUNE_STUDY", "MAML_TUNE_DEVICE", "MAML_TUNE_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path / "no-plugins"))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def registry():
    from maml_tune.families.registry import Registry

    return Registry()


@pytest.fixture
def write_spec(tmp_path):
    """``write_spec(text=TINY_SPEC, name="spec.toml", extra="")`` → path of a spec file."""

    def write(text: str = TINY_SPEC, name: str = "spec.toml", extra: str = "") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
        return path

    return write


@pytest.fixture
def storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def tiny_text() -> str:
    return TINY_SPEC
