"""Reading a study for the dashboard: incrementally, read-only, without blocking the workers.

Optuna's public ``study.get_trials()`` reloads every trial. :class:`SqlSource` instead reads
Optuna's own tables (``trials``, ``trial_values``, ``trial_params``, …) with SQLAlchemy Core
and, on each :meth:`~SqlSource.refresh`, fetches only

* trials it has not seen yet (``trial_id`` above the highest seen), and
* trials it last saw unfinished (RUNNING or WAITING), since only those can still change.

User attributes, system attributes and intermediate values are fetched on demand, for the
few trials a panel shows (:meth:`~SqlSource.details`), and cached once a trial is finished.

The dashboard never writes: SQLite connections are opened with ``PRAGMA query_only`` and each
refresh is a handful of short SELECTs (in WAL mode, which the search enables, readers never
block writers). Any Optuna RDB URL works (SQLite, PostgreSQL, MySQL). Should the tables not
match the installed Optuna's schema, :func:`open_source` falls back to :class:`OptunaSource`,
which uses the public API (and reloads everything).

This module returns plain data and never prints.
"""

from __future__ import annotations

from maml_tune.dashboard._optuna_source import OptunaSource
from maml_tune.dashboard._records import (
    STATES,
    UNFINISHED,
    RefreshStats,
    StudyInfo,
    TrialRecord,
    finite,
    utcnow,
)
from maml_tune.dashboard._source_base import StudySource
from maml_tune.dashboard._sql import READ_TIMEOUT_S, SqlSource, make_engine, overview
from maml_tune.errors import StorageError, StudyError
from maml_tune.search.storage import mask_url, normalize_url, storage_errors, storage_url

__all__ = [
    "READ_TIMEOUT_S",
    "STATES",
    "UNFINISHED",
    "OptunaSource",
    "RefreshStats",
    "SqlSource",
    "StudyInfo",
    "StudySource",
    "TrialRecord",
    "finite",
    "make_engine",
    "open_source",
    "overview",
    "utcnow",
]


def open_source(url: str | None, study: str | None = None, *, fallback: bool = True) -> StudySource:
    """An incremental :class:`SqlSource`, or the :class:`OptunaSource` fallback when the tables
    cannot be read directly (``fallback=False`` raises instead)."""
    import sqlalchemy.exc

    resolved = normalize_url(storage_url(url))
    engine = make_engine(url)
    try:
        source = SqlSource(url, study, engine=engine)
        source.refresh()
        return source
    except (StudyError, StorageError):
        engine.dispose()
        raise
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, AttributeError, KeyError, LookupError) as exc:
        if not _has_studies_table(engine):
            engine.dispose()
            raise StudyError(f"no studies in {mask_url(resolved)} (not an Optuna study database)") from None
        engine.dispose()
        if fallback and _schema_mismatch(exc):
            return OptunaSource(url, study)
        with storage_errors(resolved, "read"):
            raise
        raise  # pragma: no cover


def _has_studies_table(engine) -> bool:
    import sqlalchemy as sa

    try:
        return sa.inspect(engine).has_table("studies")
    except Exception:
        return True


_SCHEMA_WORDS = ("no such table", "no such column", "doesn't exist", "does not exist", "unknown column")


def _schema_mismatch(exc: BaseException) -> bool:
    """Whether ``exc`` says the tables differ from the installed Optuna's (not a connection problem)."""
    import sqlalchemy.exc

    if isinstance(exc, (ImportError, AttributeError, KeyError, LookupError)):
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and any(w in text for w in _SCHEMA_WORDS)
