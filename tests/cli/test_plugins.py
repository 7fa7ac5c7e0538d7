"""``maml-tune plugins list / info / new / check``, and other commands beside broken plugins."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maml_tune.cli.main import app

ROOT = Path(__file__).resolve().parents[2]

LINES = textwrap.dedent(
    '''
    from dataclasses import dataclass
    import torch
    from maml_tune.core.tasks import TaskBatch
    from maml_tune.families import TaskFamily, option

    @dataclass(frozen=True)
    class Opts:
        k_shot: int = option(5, "support points", min=1)

    class Lines(TaskFamily):
        name = "NAME"
        description = "lines y = a x"
        kind = "regression"
        Options = Opts
        input_shape = (1,)
        output_size = 1

        def default_architecture(self):
            return {"kind": "mlp", "depth": 1, "width": 8}

        def sample(self, split, n_tasks, generator, device):
            k = self.options.k_shot
            a = torch.rand(n_tasks, 1, 1, generator=generator)
            x = torch.rand(n_tasks, 2 * k, 1, generator=generator)
            return TaskBatch(x[:, :k], a * x[:, :k], x[:, k:], a * x[:, k:])
    '''
)

# Loads fine, but breaks the contract in every way the conformance suite checks.
SLOPPY = textwrap.dedent(
    '''
    import torch
    from maml_tune.core.tasks import TaskBatch
    from maml_tune.families import TaskFamily

    class Sloppy(TaskFamily):
        name = "sloppy"
        description = "violates the contract on purpose"
        kind = "regression"
        input_shape = (1,)
        output_size = 1

        def default_architecture(self):
            return {"kind": "mlp", "depth": 1, "width": 8}

        def default_search_space(self):
            return {"algo.not_a_setting": {"type": "float", "low": 0.0, "high": 1.0}}

        def sample(self, split, n_tasks, generator, device):
            x = torch.linspace(-1, 1, 10, dtype=torch.float64).repeat(n_tasks, 1).unsqueeze(-1)
            y = torch.rand(n_tasks, 1, 1, dtype=torch.float64) * x  # ignores the generator
            return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    '''
)

QUICK_TRAIN = ["--iterations", "20", "--set", "train.val_interval=10", "--set", "eval_tasks=20",
               "--set", "train.val_tasks=10", "--device", "cpu"]


def lines(name: str) -> str:
    return LINES.replace('"NAME"', repr(name))


@pytest.fixture
def plugins_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(folder))
    monkeypatch.delenv("MAML_TUNE_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    return folder


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_list_shows_broken_plugins_and_other_commands_still_work(plugins_dir, tmp_path, monkeypatch):
    (plugins_dir / "lines.py").write_text(lines("lines"))
    (plugins_dir / "crashes.py").write_text("raise ImportError('needs libfoo')\n")
    (plugins_dir / "incomplete.py").write_text(lines("incomplete").replace("def sample(", "def sampel("))
    (plugins_dir / "wiggle.py").write_text(lines("wiggle"))
    # A real installed package declaring the entry-point group, with a clashing name.
    site = tmp_path / "site"
    info = site / "wiggle_families-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wiggle-families\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[maml_tune.task_families]\nwiggle = wiggle_mod:Lines\n")
    (site / "wiggle_mod.py").write_text(lines("wiggle"))
    monkeypatch.syspath_prepend(str(site))

    result = invoke("plugins", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {(p["name"], p["source_kind"]): p for p in json.loads(result.stdout)}
    assert rows[("sinusoid", "builtin")]["status"] == "ok"
    assert rows[("lines", "local")]["status"] == "ok" and rows[("lines", "local")]["kind"] == "regression"
    assert rows[("lines", "local")]["path"] == str(plugins_dir / "lines.py")
    assert "ImportError: needs libfoo" in rows[("crashes", "local")]["error"]
    assert "missing contract method(s): sample" in rows[("incomplete", "local")]["error"]
    package = rows[("wiggle", "package")]
    assert package["source"] == "package wiggle-families 1.2" and package["version"] == "1.2"
    for row in (package, rows[("wiggle", "local")]):
        assert row["status"] == "error"
        assert "duplicate family name 'wiggle'" in row["error"]
        assert "package wiggle-families 1.2" in row["error"]
        assert str(plugins_dir / "wiggle.py") in row["error"]

    table = invoke("plugins", "list")
    assert table.exit_code == 0 and "crashes" in table.stdout and "error" in table.stdout

    # Commands that need only healthy families keep working.
    info_result = invoke("plugins", "info", "lines")
    assert info_result.exit_code == 0, info_result.output
    trained = invoke("train", "--family", "lines", *QUICK_TRAIN, "--out", str(tmp_path / "run"))
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "checkpoint.json").is_file()
    # ... and a broken one is a one-line error naming the plugin, its source and the cause.
    failed = invoke("train", "--family", "crashes", *QUICK_TRAIN)
    assert failed.exit_code == 1
    assert failed.stderr.strip().count("\n") == 0
    assert "'crashes'" in failed.stderr and "crashes.py" in failed.stderr and "needs libfoo" in failed.stderr
    assert "Traceback" not in failed.output


def test_invalid_family_options_name_the_family_and_expectation(plugins_dir):
    (plugins_dir / "lines.py").write_text(lines("lines"))
    result = invoke("train", "--family", "lines", "--set", "family.k_shot=0", *QUICK_TRAIN)
    assert result.exit_code == 2
    assert "family 'lines' option 'k_shot': expected >= 1, got 0" in result.stderr


def test_info_describes_the_example_family(monkeypatch):
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(ROOT / "plugins"))
    result = invoke("plugins", "info", "spirals", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "classification" and data["source"].startswith("local file")
    options = {o["name"]: o for o in data["options"]}
    assert (options["n_way"]["type"], options["n_way"]["default"], options["n_way"]["min"]) == ("int", 3, 2)
    assert options["turns"]["type"] == "float" and options["random_winding"]["type"] == "bool"
    assert data["default_architecture"]["kind"] == "mlp"
    assert data["default_search_space"]["algo.inner_lr"]["low"] == 0.05
    assert data["literature_config"]["algo.algorithm"] == "maml"
    text = invoke("plugins", "info", "spirals")
    assert text.exit_code == 0
    for words in ("n_way", "default architecture", "default search space", "[family.options]"):
        assert words in text.stdout


@pytest.mark.parametrize(
    ("family", "shape", "words"),
    [
        ("imagefolder", None, ("<class>/<image>", "{train,val,test}/<class>/", "<group>/<class>/<image>")),
        ("table", None, ("CSV or Parquet", "family.group_column", "family.target_columns")),
        ("omniglot", [1, 28, 28], ("github.com/brendenlake/omniglot", "images_background.zip")),
    ],
)
def test_info_says_where_the_data_comes_from_and_its_layout(monkeypatch, family, shape, words):
    monkeypatch.delenv("MAML_TUNE_DATA", raising=False)
    data = json.loads(invoke("plugins", "info", family, "--json").stdout)
    assert data["input_shape"] == shape  # an image folder's channels, a table's columns are the data's
    assert all(w in data["data"] for w in words)
    text = invoke("plugins", "info", family)
    assert text.exit_code == 0 and "data: " in text.stdout
    assert ("set by the data" in text.stdout) == (shape is None)


def test_info_of_unknown_or_broken_plugin_is_an_error(plugins_dir):
    (plugins_dir / "crashes.py").write_text("1/0\n")
    broken = invoke("plugins", "info", "crashes")
    assert broken.exit_code == 1 and "ZeroDivisionError" in broken.stderr and "crashes.py" in broken.stderr
    unknown = invoke("plugins", "info", "nope")
    assert unknown.exit_code == 1 and "unknown task family 'nope'" in unknown.stderr


def test_check_reports_each_failure_of_a_broken_plugin(plugins_dir):
    (plugins_dir / "sloppy.py").write_text(SLOPPY)
    result = invoke("plugins", "check", "sloppy", "--json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["load"]["passed"]
    expected = {
        "contract": "unknown setting 'algo.not_a_setting'",
        "shapes_and_dtypes": "inputs must be float32",
        "seeded_determinism": "same seed produced different tasks",
        "split_disjointness": "also appear in 'train' tasks",
        "vmap_safety": "",
        "learns": "",
    }
    for name, reason in expected.items():
        assert not checks[name]["passed"] and checks[name]["reason"], name
        assert reason in checks[name]["reason"], (name, checks[name]["reason"])
    table = invoke("plugins", "check", "sloppy")
    assert table.exit_code == 1
    assert table.stdout.count("FAIL") == 6 and "1/7 checks passed" in table.stdout


def test_check_of_a_plugin_that_does_not_load(plugins_dir):
    (plugins_dir / "crashes.py").write_text("raise RuntimeError('boom')\n")
    result = invoke("plugins", "check", "crashes", "--json")
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["checks"]
    assert checks[0] == {"check": "load", "passed": False, "reason": "RuntimeError: boom"}
    assert all(not c["passed"] and c["skipped"] and "not run" in c["reason"] for c in checks[1:])


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_new_skeleton_passes_check_and_trains(plugins_dir, tmp_path, kind):
    result = invoke("plugins", "new", "my_family", "--kind", kind)
    assert result.exit_code == 0, result.output
    path = plugins_dir / "my_family.py"
    assert path.is_file() and "class MyFamily(TaskFamily)" in path.read_text()
    checked = invoke("plugins", "check", "my_family", "--json")
    assert checked.exit_code == 0, checked.stdout
    assert json.loads(checked.stdout)["passed"]
    listed = {p["name"]: p for p in json.loads(invoke("plugins", "list", "--json").stdout)}
    assert listed["my_family"]["status"] == "ok" and listed["my_family"]["kind"] == kind
    if kind == "classification":  # the regression skeleton trains in the two-trial search test
        trained = invoke("train", "--family", "my_family", *QUICK_TRAIN, "--out", str(tmp_path / "run"))
        assert trained.exit_code == 0, trained.output


def test_new_refuses_bad_and_taken_names(plugins_dir):
    assert invoke("plugins", "new", "Bad-Name").exit_code == 2
    taken = invoke("plugins", "new", "sinusoid")
    assert taken.exit_code == 2 and "already exists (built-in)" in taken.stderr
    assert invoke("plugins", "new", "fresh").exit_code == 0
    again = invoke("plugins", "new", "fresh")
    assert again.exit_code == 2 and "--force" in again.stderr
    assert invoke("plugins", "new", "fresh", "--kind", "classification", "--force").exit_code == 0
    assert 'kind = "classification"' in (plugins_dir / "fresh.py").read_text()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("maml_tune.cli.search") is None, reason="search not available")
def test_new_skeleton_completes_a_two_trial_search(plugins_dir, tmp_path):
    assert invoke("plugins", "new", "quick").exit_code == 0
    result = invoke(
        "search", "--family", "quick", "--n-trials", "2", "--storage", f"sqlite:///{tmp_path / 's.db'}",
        "--checkpoints", str(tmp_path / "ck"), "--device", "cpu", "--pruner", "none",
        # Seeded: the skeleton's space includes configurations (e.g. Meta-SGD at a high
        # inner lr) that diverge and are pruned with a reason, as they should be.
        "--seed", "0",
        "--set", "budget.iterations=10", "--set", "budget.val_interval=5",
        "--set", "budget.val_tasks=10", "--set", "budget.eval_tasks=10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["family"] == "quick" and summary["counts"]["complete"] == 2


def test_plugins_dir_option_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("MAML_TUNE_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path / "elsewhere"))  # restored afterwards
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "lines.py").write_text(lines("lines"))
    result = invoke("--plugins-dir", str(folder), "plugins", "list", "--json")
    assert result.exit_code == 0
    assert "lines" in {p["name"] for p in json.loads(result.stdout)}
    assert sys.modules["maml_tune_plugins.lines"].__file__ == str(folder / "lines.py")
