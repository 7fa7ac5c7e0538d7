"""The study database: Optuna's RDB storage (its own schema only), samplers and pruners.

Any SQLAlchemy URL works; the default is an SQLite file under ``studies/`` relative to
the working directory. ``postgresql://`` and ``mysql://`` URLs are given the drivers
maml-tune installs (psycopg 3, PyMySQL). Heartbeats are on, so a trial whose worker dies
is marked failed (and retried) instead of lingering as RUNNING. Every message shows the
URL with its password masked (:func:`mask_url`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maml_tune.errors import ConfigError, StorageError
from maml_tune.search.catalog import PRUNERS, SAMPLERS

STORAGE_ENV = "MAML_TUNE_STORAGE"
STUDY_ENV = "MAML_TUNE_STUDY"
DEFAULT_STORAGE = "sqlite:///studies/maml-tune.db"
SQLITE_TIMEOUT_S = 120
HEARTBEAT_ENV, GRACE_ENV = "MAML_TUNE_HEARTBEAT_INTERVAL", "MAML_TUNE_GRACE_PERIOD"
HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S = 10, 60
"""Seconds between a running trial's heartbeats, and of silence before it counts as lost
(the environment variables above override them: :func:`heartbeat_seconds`)."""
MAX_RETRY = 2
STALE_REASON = "its worker stopped sending heartbeats (killed or lost)"
LIBPQ_TIMEOUTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""PostgreSQL connection settings (libpq, seconds; the last in ms): a host cut off from the
database notices within about 30 s, instead of TCP's 15 minutes, and its worker retries."""
SCHEMA_RACE_RETRIES = 5
_SCHEMA_RACE_SIGNS = ("already exists", "UNIQUE constraint failed: alembic_version", "duplicate key value")


def heartbeat_seconds() -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds from the environment; a value that
    is not a whole number >= 1 is a :class:`ConfigError` naming the variable."""
    values = []
    for name, default in ((HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S), (GRACE_ENV, GRACE_PERIOD_S)):
        raw = os.environ.get(name, str(default)).strip()
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{name}: expected a whole number of seconds >= 1, got {raw!r}")
        values.append(int(raw))
    return values[0], values[1]


_URL_PASSWORD = re.compile(
    # Everything between the user's ":" and the last "@" before the host: a password may
    # hold "/", "@", ":", "%", "#" or "?" and must still be masked whole.
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:?#]*:)(?P<password>.*)(?P<tail>@[^@?]*(?:\?.*)?)$",
    re.DOTALL,
)


def mask_url(url: str | None) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db`` (also in query strings)."""
    if not url:
        return str(url)
    text = str(url)
    match = _URL_PASSWORD.match(text)
    if match and match.group("password"):
        text = f"{match.group('head')}***{match.group('tail')}"
    return re.sub(r"(?i)([?&](?:password|passwd|pwd)=)[^&]*", r"\1***", text)


def _check_password(url: str) -> None:
    """Refuse a URL whose password SQLAlchemy reads otherwise than :func:`mask_url` masks it: an
    unencoded "@" moves the rest of the password into the host, which drivers print in errors."""
    from sqlalchemy.engine import make_url

    match = _URL_PASSWORD.match(url)
    if not match or not match.group("password"):
        return
    try:
        parsed = make_url(url).password
    except Exception:  # an unparsable URL: storage_errors reports it
        return
    if parsed != urllib.parse.unquote(match.group("password")):
        raise StorageError(
            f"the password in storage URL {mask_url(url)} holds an unencoded '@' (or a '/' before one):"
            " percent-encode it (@ as %40, / as %2F, : as %3A)"
        )


def storage_url(explicit: str | None = None) -> str:
    """``explicit``, else ``$MAML_TUNE_STORAGE``, else the SQLite default (relative to the CWD)."""
    return explicit or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def normalize_url(url: str) -> str:
    """Pick the installed drivers for bare ``postgresql://`` / ``mysql://`` URLs."""
    for bare, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("mysql://", "mysql+pymysql://"),
        ("mariadb://", "mysql+pymysql://"),
    ):
        if url.startswith(bare):
            return driver + url[len(bare) :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite ``url``; None for other backends and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url[len("sqlite:///") :].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw)


def no_database(url: str, path: Path) -> StorageError:
    """The error for an SQLite study database file that does not exist; a relative ``url``
    is resolved against the current folder, and the message says so."""
    where = str(path.resolve())
    if not path.is_absolute():
        where += f" ({mask_url(url)} is relative to the current folder)"
    return StorageError(f"no study database at {where}: run maml-tune search first, or pass --storage")


