"""A study with 3 worker processes on the real PostgreSQL server (127.0.0.1:5432, database ``test``).

Skipped when no server is reachable, unless ``MAML_TUNE_REQUIRE_POSTGRES=1`` (CI), where it must run.
The URL can be changed with ``MAML_TUNE_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import os
import uuid

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POSTGRES_URL = os.environ.get("MAML_TUNE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> str:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no server here"
        from maml_tune.search.storage import mask_url

        reason = f"PostgreSQL not reachable at {mask_url(POSTGRES_URL)}: {str(exc).splitlines()[0]}"
        if os.environ.get("MAML_TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (MAML_TUNE_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return POSTGRES_URL


def test_three_workers_share_one_study_exactly(postgres_url, write_spec, registry):
    import optuna

    from maml_tune.search.events import TrialEnded
    from maml_tune.search.runner import SearchOptions, run_search
    from maml_tune.search.spec import load_spec

    name = f"pytest-{uuid.uuid4().hex[:12]}"
    spec = load_spec(write_spec(), registry, {"n_trials": 7, "name": name})
    events = []
    try:
        result = run_search(
            spec, SearchOptions(storage=postgres_url, workers=3, device="cpu", threads=1), events.append
        )
        assert result.worker_errors == []
        trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
        assert len(trials) == 7
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        assert all(t.state.name == "COMPLETE" for t in trials)
        workers = {t.user_attrs["worker"] for t in trials}
        assert workers == {0, 1, 2}, workers
        assert {e.worker for e in events if isinstance(e, TrialEnded)} == {0, 1, 2}
    finally:
        if name in optuna.get_all_study_names(postgres_url):
            optuna.delete_study(study_name=name, storage=postgres_url)
