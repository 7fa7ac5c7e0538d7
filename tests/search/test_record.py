"""The typed trial record: what the objective writes is what results, CLI and dashboard read."""

from __future__ import annotations

import pytest

from maml_tune.search.record import FIELDS, USER_ATTRS, TrialAttrs, write

EVERY_FIELD = TrialAttrs(
    config={"algo": {"inner_lr": 0.01}},
    metrics={"val_loss": 0.5, "val_loss_ci95": 0.1},
    val_history=[{"iteration": 10, "loss_after": 0.5}],
    n_params=1601,
    n_adapted_params=1601,
    wall_seconds=3.5,
    train_seconds=2.0,
    tasks_per_sec=400.0,
    peak_gpu_mb=12.5,
    iterations_done=20,
    device="cpu",
    version="0.1.0",
    worker=1,
    process={"host": "h", "pid": 7, "pid_ns": None},
    checkpoint="/ckpts/s/trial-3",
    baseline=True,
    reason="diverged: test loss became nan",
)


def test_every_field_round_trips_through_user_attributes():
    stored = EVERY_FIELD.to_user_attrs()
    assert set(stored) == set(FIELDS) == set(USER_ATTRS)
    assert TrialAttrs.from_user_attrs(stored) == EVERY_FIELD


def test_defaults_are_not_stored_and_missing_keys_read_as_defaults():
    assert TrialAttrs().to_user_attrs() == {}
    assert TrialAttrs(baseline=True).to_user_attrs() == {"baseline": True}
    record = TrialAttrs.from_user_attrs({"n_params": 5, "someone_elses_key": 1})
    assert record == TrialAttrs(n_params=5)
    assert TrialAttrs.from_user_attrs(None) == TrialAttrs()


def test_reason_falls_back_to_optunas_fail_reason():
    assert TrialAttrs.from_user_attrs({}, {"fail_reason": "boom"}).reason == "boom"
    assert TrialAttrs.from_user_attrs({"reason": "ours"}, {"fail_reason": "boom"}).reason == "ours"


def test_write_refuses_a_key_that_is_not_a_field():
    stored = {}
    write(stored.__setitem__, reason="r", n_params=3)
    assert stored == {"reason": "r", "n_params": 3}
    with pytest.raises(TypeError, match="not a trial attribute: reasons"):
        write(stored.__setitem__, reasons="typo")
    assert stored == {"reason": "r", "n_params": 3}