def _prepare_sqlite(path: Path, url: str) -> None:
    """Create the folder and switch the file to WAL journaling (persistent; readers do not block)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open study database {mask_url(url)}: {exc}") from None


def engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4, "pool_recycle": 1800}
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")):
        kwargs["connect_args"] = LIBPQ_TIMEOUTS
    return kwargs


def open_storage(url: str | None = None, *, heartbeat: bool = True, create: bool = True):
    """An Optuna ``RDBStorage`` for ``url`` (see :func:`storage_url`).

    ``heartbeat``: record a heartbeat for running trials and fail (then retry, up to
    ``MAX_RETRY`` times) trials whose worker stopped beating. ``create``: create the
    tables when missing (read-only commands pass ``False`` for a clear "no such study
    database" error). Raises :class:`StorageError` (with the password masked).
    """
    import optuna

    url = normalize_url(storage_url(url))
    _check_password(url)
    interval, grace = heartbeat_seconds() if heartbeat else (0, 0)  # before anything is created
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise no_database(url, path)
        _prepare_sqlite(path, url)
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs(url)}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if heartbeat:
        kwargs.update(
            heartbeat_interval=interval,
            grace_period=max(grace, 2 * interval),
            heartbeat_stale_trial_callback=retry_callback(MAX_RETRY),
        )
    attempt = 0
    while True:
        try:
            with storage_errors(url, "reach"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _storage_class()(url, **kwargs)
        except RuntimeError as exc:  # schema version mismatch and the like
            raise StorageError(f"cannot use study database {mask_url(url)}: {_first_line(exc)}") from None
        except StorageError as exc:
            # Processes that start together on a new database race to create its tables; the
            # losers see them half made. They exist a moment later: try again.
            if attempt == SCHEMA_RACE_RETRIES or not any(sign in str(exc) for sign in _SCHEMA_RACE_SIGNS):
                raise
            attempt += 1
            time.sleep(0.2 * attempt + random.random() * 0.3)


@contextlib.contextmanager
def storage_errors(url: str, doing: str) -> Iterator[None]:
    """Turn the SQLAlchemy and driver errors raised inside into a one-line :class:`StorageError`
    (password masked): ``cannot {doing} study database URL: cause``."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"invalid storage URL {mask_url(url)}: {_first_line(exc)}") from None
    except ImportError:
        raise StorageError(
            f"no database driver for {mask_url(url)} (install maml-tune[postgres] or maml-tune[mysql])"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc  # the driver's own message, when there is one
        raise StorageError(f"cannot {doing} study database {mask_url(url)}: {_first_line(cause)}") from None
    except ValueError as exc:  # a URL SQLAlchemy parses but cannot use (a port that is no number)
        raise StorageError(f"invalid storage URL {mask_url(url)}: {_first_line(exc)}") from None


_STORAGE_CLASS: type | None = None


def _storage_class() -> type:
    """``RDBStorage`` whose heartbeat survives a lost connection (the next beat reconnects)."""
    global _STORAGE_CLASS
    if _STORAGE_CLASS is None:
        import optuna

        class Storage(optuna.storages.RDBStorage):
            asked_trial_id: int | None = None
            """The last trial this storage created RUNNING (``study.ask``). A storage error
            after the insert, before the objective runs, would otherwise leave it RUNNING
            with nobody knowing its id (see ``worker.run_worker``)."""

            def _create_new_trial(self, study_id: int, template_trial=None):
                # Optuna's cache in front of this storage calls the private _create_new_trial,
                # not create_new_trial (tests/reliability/test_trial_faults.py pins it).
                trial = super()._create_new_trial(study_id, template_trial)
                if template_trial is None:
                    self.asked_trial_id = trial._trial_id
                return trial

            def _get_stale_trial_ids(self, study_id: int) -> list[int]:
                # Optuna fails these right after asking, and a failed trial takes no more
                # attributes: record why while they are still RUNNING.
                from maml_tune.search.record import write

                stale = super()._get_stale_trial_ids(study_id)
                for trial_id in stale:
                    try:
                        write(functools.partial(self.set_trial_user_attr, trial_id), reason=STALE_REASON)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        pass  # another worker failed it first
                return stale

            def record_heartbeat(self, trial_id: int) -> None:
                # A failed beat would end Optuna's heartbeat thread and let the trial go stale
                # while it still runs; missing one beat is harmless within the grace period.
                try:
                    super().record_heartbeat(trial_id)
                except Exception:
                    pass

        _STORAGE_CLASS = Storage
    return _STORAGE_CLASS


RETRY_KEPT_USER_ATTRS = ("baseline",)
"""User attributes a retried trial inherits (the others, e.g. ``reason``, belong to the failed run)."""

RETRY_CLAIM_TIMEOUT_S = 60.0
"""A claim to re-queue a failed trial whose process is not known to be gone (another host) is
taken over once it is this old without the retry having appeared (inserting one takes ms)."""


def gone_reason(identity: dict[str, Any]) -> str:
    """The reason of a trial failed because its worker process (on this host) no longer exists."""
    return f"its worker process {identity['pid']} on {identity['host']} is gone (killed)"


_GONE = re.compile(r"its worker process \d+ on .* is gone \(killed\)")


def lost_worker(reason: str | None) -> bool:
    """Whether a failed trial's ``reason`` says its worker was lost (the trial itself did not fail)."""
    return reason == STALE_REASON or bool(reason and _GONE.fullmatch(reason))


def requeue(study: Any, trial: Any, max_retry: int | None = MAX_RETRY) -> bool:
    """Re-queue failed ``trial`` as a WAITING trial with the same parameters; True if this call did.

    Not when it has been run ``max_retry`` times again already (None: no limit), nor when any
    process, this one included, re-queued it already: the re-queue is claimed first by one
    atomic insert, so two searches recovering the same trial never run it twice. The retry
    records ``failed_trial`` (the first failed trial) and ``retry_history`` in its system
    attributes, as Optuna's ``RetryHeartbeatStaleTrialCallback`` does, and keeps only the
    user attributes in :data:`RETRY_KEPT_USER_ATTRS`.
    """
    import optuna

    system_attrs = {"failed_trial": trial.number, **trial.system_attrs}
    system_attrs["retry_history"] = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(system_attrs["retry_history"]) > max_retry:
        return False
    if not _claim_retry(study, trial.number):
        return False
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k in RETRY_KEPT_USER_ATTRS},
            system_attrs=system_attrs,
        )
    )
    return True


