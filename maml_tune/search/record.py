"""What a trial records in its Optuna user attributes, as one typed record.

The objective writes these attributes while a trial runs (:func:`write`, one key at a
time, so a trial cut short keeps what it had); results, recovery, the CLI and the
dashboard read them back with :meth:`TrialAttrs.of`. The field names *are* the stored keys:
renaming one is a change of the stored study format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _attr(default: Any, doc: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"doc": doc}, **kwargs)


@dataclass(frozen=True)
class TrialAttrs:
    """The user attributes of one trial; a missing attribute reads as its default."""

    config: dict[str, Any] | None = _attr(
        None, "the full resolved RunConfig (dict, RunConfig.from_dict inverts it)"
    )
    metrics: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": "val_/test_ loss, accuracy (classification) with _ci95 95% half-widths, loss_before "
            "values, _query_norm (how query sets were normalised), adaptation_cost, adaptation_time"
        },
    )
    val_history: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={
            "doc": "[{iteration, loss_after, loss_after_ci95, accuracy_after?, …}] at every validation"
        },
    )
    n_params: int | None = _attr(None, "meta-parameter count (network plus learned inner rates)")
    n_adapted_params: int | None = _attr(None, "parameters changed by the inner loop")
    wall_seconds: float | None = _attr(None, "trial wall time (training + validation + test evaluation)")
    train_seconds: float | None = _attr(None, "time spent in meta-training steps")
    tasks_per_sec: float | None = _attr(None, "meta-training throughput")
    peak_gpu_mb: float | None = _attr(
        None, "peak CUDA memory allocated during meta-training and validation, MiB (only on a CUDA device)"
    )
    iterations_done: int | None = _attr(None, "meta-iterations completed (less than the budget when pruned)")
    device: str | None = _attr(None, "torch device the trial ran on")
    version: str | None = _attr(None, "maml-tune version")
    worker: int | None = _attr(None, "index of the worker process on its host")
    process: dict[str, Any] | None = _attr(
        None,
        "{host, pid, pid_ns} of the worker process (a RUNNING trial whose process is gone is failed and "
        "retried by the next search)",
    )
    checkpoint: str | None = _attr(
        None, "checkpoint directory (kept only while the trial is in the study's top-k)"
    )
    baseline: bool = _attr(False, "true for the enqueued literature configuration")
    reason: str | None = _attr(
        None,
        "why a trial was pruned or failed (divergence, pruner, invalid config, out of memory, "
        "interrupt, error)",
    )

    @classmethod
    def from_user_attrs(
        cls, user_attrs: Mapping[str, Any] | None, system_attrs: Mapping[str, Any] | None = None
    ) -> TrialAttrs:
        """Read stored attributes; keys this version does not know are ignored.

        ``reason`` falls back to Optuna's own ``fail_reason`` system attribute (set when a
        trial failed before the objective could record one).
        """
        attrs = dict(user_attrs or {})
        known = {k: attrs[k] for k in FIELDS if attrs.get(k) is not None}
        if "reason" not in known and (system_attrs or {}).get("fail_reason"):
            known["reason"] = system_attrs["fail_reason"]
        if "baseline" in known:
            known["baseline"] = bool(known["baseline"])
        return cls(**known)

    @classmethod
    def of(cls, trial: Any) -> TrialAttrs:
        """The record of ``trial`` (a FrozenTrial, or anything with ``user_attrs`` and ``system_attrs``)."""
        return cls.from_user_attrs(trial.user_attrs, getattr(trial, "system_attrs", None))

    def to_user_attrs(self) -> dict[str, Any]:
        """The attributes that differ from their defaults, as Optuna stores them."""
        defaults = TrialAttrs()
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) != getattr(defaults, k)}


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialAttrs))
USER_ATTRS: dict[str, str] = {f.name: f.metadata["doc"] for f in dataclasses.fields(TrialAttrs)}
"""Every user attribute a trial may record, with what it holds (``reason`` only when pruned or failed)."""


def write(set_attr: Callable[[str, Any], None], **values: Any) -> None:
    """Record ``values`` through ``set_attr(key, value)`` (e.g. ``trial.set_user_attr``).

    Only :class:`TrialAttrs` fields may be written, so a key cannot drift from its readers.
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TypeError(f"not a trial attribute: {', '.join(unknown)}")
    for key, value in values.items():
        set_attr(key, value)
