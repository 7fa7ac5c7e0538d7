"""Keeping the checkpoints of a study's best trials: a study callback run after every trial."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from maml_tune.search import results
from maml_tune.search.objective import checkpoint_dir


class CheckpointKeeper:
    """Study callback: keep the checkpoints of the top-k completed trials, delete the others' folders."""

    def __init__(self, root: str | Path, study_name: str, k: int):
        self.folder = checkpoint_dir(root, study_name, 0).parent
        self.k = k

    def keep(self, study: Any) -> set[int]:
        best = results.best_trials(study)
        if len(study.directions) == 1:
            sign = 1 if study.direction.name == "MINIMIZE" else -1
            completed = study.get_trials(deepcopy=False, states=(best[0].state,)) if best else []
            ranked = sorted(completed, key=lambda t: (sign * t.values[0], t.number))
        else:
            ranked = sorted(best, key=lambda t: (t.values[0], t.number))
        return {t.number for t in ranked[: self.k]}

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.folder.is_dir():
            return
        keep = self.keep(study)
        finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        for path in self.folder.glob("trial-*"):
            try:
                number = int(path.name.split("-", 1)[1])
            except ValueError:
                continue  # not a trial folder
            if number in finished and number not in keep:
                shutil.rmtree(path, ignore_errors=True)