def retry_callback(max_retry: int | None = MAX_RETRY) -> Callable[[Any, Any], None]:
    """:func:`requeue` as Optuna's heartbeat callback for the trials it finds stale."""

    def callback(study: Any, trial: Any) -> None:
        requeue(study, trial, max_retry)

    return callback


def _claim_retry(study: Any, number: int) -> bool:
    """Claim, for this process, the re-queue of failed trial ``number`` of ``study``.

    The claim is a study system attribute whose key is unique per study, inserted (never
    upserted) so that exactly one of several racing processes succeeds. A claim left by a
    process killed before it re-queued the trial (no retry exists) is taken over, by a
    compare-and-set on the claim's value, once its process is gone or it is older than
    :data:`RETRY_CLAIM_TIMEOUT_S`.
    """
    import json

    import sqlalchemy

    from maml_tune.search.identity import process_alive, process_identity

    backend = getattr(study._storage, "_backend", study._storage)
    engine = getattr(backend, "engine", None)
    if engine is None:  # not a database (an in-memory study): one process
        return True
    table = sqlalchemy.table(
        "study_system_attributes",
        sqlalchemy.column("study_id"),
        sqlalchemy.column("key"),
        sqlalchemy.column("value_json"),
    )
    key = f"maml_tune:retry_claim:{number}"
    mine = json.dumps({"process": process_identity(), "time": time.time()})
    where = (table.c.study_id == study._study_id) & (table.c.key == key)
    try:
        with engine.begin() as connection:
            connection.execute(table.insert().values(study_id=study._study_id, key=key, value_json=mine))
        return True
    except sqlalchemy.exc.IntegrityError:
        pass  # claimed before: by a process that re-queued it, or died first
    if any(number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False)):
        return False
    with engine.begin() as connection:
        held = connection.execute(sqlalchemy.select(table.c.value_json).where(where)).scalar_one_or_none()
        claim = json.loads(held) if held else {}
        if process_alive(claim.get("process")) and time.time() - claim.get("time", 0) < RETRY_CLAIM_TIMEOUT_S:
            return False
        unchanged = where & (table.c.value_json == held)
        return connection.execute(table.update().where(unchanged).values(value_json=mine)).rowcount == 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return mask_url(text.splitlines()[0]) if text else type(exc).__name__


# ----------------------------------------------------------------------------- samplers, pruners


def optuna_class(kind: str, name: str) -> type:
    """The Optuna class behind sampler or pruner ``name`` (as spelled in specs)."""
    import optuna

    table = SAMPLERS if kind == "sampler" else PRUNERS
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r} (expected one of: {', '.join(table)})")
    module = optuna.samplers if kind == "sampler" else optuna.pruners
    return getattr(module, table[name].optuna_class)


def make_sampler(name: str, seed: int | None, options: dict[str, Any] | None = None, worker: int = 0):
    """A sampler instance; each worker gets its own seed (``seed + worker``) ."""
    import importlib.util

    package = SAMPLERS[name].needs if name in SAMPLERS else None
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"sampler {name!r} needs the {package} package: pip install {package}")
    kwargs = dict(options or {})
    if seed is not None:
        kwargs["seed"] = seed + worker
    return _instantiate("sampler", name, kwargs)


def make_pruner(name: str, options: dict[str, Any] | None, iterations: int, val_interval: int):
    """A pruner instance; Hyperband/SHA resources are in meta-iterations unless the spec says otherwise."""
    kwargs = dict(options or {})
    if name == "hyperband":
        kwargs.setdefault("min_resource", val_interval)
        kwargs.setdefault("max_resource", max(iterations, val_interval))
    elif name == "sha":
        kwargs.setdefault("min_resource", val_interval)
    return _instantiate("pruner", name, kwargs)


def _instantiate(kind: str, name: str, kwargs: dict[str, Any]):
    """``kind`` ``name`` built with ``kwargs``; bad options are a :class:`ConfigError`.

    Experimental samplers and pruners are asked for by name in a spec, so Optuna's
    warning that they are experimental says nothing the user does not know."""
    import optuna

    cls = optuna_class(kind, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{kind} {name!r}: invalid options: {exc}") from None
