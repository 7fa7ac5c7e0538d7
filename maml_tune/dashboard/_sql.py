"""The incremental SQL source: Optuna's own tables read with SQLAlchemy Core (see :mod:`.source`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from maml_tune.dashboard._records import STATES, RefreshStats, StudyInfo, TrialRecord
from maml_tune.dashboard._source_base import StudySource
from maml_tune.errors import StudyError
from maml_tune.search.results import STUDY_ATTR
from maml_tune.search.storage import (
    no_database,
    normalize_url,
    sqlite_path,
    storage_errors,
    storage_url,
)

READ_TIMEOUT_S = 10
_CHUNK = 500
"""Trial ids per ``IN (...)`` clause (below every backend's bound-parameter limit)."""


def _tables():
    from optuna.storages._rdb import models

    return models


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


def make_engine(url: str | None):
    """A read-only SQLAlchemy engine for the study database ``url`` (see :func:`storage_url`)."""
    import sqlalchemy

    url = normalize_url(storage_url(url))
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise no_database(url, path)
    kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": READ_TIMEOUT_S}}
    else:
        kwargs = {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 2, "pool_recycle": 1800}
    with storage_errors(url, "read"):
        engine = sqlalchemy.create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @sqlalchemy.event.listens_for(engine, "connect")
        def _read_only(dbapi_connection, _record):  # never write, whatever happens
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = 1")
            cursor.close()

    return engine


def _value(models, value: float | None, kind: Any) -> float:
    return models.TrialValueModel.stored_repr_to_value(value, kind)


def overview(url: str | None) -> list[dict[str, Any]]:
    """Every study of the database: name, family, directions, trials by state, best value, last activity.

    Aggregate queries only (a handful, whatever the number of trials).
    """
    import sqlalchemy as sa

    m = _tables()
    resolved = normalize_url(storage_url(url))
    engine = make_engine(url)
    studies_t, dirs_t = m.StudyModel.__table__, m.StudyDirectionModel.__table__
    trials_t, values_t = m.TrialModel.__table__, m.TrialValueModel.__table__
    attrs_t = m.StudyUserAttributeModel.__table__
    try:
        with storage_errors(resolved, "read"), engine.connect() as conn:
            studies = {r.study_id: r.study_name for r in conn.execute(sa.select(studies_t))}
            directions: dict[int, list[str]] = {}
            for r in conn.execute(sa.select(dirs_t).order_by(dirs_t.c.study_id, dirs_t.c.objective)):
                directions.setdefault(r.study_id, []).append(r.direction.name.lower())
            counts: dict[int, dict[str, int]] = {}
            for r in conn.execute(
                sa.select(trials_t.c.study_id, trials_t.c.state, sa.func.count()).group_by(
                    trials_t.c.study_id, trials_t.c.state
                )
            ):
                counts.setdefault(r[0], {})[r[1].name] = r[2]
            activity = {
                r[0]: max([d for d in r[1:] if d is not None], default=None)
                for r in conn.execute(
                    sa.select(
                        trials_t.c.study_id,
                        sa.func.max(trials_t.c.datetime_start),
                        sa.func.max(trials_t.c.datetime_complete),
                    ).group_by(trials_t.c.study_id)
                )
            }
            best: dict[int, dict[str, float]] = {}
            finite = m.TrialValueModel.TrialValueType.FINITE
            for r in conn.execute(
                sa.select(trials_t.c.study_id, sa.func.min(values_t.c.value), sa.func.max(values_t.c.value))
                .join(values_t, values_t.c.trial_id == trials_t.c.trial_id)
                .where(values_t.c.objective == 0, values_t.c.value_type == finite)
                .where(trials_t.c.state == _state_enum("COMPLETE"))
                .group_by(trials_t.c.study_id)
            ):
                best[r[0]] = {"minimize": r[1], "maximize": r[2]}
            families: dict[int, str | None] = {}
            for r in conn.execute(sa.select(attrs_t).where(attrs_t.c.key == STUDY_ATTR)):
                data = _json(r.value_json) or {}
                families[r.study_id] = (
                    (data.get("spec") or {}).get("family") if isinstance(data, dict) else None
                )
    finally:
        engine.dispose()
    rows = []
    for study_id, name in studies.items():
        c = counts.get(study_id, {})
        dirs = directions.get(study_id, ["minimize"])
        row_counts = {s.lower(): c.get(s, 0) for s in STATES}
        row_counts["total"] = sum(c.values())
        rows.append(
            {
                "name": name,
                "family": families.get(study_id),
                "directions": dirs,
                "counts": row_counts,
                "best_value": best.get(study_id, {}).get(dirs[0]) if len(dirs) == 1 else None,
                "last_activity": activity.get(study_id).isoformat() if activity.get(study_id) else None,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def _state_enum(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


class SqlSource(StudySource):
    """Incremental, read-only view of one study (see the module docstring)."""

    kind = "sql"

    def __init__(self, url: str | None, study: str | None = None, *, engine: Any = None):
        self.url = normalize_url(storage_url(url))
        self.engine = engine or make_engine(url)
        self.trials: dict[int, TrialRecord] = {}
        self._by_number: dict[int, TrialRecord] = {}
        self._watermark = 0
        self._dist_cache: dict[str, Any] = {}
        self.last = RefreshStats()
        self.info = self._load_info(study)

    # ------------------------------------------------------------------ basics
    def _guard(self):
        return storage_errors(self.url, "read")

    def close(self) -> None:
        self.engine.dispose()

    def by_number(self, number: int) -> TrialRecord | None:
        return self._by_number.get(number)

    def _load_info(self, name: str | None) -> StudyInfo:
        import sqlalchemy as sa

        m = _tables()
        studies_t = m.StudyModel.__table__
        with self.engine.connect() as conn:
            rows = {r.study_name: r.study_id for r in conn.execute(sa.select(studies_t))}
            if name is None:
                if len(rows) == 1:
                    name = next(iter(rows))
                elif not rows:
                    raise StudyError(f"no studies in {self.masked_url}")
                else:
                    raise StudyError(
                        f"several studies in {self.masked_url}; name one of: {', '.join(sorted(rows))}"
                    )
            if name not in rows:
                known = ", ".join(sorted(rows)) or "none"
                raise StudyError(f"no study named {name!r} in {self.masked_url} (studies: {known})")
            study_id = rows[name]
            dirs_t = m.StudyDirectionModel.__table__
            directions = [
                r.direction.name.lower()
                for r in conn.execute(
                    sa.select(dirs_t).where(dirs_t.c.study_id == study_id).order_by(dirs_t.c.objective)
                )
            ]
            attrs_t = m.StudyUserAttributeModel.__table__
            user_attrs = {
                r.key: _json(r.value_json)
                for r in conn.execute(sa.select(attrs_t).where(attrs_t.c.study_id == study_id))
            }
            sys_t = m.StudySystemAttributeModel.__table__
            metric = conn.execute(
                sa.select(sys_t.c.value_json).where(
                    sys_t.c.study_id == study_id, sys_t.c.key == "study:metric_names"
                )
            ).scalar()
        return StudyInfo(study_id, name, directions or ["minimize"], _json(metric), user_attrs)

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> RefreshStats:
        """Fetch new trials and re-fetch unfinished ones; returns how many were new or changed."""
        import sqlalchemy as sa

        started = time.perf_counter()
        m = _tables()
        trials_t = m.TrialModel.__table__
        sid = self.info.study_id
        pending = [t.trial_id for t in self.trials.values() if not t.finished]
        stats = RefreshStats()
        with self._guard(), self.engine.connect() as conn:
            columns = sa.select(
                trials_t.c.trial_id,
                trials_t.c.number,
                trials_t.c.state,
                trials_t.c.datetime_start,
                trials_t.c.datetime_complete,
            )
            where = trials_t.c.trial_id > self._watermark
            rows = list(conn.execute(columns.where(trials_t.c.study_id == sid, where)))
            for chunk in _chunks(pending):
                rows.extend(conn.execute(columns.where(trials_t.c.trial_id.in_(chunk))))
            if not rows:
                stats.seconds = time.perf_counter() - started
                self.last = stats
                return stats
            old_mark = self._watermark
            new_mark = max([old_mark] + [r.trial_id for r in rows])
            touched: dict[int, TrialRecord] = {}
            for r in rows:
                record = self.trials.get(r.trial_id)
                state = r.state.name
                if record is None:
                    record = TrialRecord(r.trial_id, r.number, state)
                    self.trials[r.trial_id] = record
                    self._by_number[r.number] = record
                    stats.new += 1
                elif record.state != state or record.complete != r.datetime_complete:
                    stats.changed += 1
                record.state, record.start, record.complete = state, r.datetime_start, r.datetime_complete
                touched[r.trial_id] = record
            # values and params of the touched trials: new ones by id range, pending ones by id
            self._fetch_children(conn, touched, old_mark, new_mark, pending)
            self._watermark = new_mark
        stats.seconds = time.perf_counter() - started
        self.last = stats
        return stats

    def _range_or_ids(self, column, old_mark: int, new_mark: int, ids: list[int]):
        import sqlalchemy as sa

        m = _tables()
        trials_t = m.TrialModel.__table__
        in_study = column.in_(
            sa.select(trials_t.c.trial_id).where(
                trials_t.c.study_id == self.info.study_id,
                trials_t.c.trial_id > old_mark,
                trials_t.c.trial_id <= new_mark,
            )
        )
        conditions = [in_study]
        for chunk in _chunks(ids):
            conditions.append(column.in_(chunk))
        return conditions

    def _fetch_children(self, conn, touched: dict[int, TrialRecord], old: int, new: int, pending: list[int]):
        import sqlalchemy as sa

        m = _tables()
        values_t, params_t = m.TrialValueModel.__table__, m.TrialParamModel.__table__
        kinds = m.TrialValueModel.TrialValueType
        values: dict[int, dict[int, float]] = {}
        for condition in self._range_or_ids(values_t.c.trial_id, old, new, pending):
            stmt = sa.select(
                values_t.c.trial_id, values_t.c.objective, values_t.c.value, values_t.c.value_type
            ).where(condition)
            for trial_id, objective, value, kind in _raw_rows(conn, stmt):
                kind = kind if isinstance(kind, kinds) else kinds[str(kind)]
                values.setdefault(trial_id, {})[objective] = _value(m, value, kind)
        for trial_id, objs in values.items():
            if trial_id in touched:
                touched[trial_id].values = tuple(objs[i] for i in sorted(objs))
        cache, parse = self._dist_cache, self._distribution
        for condition in self._range_or_ids(params_t.c.trial_id, old, new, pending):
            stmt = sa.select(
                params_t.c.trial_id,
                params_t.c.param_name,
                params_t.c.param_value,
                params_t.c.distribution_json,
            ).where(condition)
            for trial_id, name, internal, dist_json in _raw_rows(conn, stmt):
                record = touched.get(trial_id)
                if record is None:
                    continue
                dist = cache.get(dist_json) or parse(dist_json)
                record.distributions[name] = dist
                record.params[name] = dist.to_external_repr(internal)

    def _distribution(self, text: str):
        dist = self._dist_cache.get(text)
        if dist is None:
            from optuna.distributions import json_to_distribution

            dist = self._dist_cache[text] = json_to_distribution(text)
        return dist

    # ------------------------------------------------------------------ details
    def details(self, records: Iterable[TrialRecord], *, force: bool = False) -> None:
        """Load user/system attributes, intermediate values and heartbeats of ``records``.

        Finished trials are loaded once; unfinished ones on every call (they still change).
        """
        import sqlalchemy as sa

        wanted = [
            r for r in records if force or r.user_attrs is None or not r.finished or r.intermediate is None
        ]
        if not wanted:
            return
        m = _tables()
        ua_t, sa_t = m.TrialUserAttributeModel.__table__, m.TrialSystemAttributeModel.__table__
        iv_t, hb_t = m.TrialIntermediateValueModel.__table__, m.TrialHeartbeatModel.__table__
        by_id = {r.trial_id: r for r in wanted}
        user: dict[int, dict[str, Any]] = {i: {} for i in by_id}
        system: dict[int, dict[str, Any]] = {i: {} for i in by_id}
        inter: dict[int, dict[int, float]] = {i: {} for i in by_id}
        beats: dict[int, Any] = {}
        with self._guard(), self.engine.connect() as conn:
            for chunk in _chunks(list(by_id)):
                for r in conn.execute(sa.select(ua_t).where(ua_t.c.trial_id.in_(chunk))):
                    user[r.trial_id][r.key] = _json(r.value_json)
                for r in conn.execute(sa.select(sa_t).where(sa_t.c.trial_id.in_(chunk))):
                    system[r.trial_id][r.key] = _json(r.value_json)
                for r in conn.execute(sa.select(iv_t).where(iv_t.c.trial_id.in_(chunk))):
                    value = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                        r.intermediate_value, r.intermediate_value_type
                    )
                    inter[r.trial_id][r.step] = value
                for r in conn.execute(sa.select(hb_t).where(hb_t.c.trial_id.in_(chunk))):
                    beats[r.trial_id] = r.heartbeat
        for trial_id, record in by_id.items():
            record.user_attrs = user[trial_id]
            record.system_attrs = system[trial_id]
            record.intermediate = dict(sorted(inter[trial_id].items()))
            record.heartbeat = beats.get(trial_id)


def _raw_rows(conn, stmt) -> list[tuple]:
    """Rows of ``stmt`` straight from the DBAPI cursor (no per-row SQLAlchemy processing: only for
    columns whose raw values are plain numbers and strings on every backend)."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args = tuple(params[k] for k in compiled.positiontup) if compiled.positional else params
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _chunks(ids: list[int], size: int = _CHUNK) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]
