"""Tasks from a table: one task per group (patient, sensor, site…) of a CSV or Parquet file.

``table`` regresses the ``target_columns`` on the ``feature_columns``; ``table-classification``
classifies the one target column's values (its distinct values, sorted, are the classes of
every task, so a label means the same in every task). Each task is one group of rows, its
support and query sets disjoint random rows of that group; groups are split into
meta-train/val/test by a seeded hash of their names (:func:`~maml_tune.families._images.split_units`).
Features (and regression targets) are standardised with the meta-train rows' mean and std,
so losses are in standard-deviation units. Parquet needs ``pyarrow``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from maml_tune.core.tasks import SPLITS, TaskBatch
from maml_tune.errors import ConfigError, DataError
from maml_tune.families._contract import ProgressCallback, TaskFamily, option
from maml_tune.families._images import split_units

MISSING = ("", "na", "nan", "null", "none", "n/a")
"""Cell values read as missing (case-insensitive)."""


@dataclass(frozen=True)
class TableOptions:
    path: str | None = option(None, "the CSV (or, with pyarrow, Parquet) file")
    group_column: str | None = option(None, "column whose values name the tasks (one task per value)")
    target_columns: str | None = option(None, "comma-separated target column(s)")
    feature_columns: str | None = option(
        None, "comma-separated feature columns (default: every other numeric one)"
    )
    k_shot: int = option(5, "support rows per task (classification: per class)", min=1)
    k_query: int = option(10, "query rows per task (classification: per class)", min=1)
    val_fraction: float = option(0.15, "share of groups held out for meta-val", min=0.01, max=0.4)
    test_fraction: float = option(0.2, "share of groups held out for meta-test", min=0.01, max=0.4)
    split_seed: int = option(0, "seed of the group split (the same seed, the same split)")


@dataclass(frozen=True)
class _Rows:
    """The usable rows, ordered by cell: cell ``c`` owns ``x[starts[c] : starts[c] + counts[c]]``.

    A cell is a group (regression) or a (group, class) pair (classification, class-major
    within each group, so group ``g``'s cells are ``g * n_classes + label``)."""

    x: torch.Tensor  # (rows, features) float32, standardised
    y: torch.Tensor  # (rows, targets) float32 standardised, or (rows,) int64 labels
    starts: torch.Tensor
    counts: torch.Tensor
    groups: tuple[str, ...]
    split_groups: dict[str, torch.Tensor]  # group indices per split
    most: int  # rows of the largest cell, kept on the host so a draw never waits on a GPU for it


class _Table(TaskFamily):
    """What both table families share; :attr:`kind` says which one it is."""

    Options = TableOptions
    data = (
        "your own CSV or Parquet file (family.path) with a column naming each row's group"
        " (family.group_column: one task per group), target column(s) (family.target_columns) and"
        " numeric feature columns (family.feature_columns, default every other numeric column)"
    )
    classes: ClassVar[bool]

    def __init__(self, options: Any = None):
        super().__init__(options)
        self._rows: _Rows | None = None
        self._features: tuple[str, ...] = ()
        self._labels: tuple[str, ...] = ()
        self._devices: dict[str, _Rows] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(features,)``: the feature columns are the file's, so the first call reads it."""
        self.prepare()
        return (len(self._features),)

    def default_architecture(self) -> dict[str, Any]:
        return {"kind": "mlp", "depth": 2, "width": 40, "activation": "relu"}

    def literature_config(self) -> dict[str, Any]:
        """Finn et al. 2017's regression settings (their sinusoids)."""
        return {
            "algo.algorithm": "maml",
            "algo.inner_lr": 0.01,
            "algo.inner_steps": 1,
            "train.meta_batch": 25,
        }

    def feature_names(self) -> tuple[str, ...]:
        self.prepare()
        return self._features

    def groups(self, split: str) -> tuple[str, ...]:
        """The groups (tasks) of ``split`` that have enough rows to be drawn, sorted."""
        rows = self._prepared()
        return tuple(sorted(rows.groups[int(g)] for g in rows.split_groups[self._check(split)]))

    def prepare(self, progress: ProgressCallback | None = None) -> None:
        """Read the file, check the columns, split the groups, fit the standardisation.

        Raises :class:`~maml_tune.errors.DataError` for a missing file, an unknown column,
        a missing or non-numeric value (naming the column and row) and
        :class:`~maml_tune.errors.ConfigError` when a split has no group with enough rows.
        """
        if self._rows is not None:
            return
        o = self.options
        header, columns = _read(o.path)
        group_column = _column(o.group_column, "group_column", header)
        targets = _names(o.target_columns, "target_columns", header)
        if self.classes and len(targets) != 1:
            raise ConfigError(f"{self.name}: give exactly one target column, got {', '.join(targets)}")
        used = {group_column, *targets}
        if o.feature_columns:
            features = _names(o.feature_columns, "feature_columns", header)
        else:
            features = [c for c in header if c not in used and _numeric(columns[c])]
            if not features:
                raise DataError(
                    f"{self.name}: {o.path} has no numeric column besides the group and target columns"
                )
        overlap = used & set(features)
        if overlap:
            raise ConfigError(
                f"{self.name}: column {sorted(overlap)[0]!r} is both a feature and a group/target"
            )
        x = np.stack([_floats(columns[c], c) for c in features], axis=1)
        groups = [_present(v, group_column, i) for i, v in enumerate(columns[group_column])]
        if self.classes:
            raw = [_present(v, targets[0], i) for i, v in enumerate(columns[targets[0]])]
            self._labels = tuple(sorted(set(raw)))
            if len(self._labels) < 2:
                raise DataError(
                    f"{self.name}: target column {targets[0]!r} has one value; classes need two or more"
                )
            y = np.array([self._labels.index(v) for v in raw], dtype=np.int64)
        else:
            y = np.stack([_floats(columns[c], c) for c in targets], axis=1)
        self._features = tuple(features)
        self._rows = self._arrange(x, y, groups)

    @property
    def output_size(self) -> int:
        if not self.classes:
            return len(_names(self.options.target_columns, "target_columns", None))
        self.prepare()
        return len(self._labels)

    def sample(self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device) -> TaskBatch:
        """``n_tasks`` tasks of ``split``: a uniformly drawn group each, then ``k_shot + k_query``
        distinct rows of it (per class for classification), in one batched draw."""
        o = self.options
        rows = self._on_device(torch.device(device))
        dev = rows.x.device
        eligible = rows.split_groups[self._check(split)]
        group = eligible[torch.randint(len(eligible), (n_tasks,), generator=generator, device=dev)]
        n_cells = len(self._labels) if self.classes else 1
        cells = group.unsqueeze(1) * n_cells + torch.arange(n_cells, device=dev)  # (T, cells)
        starts, counts = rows.starts[cells], rows.counts[cells]
        per_cell = o.k_shot + o.k_query
        most = rows.most
        noise = torch.rand(n_tasks, n_cells, most, generator=generator, device=dev)
        noise = noise.masked_fill(torch.arange(most, device=dev) >= counts.unsqueeze(-1), 2.0)
        index = starts.unsqueeze(-1) + noise.topk(per_cell, dim=-1, largest=False).indices  # (T, cells, K+Q)
        support, query = (part.reshape(n_tasks, -1) for part in index.split([o.k_shot, o.k_query], dim=-1))
        return TaskBatch(rows.x[support], rows.y[support], rows.x[query], rows.y[query])

    # --- internals -----------------------------------------------------------------------

    def _check(self, split: str) -> str:
        if split not in SPLITS:
            raise ConfigError(f"{self.name}: unknown split {split!r} (expected one of {SPLITS})")
        return split

    def _prepared(self) -> _Rows:
        self.prepare()
        assert self._rows is not None
        return self._rows

    def _on_device(self, device: torch.device) -> _Rows:
        key = str(device)
        if key not in self._devices:
            r = self._prepared()
            self._devices[key] = _Rows(
                r.x.to(device),
                r.y.to(device),
                r.starts.to(device),
                r.counts.to(device),
                r.groups,
                {split: g.to(device) for split, g in r.split_groups.items()},
                r.most,
            )
        return self._devices[key]

    def _arrange(self, x: np.ndarray, y: np.ndarray, groups: list[str]) -> _Rows:
        o = self.options
        names = sorted(set(groups))
        unit_split = split_units(
            names, {"test": o.test_fraction, "val": o.val_fraction}, salt=f"{o.split_seed}/"
        )
        if unit_split is None:
            raise ConfigError(
                f"{self.name}: {len(names)} groups are too few to split into train, test and val;"
                " lower val_fraction / test_fraction, or add groups"
            )
        group_index = _index_of(groups, names)
        n_cells = len(self._labels) if self.classes else 1
        cell = group_index * n_cells + (y if self.classes else 0)
        order = np.argsort(cell, kind="stable")
        counts = np.bincount(cell, minlength=len(names) * n_cells)
        train_rows = np.array([unit_split.get(g, "train") == "train" for g in groups])
        x = _standardise(x, x[train_rows])
        if not self.classes:
            y = _standardise(y, y[train_rows])
        enough = (counts.reshape(len(names), n_cells) >= o.k_shot + o.k_query).all(axis=1)
        split_groups = {}
        for split in SPLITS:
            chosen = [i for i, g in enumerate(names) if unit_split.get(g, "train") == split and enough[i]]
            if not chosen:
                need = f"{o.k_shot + o.k_query} rows" + (" of every class" if self.classes else "")
                raise ConfigError(
                    f"{self.name}: no group of split {split!r} has {need} (k_shot + k_query);"
                    " lower k_shot / k_query or add rows"
                )
            split_groups[split] = torch.tensor(chosen, dtype=torch.int64)
        counts_t = torch.from_numpy(counts.astype(np.int64))
        return _Rows(
            torch.from_numpy(x[order].astype(np.float32)),
            torch.from_numpy(y[order] if self.classes else y[order].astype(np.float32)),
            torch.cumsum(counts_t, 0) - counts_t,
            counts_t,
            tuple(names),
            split_groups,
            int(counts.max()),
        )


class Table(_Table):
    """Regression tasks from a table: one task per group (see the module)."""

    name = "table"
    description = "your own table (CSV/Parquet): one regression task per group of rows"
    kind = "regression"
    classes = False


class TableClassification(_Table):
    """Classification tasks from a table: one task per group, the target's values as classes."""

    name = "table-classification"
    description = "your own table (CSV/Parquet): one classification task per group of rows"
    kind = "classification"
    classes = True


# --- reading -------------------------------------------------------------------------------


def _read(path: str | None) -> tuple[list[str], dict[str, list[str]]]:
    """The header and every column as strings."""
    if not path:
        raise DataError("table: no file; set the family option path (a .csv or .parquet file)")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"table: {file} is not a file")
    if file.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"table: reading {file.name} needs pyarrow: pip install pyarrow") from None
        data = pq.read_table(file).to_pydict()
        return list(data), {k: ["" if v is None else str(v) for v in values] for k, values in data.items()}
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise DataError(f"table: {file} is empty (expected a header row)")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"table: cannot read {file} ({exc})") from exc
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"table: {file} line {number} has {len(row)} fields, the header {len(header)}")
    return header, {name: [row[i] for row in rows] for i, name in enumerate(header)}


