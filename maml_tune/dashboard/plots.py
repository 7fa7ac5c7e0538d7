"""``maml-tune plot``: Optuna's standard visualisations written to a file for reports.

``.html`` files use Optuna's plotly figures (``optuna.visualization``, interactive, plotly.js
embedded so the file works offline); ``.png``, ``.svg`` and ``.pdf`` use Optuna's matplotlib
figures (``optuna.visualization.matplotlib``), which need no browser. Both libraries come with
the ``plots`` extra: ``pip install maml-tune[plots]``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

from maml_tune.errors import ConfigError, StorageError, StudyError

KINDS = ("history", "importance", "parallel", "slice", "intermediate", "pareto")
HTML = (".html", ".htm")
IMAGES = (".png", ".svg", ".pdf")
_FUNCTIONS = {
    "history": "plot_optimization_history",
    "importance": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
    "slice": "plot_slice",
    "intermediate": "plot_intermediate_values",
    "pareto": "plot_pareto_front",
}


def _need(module: str, extra: str = "plots") -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"this plot needs the {module} package: pip install 'maml-tune[{extra}]'")


def figure(study: Any, kind: str, backend: str) -> Any:
    """The Optuna figure ``kind`` for ``study`` (``backend``: ``plotly`` or ``matplotlib``)."""
    import optuna

    if kind not in KINDS:
        raise ConfigError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    multi = len(study.directions) > 1
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if kind == "pareto" and not multi:
        raise StudyError(f"study {study.study_name!r} has one objective: --kind pareto needs several")
    if not completed and kind != "intermediate":
        raise StudyError(f"study {study.study_name!r} has no completed trials yet")
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    kwargs: dict[str, Any] = {}
    if kind == "pareto":
        kwargs["target_names"] = names
    elif multi and kind in ("history", "parallel", "slice", "importance"):
        kwargs["target"] = lambda t: t.values[0]
        kwargs["target_name"] = names[0]
    elif kind in ("history", "parallel", "slice", "importance"):
        kwargs["target_name"] = names[0]
    if kind == "importance" and len(completed) < 2:
        raise StudyError(f"study {study.study_name!r}: importance needs at least 2 completed trials")
    if kind == "intermediate" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        raise StudyError(
            f"study {study.study_name!r} has no intermediate values (multi-objective studies report none)"
        )
    module = optuna.visualization if backend == "plotly" else optuna.visualization.matplotlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(module, _FUNCTIONS[kind])(study, **kwargs)


def write_plot(url: str | None, name: str | None, kind: str, out: str | Path) -> dict[str, Any]:
    """Write plot ``kind`` of study ``name`` to ``out`` (format from the suffix); returns a summary."""
    from maml_tune.search.results import load

    target = Path(out)
    suffix = target.suffix.lower()
    if suffix not in HTML + IMAGES:
        raise ConfigError(f"--out: expected a .html, .png, .svg or .pdf file, got {str(out)!r}")
    if kind not in KINDS:
        raise ConfigError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    backend = "plotly" if suffix in HTML else "matplotlib"
    _need("plotly" if backend == "plotly" else "matplotlib")
    if backend == "matplotlib":
        import matplotlib

        matplotlib.use("Agg", force=True)
    study = load(url, name)
    fig = figure(study, kind, backend)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if backend == "plotly":
            fig.write_html(str(target), include_plotlyjs=True, full_html=True)
        else:
            import matplotlib.pyplot as plt

            figure_obj = _mpl_figure(fig)
            figure_obj.set_size_inches(10, 6)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure_obj.tight_layout()
            figure_obj.savefig(str(target), dpi=120)
            plt.close(figure_obj)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return {"study": study.study_name, "kind": kind, "path": str(target), "backend": backend}


def _mpl_figure(result: Any) -> Any:
    """Optuna's matplotlib functions return an Axes (or an array of Axes); their figure."""
    import numpy as np

    if isinstance(result, np.ndarray):
        result = result.flat[0]
    return result.figure if hasattr(result, "figure") else result
