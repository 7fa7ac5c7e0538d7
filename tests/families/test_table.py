"""The table families: columns, group splits, standardisation, sampling, errors, end to end."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.core.tasks import split_generator
from maml_tune.errors import ConfigError, DataError
from maml_tune.families.table import Table, TableClassification
from maml_tune.families.testing import TaskFamilyConformance
from maml_tune.search.storage import open_storage

CPU = torch.device("cpu")
GROUPS = 20
ROWS = 30


def write_csv(path: Path, *, edit=None) -> Path:
    """Per group g: y = a_g * x1 + b_g + noise, label = x1 > c_g; ``gid`` is the group's number."""
    rng = np.random.default_rng(0)
    rows = [["patient", "gid", "x1", "x2", "site", "y", "label"]]
    for g in range(GROUPS):
        a, b, c = rng.normal(size=3)
        for _ in range(ROWS):
            x1, x2 = rng.normal(size=2)
            y = a * x1 + b + 0.05 * rng.normal()
            label = "high" if x1 > c / 2 else "low"
            rows.append([f"p{g:02d}", str(g), f"{x1:.6f}", f"{x2:.6f}", f"site-{g % 3}", f"{y:.6f}", label])
    if edit:
        edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("table") / "data.csv")


def regression(path: Path, **options) -> Table:
    return Table({"path": str(path), "group_column": "patient", "target_columns": "y", **options})


def classification(path: Path, **options) -> TableClassification:
    settings = {
        "path": str(path),
        "group_column": "patient",
        "target_columns": "label",
        "k_shot": 1,
        "k_query": 2,
    }
    return TableClassification({**settings, **options})


def sample(family, split: str, n_tasks: int = 8, seed: int = 0):
    return family.sample(split, n_tasks, split_generator(seed, split), CPU)


def test_regression_tasks_are_groups_with_standardised_columns(table_csv):
    family = regression(table_csv, k_shot=4, k_query=6)
    assert family.feature_names() == ("gid", "x1", "x2")  # numeric, not the group or target
    assert family.input_shape == (3,) and family.output_size == 1
    batch = sample(family, "train")
    assert batch.support_x.shape == (8, 4, 3) and batch.support_y.shape == (8, 4, 1)
    assert batch.query_x.shape == (8, 6, 3) and batch.support_x.dtype == torch.float32
    for task in range(8):  # every row of a task is from one group (gid is constant)
        gids = torch.cat([batch.support_x[task, :, 0], batch.query_x[task, :, 0]])
        assert torch.allclose(gids, gids[0].expand_as(gids))
    rows = family._prepared()
    train_rows = torch.cat(
        [
            torch.arange(int(rows.starts[g]), int(rows.starts[g] + rows.counts[g]))
            for g in rows.split_groups["train"]
        ]
    )
    assert (
        rows.x[train_rows].mean(0).abs().max() < 1e-5 and (rows.x[train_rows].std(0) - 1).abs().max() < 0.05
    )
    assert abs(float(rows.y[train_rows].mean())) < 1e-5


def test_groups_are_split_disjointly_and_by_seed(table_csv):
    family = regression(table_csv)
    splits = {split: set(family.groups(split)) for split in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == GROUPS
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert (len(splits["val"]), len(splits["test"])) == (3, 4)
    assert regression(table_csv).groups("test") == family.groups("test")
    assert {regression(table_csv, split_seed=s).groups("test") for s in range(1, 5)} - {family.groups("test")}


def test_classification_labels_mean_the_same_in_every_task(table_csv):
    family = classification(table_csv)
    assert family.output_size == 2 and family._labels == ("high", "low")
    batch = sample(family, "val")
    assert batch.support_y.tolist() == [[0, 1]] * 8
    assert batch.query_y.tolist() == [[0, 0, 1, 1]] * 8
    x1 = family.feature_names().index("x1")
    # "high" rows have the larger x1 within a group: the support row of class 0 beats class 1's mostly
    assert float((batch.query_x[:, :2, x1].mean(1) > batch.query_x[:, 2:, x1].mean(1)).float().mean()) > 0.6


def _missing(rows):
    rows[5][3] = ""


def _word(rows):
    rows[7][2] = "tall"


@pytest.mark.parametrize(
    ("edit", "options", "error", "message"),
    [
        (_missing, {}, DataError, r"column 'x2' has a missing value \(data row 5\)"),
        (_word, {}, DataError, r"column 'x1' is not numeric: 'tall' \(data row 7\)"),
        (None, {"feature_columns": "x1,site"}, DataError, r"column 'site' is not numeric: 'site-0'"),
        (
            None,
            {"group_column": "ward"},
            DataError,
            r"no column 'ward' \(group_column\); columns: patient, gid",
        ),
        (None, {"target_columns": ""}, ConfigError, "set the family option target_columns"),
        (None, {"feature_columns": "x1,y"}, ConfigError, "'y' is both a feature and a group/target"),
        (None, {"k_shot": 20, "k_query": 20}, ConfigError, "no group of split 'train' has 40 rows"),
        (None, {"file": "/nonexistent.csv"}, DataError, "is not a file"),
    ],
)
def test_bad_tables_are_one_line_errors_naming_the_column(tmp_path, edit, options, error, message):
    options = dict(options)
    path = Path(options.pop("file", None) or write_csv(tmp_path / "t.csv", edit=edit))
    with pytest.raises(error, match=message) as raised:
        regression(path, **options).prepare()
    assert "\n" not in str(raised.value)


def test_parquet_reads_like_the_csv(table_csv, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    with table_csv.open() as handle:
        rows = list(csv.reader(handle))
    columns = {name: [row[i] for row in rows[1:]] for i, name in enumerate(rows[0])}
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    a, b = regression(table_csv), regression(tmp_path / "t.parquet")
    assert torch.equal(sample(a, "train").support_x, sample(b, "train").support_x)


@pytest.mark.slow
class TestTableConformance(TaskFamilyConformance):
    @pytest.fixture(autouse=True)
    def _path(self, table_csv):
        self.path = table_csv

    def make_family(self):
        return regression(self.path)


@pytest.mark.slow
class TestTableClassificationConformance(TaskFamilyConformance):
    @pytest.fixture(autouse=True)
    def _path(self, table_csv):
        self.path = table_csv

    def make_family(self):
        return classification(self.path, k_shot=2, k_query=4)


SPEC = """
[family]
name = "table"

[family.options]
path = "{path}"
group_column = "patient"
target_columns = "y"

[fixed]
"arch.width" = 16
"train.meta_batch" = 4

[budget]
iterations = 10
val_interval = 5
val_tasks = 8
eval_tasks = 8

[study]
name = "table"
sampler = "random"
pruner = "none"
seed = 0
n_trials = 2
"""


@pytest.mark.slow
def test_search_and_train_on_a_csv(table_csv, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC.format(path=table_csv)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    runner = CliRunner()
    searched = runner.invoke(app, ["search", str(spec), "--storage", storage, "--device", "cpu"])
    assert searched.exit_code == 0, searched.output
    trials = optuna.load_study(study_name="table", storage=open_storage(storage)).trials
    # Randomly sampled settings may diverge (pruned as such); none may fail.
    states = [t.state.name for t in trials]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states, states
    trained = runner.invoke(
        app, ["train", str(spec), "--iterations", "10", "--out", str(tmp_path / "run"), "--device", "cpu"]
    )
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(
        app, ["evaluate", str(tmp_path / "run"), "--device", "cpu", "--json", "--tasks", "8"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["tasks"] == 8
