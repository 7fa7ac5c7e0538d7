"""Creating or resuming a study, and enqueueing the family's baseline trial.

Called by :func:`maml_tune.search.runner.run_search` before any trial runs. A resumed study
must have been created from a compatible spec (same family and options, space, fixed
settings, budget and objective), recorded in the study user attribute ``maml_tune``;
otherwise a :class:`StudyError` asks for a new name.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import optuna

from maml_tune import __version__
from maml_tune.errors import StudyError
from maml_tune.search import results
from maml_tune.search.objective import baseline_params
from maml_tune.search.record import TrialAttrs
from maml_tune.search.spec import StudySpec
from maml_tune.search.storage import STUDY_ENV, mask_url


def quiet_optuna() -> None:
    """Silence Optuna's logging (unless ``MAML_TUNE_OPTUNA_LOG`` is set) and its experimental warnings."""
    if not os.environ.get("MAML_TUNE_OPTUNA_LOG"):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def resolve_study_name(spec: StudySpec, explicit: str | None = None) -> str:
    return explicit or os.environ.get(STUDY_ENV) or spec.study.name


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


MARKER_WAIT_S = 10.0
"""How long a search waits for the maml-tune marker of an empty study another process has
just created (Optuna creates the study first; its creator writes the marker right after)."""


def _marker(study: Any) -> dict[str, Any] | None:
    """The study's maml-tune attribute; for a study with no trials yet, waits for it a while."""
    deadline = time.monotonic() + MARKER_WAIT_S
    while True:
        attrs = study.user_attrs.get(results.STUDY_ATTR)
        if attrs or study.get_trials(deepcopy=False) or time.monotonic() > deadline:
            return attrs
        time.sleep(0.1)


def create_or_resume(spec: StudySpec, storage: Any, study_name: str, *, sampler=None, pruner=None):
    """The study ``study_name``: created with ``spec``'s directions, or loaded after a compatibility check."""
    quiet_optuna()
    fingerprint = spec.fingerprint()
    names = set(optuna.get_all_study_names(storage))
    if study_name in names:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        attrs = _marker(study)
        where = mask_url(str(storage.url))
        if not attrs or "fingerprint" not in attrs:
            raise StudyError(
                f"study {study_name!r} in {where} was not created by maml-tune; choose another --study-name"
            )
        diff = _differences(attrs["fingerprint"], fingerprint)
        if diff:
            raise StudyError(
                f"study {study_name!r} in {where} was created from an incompatible spec "
                f"({', '.join(diff)} differ); resume it with its original spec, or start a new study "
                f"with --study-name NEW"
            )
        return study, False
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=list(spec.objective.directions),
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker or machine created it meanwhile
        return create_or_resume(spec, storage, study_name, sampler=sampler, pruner=pruner)
    study.set_user_attr(
        results.STUDY_ATTR,
        {
            "fingerprint": fingerprint,
            "spec": spec.to_dict(),
            "version": __version__,
        },
    )
    study.set_metric_names(list(spec.objective.metrics))
    return study, True


def enqueue_baseline(study: Any, spec: StudySpec, family: Any) -> dict[str, Any] | None:
    """Enqueue the family's literature configuration once (``baseline`` user attribute)."""
    if any(TrialAttrs.of(t).baseline for t in study.get_trials(deepcopy=False)):
        return None
    params = baseline_params(spec, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enqueue_trial is experimental
        study.enqueue_trial(
            params, user_attrs=TrialAttrs(baseline=True).to_user_attrs(), skip_if_exists=False
        )
    return params
