"""``maml-tune search``, ``train``, ``evaluate`` and ``predict`` end to end on each image-folder layout."""

from __future__ import annotations

import json
import textwrap

import imagefolder_fixture as fixture
import optuna
import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app
from maml_tune.search.storage import open_storage

pytestmark = pytest.mark.slow

SPEC = """
[family]
name = "imagefolder"

[family.options]
data_dir = "{data_dir}"
cache_dir = "{cache_dir}"
image_size = 16
n_way = 3
k_shot = 1
k_query = 2

[space]
"algo.inner_lr" = {{ type = "float", low = 0.01, high = 0.5, log = true }}
"algo.inner_steps" = {{ type = "int", low = 1, high = 2 }}

[fixed]
"arch.blocks" = 2
"arch.channels" = 8
"train.meta_batch" = 2
"train.seed" = 0

[budget]
iterations = 6
val_interval = 3
val_tasks = 6
eval_tasks = 6

[study]
name = "{name}"
sampler = "random"
pruner = "none"
seed = 0
n_trials = 2
baseline = true
top_k_checkpoints = 1
"""


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("layout", ["flat", "split", "grouped", "mini_imagenet"])
def test_search_train_evaluate_and_predict_on_an_image_folder(tmp_path, layout):
    data = getattr(fixture, f"write_{layout}")(tmp_path / "data")
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC.format(data_dir=data, cache_dir=tmp_path / "cache", name=layout)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    searched = invoke(
        "search", str(spec), "--storage", storage, "--checkpoints", str(tmp_path / "ckpt"), "--device", "cpu"
    )
    assert searched.exit_code == 0, searched.output
    trials = optuna.load_study(study_name=layout, storage=open_storage(storage)).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2  # the baseline and one sampled trial
    assert trials[0].user_attrs["baseline"] is True
    assert all(0.0 <= t.user_attrs["metrics"]["test_accuracy"] <= 1.0 for t in trials)

    out = tmp_path / "run"
    trained = invoke("train", str(spec), "--iterations", "6", "--out", str(out), "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    evaluated = invoke("evaluate", str(out), "--device", "cpu", "--json", "--tasks", "6")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["tasks"] == 6

    if layout == "mini_imagenet":
        return  # no class folders to copy a support folder from
    # predict: a support folder of three classes and unlabelled queries
    classes = sorted(p for p in data.rglob("*") if p.is_dir() and any(p.glob("*.png")))[:3]
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir()
    for folder in classes:
        (support / folder.name).mkdir(parents=True)
        images = sorted(folder.glob("*.png"))
        (support / folder.name / images[0].name).write_bytes(images[0].read_bytes())
        (query / f"{folder.name}-{images[1].name}").write_bytes(images[1].read_bytes())
    predicted = invoke(
        "predict", str(out), "--support", str(support), "--query", str(query), "--device", "cpu", "--json"
    )
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert sorted(row["file"] for row in rows) == sorted(p.name for p in query.iterdir())
    assert all(row["predicted"] in {c.name for c in classes} for row in rows)
