"""Retrying after a lost study database, with exponential pauses.

Every retry in the search goes through :func:`retry`: the worker loop (one trial per call),
the runner's final reads and the closing of a trial a lost connection interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy.exc

from maml_tune.search.storage import mask_url

T = TypeVar("T")

STORAGE_RETRIES = 6
"""Consecutive storage errors survived (pausing 1, 2, 4, … s) before giving up."""
MAX_PAUSE_S = 16.0


def is_storage_error(exc: BaseException | None) -> bool:
    """A lost or failing study database, also when Optuna's clean-up masked it with another
    error (its ``_run_trial`` can end in an ``AssertionError`` raised while handling one)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def storage_message(exc: BaseException) -> str:
    """The database driver's first line for a storage error, with any password masked."""
    while not isinstance(exc, sqlalchemy.exc.SQLAlchemyError) and (exc.__cause__ or exc.__context__):
        exc = exc.__cause__ or exc.__context__
    cause = exc.__cause__ or exc
    orig = getattr(cause, "orig", None) or cause
    text = str(orig).strip()
    return mask_url(text.splitlines()[0] if text else type(orig).__name__)


def retry(
    call: Callable[[], T],
    *,
    retries: int = STORAGE_RETRIES,
    first_pause: float = 1.0,
    retry_if: Callable[[BaseException], bool] = is_storage_error,
    before_pause: Callable[[Exception], None] | None = None,
    after_pause: Callable[[Exception], None] | None = None,
) -> T:
    """``call()``, called again up to ``retries`` times when it raises an error ``retry_if``
    accepts, pausing ``first_pause``, twice that, … (at most ``MAX_PAUSE_S``) in between.

    ``before_pause`` and ``after_pause`` see each retried error (to report it, or to tidy up
    once the database may be back); the last error is raised as it is.
    """
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if attempt >= retries or not retry_if(exc):
                raise
            if before_pause is not None:
                before_pause(exc)
            time.sleep(min(first_pause * 2.0**attempt, MAX_PAUSE_S))
            attempt += 1
            if after_pause is not None:
                after_pause(exc)
