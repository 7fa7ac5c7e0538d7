"""Faults inside one trial: diverging losses, CUDA out-of-memory, an unwritable or full
checkpoint folder. Each fails (or prunes) that trial with its reason; the study goes on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from reliability_helpers import write_spec

from maml_tune.core.checkpoint import load_checkpoint, save_checkpoint
from maml_tune.errors import CheckpointError
from maml_tune.families.registry import Registry
from maml_tune.search import objective as objective_module
from maml_tune.search.runner import SearchOptions, create_or_resume, run_search
from maml_tune.search.spec import load_spec
from maml_tune.search.storage import open_storage

pytestmark = pytest.mark.slow

OOM_PLUGIN = '''
import torch

from maml_tune.families.sinusoid import Sinusoid


class Oom(Sinusoid):
    """Sinusoid whose first ``sample`` call runs out of (simulated) CUDA memory."""

    name = "oom"
    calls = 0

    def sample(self, split, n_tasks, generator, device):
        type(self).calls += 1
        if type(self).calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().sample(split, n_tasks, generator, device)
'''


def _spec(tmp_path, n_trials, **overrides):
    return load_spec(write_spec(tmp_path, iterations=10), Registry(), {"n_trials": n_trials, **overrides})


def _trials(url):
    return optuna.load_study(study_name="rel", storage=url).get_trials()


def test_nan_and_infinite_losses_end_the_trial_with_the_reason_stored(tmp_path, sqlite_url):
    spec = _spec(tmp_path, 3)
    study, _ = create_or_resume(spec, open_storage(sqlite_url), "rel")
    study.enqueue_trial({"algo.inner_lr": 1e4, "train.meta_lr": 1e-3})  # loss overflows to inf/nan
    study.enqueue_trial({"algo.inner_lr": 1e30, "train.meta_lr": 1e-3})
    result = run_search(
        spec, SearchOptions(storage=sqlite_url, device="cpu", checkpoint_root=str(tmp_path / "c"))
    )
    assert result.added == 3 and result.worker_errors == []
    trials = _trials(sqlite_url)
    for trial in trials[:2]:
        assert trial.state.name in ("PRUNED", "FAIL"), trial
        assert trial.user_attrs["reason"].startswith("diverged:"), trial.user_attrs
        assert any(word in trial.user_attrs["reason"] for word in ("nan", "inf", "more than")), (
            trial.user_attrs
        )
    assert trials[2].state.name == "COMPLETE"


def test_cuda_out_of_memory_fails_the_trial_frees_memory_and_the_worker_continues(
    tmp_path, sqlite_url, monkeypatch
):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "oom.py").write_text(OOM_PLUGIN)
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(plugins))
    freed = []
    real_free = objective_module._free_memory
    monkeypatch.setattr(
        objective_module, "_free_memory", lambda device: (freed.append(device), real_free(device))
    )
    spec = load_spec(write_spec(tmp_path, iterations=10), Registry(plugins), {"n_trials": 3, "family": "oom"})
    result = run_search(
        spec, SearchOptions(storage=sqlite_url, device="cpu", plugins_dir=str(plugins), checkpoint_root=None)
    )
    assert result.worker_errors == []
    trials = _trials(sqlite_url)
    assert len(trials) == 3 and trials[0].state.name == "FAIL"
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials[1:])  # the worker went on
    reason = trials[0].user_attrs["reason"]
    assert reason.startswith("out of memory on cpu") and "Tried to allocate 20.00 GiB" in reason
    assert freed == [torch.device("cpu")]


def _assert_checkpoint_failures(tmp_path, sqlite_url, root: Path, expected: str):
    spec = _spec(tmp_path, 2)
    result = run_search(spec, SearchOptions(storage=sqlite_url, device="cpu", checkpoint_root=str(root)))
    assert result.added == 2 and result.worker_errors == []  # the study went on
    for trial in _trials(sqlite_url):
        assert trial.state.name == "FAIL"
        reason = trial.user_attrs["reason"]
        assert reason.startswith("CheckpointError: cannot write checkpoint to") and expected in reason, reason
        assert "checkpoint" not in trial.user_attrs


def test_unwritable_checkpoint_folder_fails_the_trial_and_the_study_continues(tmp_path, sqlite_url):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the checkpoint folder's parent should be")
    _assert_checkpoint_failures(tmp_path, sqlite_url, blocker / "checkpoints", "Not a directory")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled up (needs root, as in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mount / "checkpoints").mkdir()
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_fails_the_trial_without_leaving_a_partial_checkpoint(tmp_path, sqlite_url, full_disk):
    _assert_checkpoint_failures(tmp_path, sqlite_url, full_disk / "checkpoints", "No space left on device")
    leftovers = [p for p in (full_disk / "checkpoints").rglob("*") if p.is_file()]
    assert leftovers == [], leftovers  # temporary files are removed, nothing half-written remains


def _learner_and_config():
    from maml_tune.core.trainer import build_learner

    family = Registry().create("sinusoid")
    config = family.run_config({"arch.width": 8, "arch.depth": 1})
    return build_learner(config, family, torch.device("cpu")), config


def test_a_crash_during_the_write_never_leaves_a_loadable_half_checkpoint(tmp_path, monkeypatch):
    learner, config = _learner_and_config()
    good = save_checkpoint(tmp_path / "ckpt", learner, config)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(good, learner, config)
    monkeypatch.undo()
    # the previous checkpoint is intact (written under temporary names that were removed)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    load_checkpoint(good)
    # a weights file cut short (e.g. copied from a crashed machine) is refused, not loaded
    weights = good / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(good)


def test_a_connection_lost_between_creating_a_trial_and_running_it_fails_that_trial(
    tmp_path, sqlite_url, monkeypatch
):
    """``study.ask`` inserts the trial, then reads it back: a lost connection in between used to
    leave it RUNNING forever, before the objective ever learnt its id."""
    import sqlalchemy

    real = optuna.trial.Trial.__init__
    calls = []

    def lose_the_first_read_back(self, study, trial_id):
        calls.append(trial_id)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        real(self, study, trial_id)

    monkeypatch.setattr(optuna.trial.Trial, "__init__", lose_the_first_read_back)
    spec = _spec(tmp_path, 2)
    result = run_search(spec, SearchOptions(storage=sqlite_url, device="cpu", checkpoint_root=None))
    assert result.worker_errors == []
    trials = _trials(sqlite_url)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # closed, not left RUNNING
    assert trials[0].user_attrs["reason"].startswith("lost the study database")
