"""The dashboard's entry points: one snapshot, or a live view refreshed in place until Ctrl-C."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from maml_tune.dashboard import render
from maml_tune.dashboard.source import open_source, overview
from maml_tune.dashboard.state import Dashboard
from maml_tune.search.storage import mask_url, normalize_url, storage_url

IMPORTANCE_INTERVAL_S = 30.0
"""While watching, importance is re-evaluated at most this often (it is the costliest panel)."""


def snapshot(console: Console, url: str | None, study: str | None, *, top_k: int = 5) -> dict[str, Any]:
    """Print one snapshot (the study list when ``study`` is None and the database has several)."""
    if study is None:
        rows = overview(url)
        if len(rows) != 1:
            if not rows:
                from maml_tune.errors import StudyError

                raise StudyError(f"no studies in {mask_url(normalize_url(storage_url(url)))}")
            console.print(render.study_list(rows, mask_url(normalize_url(storage_url(url)))))
            return {"studies": rows}
        study = rows[0]["name"]
    source = open_source(url, study)
    try:
        view = Dashboard(source, top_k=top_k).view(refresh=False)
        console.print(render.dashboard(view, console.width))
        return {"study": view.info.name, "trials": view.counts["total"]}
    finally:
        source.close()


def watch(
    console: Console,
    url: str | None,
    study: str | None,
    *,
    refresh: float = 2.0,
    top_k: int = 5,
    max_refreshes: int | None = None,
) -> None:
    """Refresh the dashboard in place every ``refresh`` seconds until Ctrl-C (or ``max_refreshes``)."""
    from rich.live import Live

    if study is None:
        rows = overview(url)
        if len(rows) > 1:  # watch the study list
            _watch_list(console, url, refresh, max_refreshes)
            return
    source = open_source(url, study)
    board = Dashboard(source, top_k=top_k, importance_interval=IMPORTANCE_INTERVAL_S)
    count = 0
    try:
        view = board.view(refresh=False)
        with Live(
            render.dashboard(view, console.width, console.height),
            console=console,
            auto_refresh=False,
            vertical_overflow="crop",
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while max_refreshes is None or count < max_refreshes:
                time.sleep(refresh)
                view = board.view(force_importance=False)
                live.update(render.dashboard(view, console.width, console.height), refresh=True)
                count += 1
    except KeyboardInterrupt:
        pass
    finally:
        source.close()


def _watch_list(console: Console, url: str | None, refresh: float, max_refreshes: int | None) -> None:
    from rich.live import Live

    masked = mask_url(normalize_url(storage_url(url)))
    count = 0
    try:
        with Live(render.study_list(overview(url), masked), console=console, auto_refresh=False) as live:
            while max_refreshes is None or count < max_refreshes:
                time.sleep(refresh)
                live.update(render.study_list(overview(url), masked), refresh=True)
                count += 1
    except KeyboardInterrupt:
        pass


def trial(url: str | None, study: str | None, number: int) -> dict[str, Any]:
    """One trial in full (see :func:`render.trial_data`)."""
    source = open_source(url, study)
    try:
        record = source.trial(number)
        return render.trial_data(record, source.info)
    finally:
        source.close()
