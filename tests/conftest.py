"""Suite-wide pytest hooks."""

import os
from pathlib import Path

import pytest

FULL_SUITE = (
    "the full suite takes about 10 minutes on 2 CPU cores with -n 2 (CI allows 15); "
    "-m 'not slow' leaves out the end-to-end tests"
)

TESTS = Path(__file__).parent
TIMING = (
    "reliability/test_concurrency.py",
    "reliability/test_database_loss.py",
    "reliability/test_interrupt.py",
    "reliability/test_killed_workers.py",
    "reliability/test_lost_retries.py",
    "reliability/test_partition.py",
    "cli/test_logs.py",
    "cli/test_train.py",
    "dashboard/test_watch_tmux.py",
    "test_bad_input.py",
)
"""Tests that measure time or race processes: under ``-n 2`` they share one worker (xdist's
``loadgroup``), so none of them runs beside another, only beside the computing tests."""


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One worker per core: torch's own threads would fight over the cores (twice as slow).
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        # xdist starts its workers with COLUMNS=80; the tests that care about width set their own.
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)
    # rich fixes a console's width when $COLUMNS is set as it is made: the CLI's consoles are made
    # now, not inside whichever test first imports them with its own COLUMNS (order-dependent).
    import maml_tune.cli._common  # noqa: F401


def pytest_collection_modifyitems(config, items):
    for item in items:
        where = Path(item.fspath).relative_to(TESTS).as_posix()
        if any(where == t or where.startswith(f"{t}/") for t in TIMING):
            item.add_marker(pytest.mark.xdist_group("timing"))


def pytest_collection_finish(session):
    # Also under -q (the README's command), where the report header is not shown.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and len(session.items) > 100:
        reporter.write_line(f"{len(session.items)} tests: {FULL_SUITE}")