def _names(value: str | None, option_name: str, header: list[str] | None) -> list[str]:
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if not names:
        raise ConfigError(f"table: set the family option {option_name} (comma-separated column names)")
    if header is not None:
        for name in names:
            _column(name, option_name, header)
    return names


def _column(name: str | None, option_name: str, header: list[str]) -> str:
    if not name:
        raise ConfigError(f"table: set the family option {option_name}")
    if name not in header:
        raise DataError(f"table: no column {name!r} ({option_name}); columns: {', '.join(header)}")
    return name


def _present(value: str, column: str, index: int) -> str:
    if value.strip().lower() in MISSING:
        raise DataError(f"table: column {column!r} has a missing value (data row {index + 1})")
    return value.strip()


def _numeric(values: list[str]) -> bool:
    """Whether any value is a number: such a column is a feature, and a word in it an error
    (silently dropping a column over one typo would be worse)."""
    for value in values:
        try:
            float(value)
        except ValueError:
            continue
        return True
    return False


def _floats(values: list[str], column: str) -> np.ndarray:
    out = np.empty(len(values))
    for i, value in enumerate(values):
        text = _present(value, column, i)
        try:
            out[i] = float(text)
        except ValueError:
            raise DataError(f"table: column {column!r} is not numeric: {text!r} (data row {i + 1})") from None
        if not math.isfinite(out[i]):
            raise DataError(f"table: column {column!r} has a non-finite value {text!r} (data row {i + 1})")
    return out


def _index_of(values: list[str], names: list[str]) -> np.ndarray:
    position = {name: i for i, name in enumerate(names)}
    return np.array([position[v] for v in values])


def _standardise(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``values`` standardised with ``train``'s column means and stds (a constant column: std 1)."""
    std = train.std(axis=0)
    return (values - train.mean(axis=0)) / np.where(std > 0, std, 1.0)


__all__ = ["MISSING", "Table", "TableClassification", "TableOptions"]
