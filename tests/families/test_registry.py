"""The family registry: three sources, import-free discovery, isolated loading, recorded errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maml_tune.errors import ConfigError, FamilyError, PluginError
from maml_tune.families.registry import LOCAL_MODULE_PREFIX, Registry, contract_problem

BUILTINS = ["imagefolder", "omniglot", "sinusoid", "table", "table-classification"]

GOOD = """
from dataclasses import dataclass
import torch
from maml_tune.core.tasks import TaskBatch
from maml_tune.families import TaskFamily, option

@dataclass(frozen=True)
class Opts:
    k_shot: int = option(5, "support points", min=1, max=50)
    slope_max: float = option(2.0, "largest slope", min=0.0)

class Lines(TaskFamily):
    name = "{name}"
    description = "lines y = a x"
    kind = "regression"
    Options = Opts
    input_shape = (1,)
    output_size = 1

    def default_architecture(self):
        return {{"kind": "mlp", "depth": 1, "width": 8}}

    def sample(self, split, n_tasks, generator, device):
        k = self.options.k_shot
        a = torch.rand(n_tasks, 1, 1, generator=generator) * self.options.slope_max
        x = torch.rand(n_tasks, 2 * k, 1, generator=generator)
        return TaskBatch(x[:, :k], a * x[:, :k], x[:, k:], a * x[:, k:])
"""


def good_plugin(name: str) -> str:
    return textwrap.dedent(GOOD).format(name=name)


def broken(old: str, new: str) -> str:
    """The good plugin named ``broken`` with ``old`` replaced by ``new``."""
    text = good_plugin("broken")
    assert old in text
    return text.replace(old, new)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


def make_distribution(
    root: Path, dist: str, version: str, entries: dict[str, str], modules: dict[str, str]
):
    """A real installed distribution: ``<dist>-<version>.dist-info`` with METADATA and entry_points.txt."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[maml_tune.task_families]\n{lines}\n")
    for module, text in modules.items():
        (root / f"{module}.py").write_text(text)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MAML_TUNE_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("MAML_TUNE_PLUGINS_DIR", raising=False)


@pytest.fixture
def package_on_path(tmp_path, monkeypatch):
    """Install ``wiggle-families 1.2`` (family ``wiggle``) by putting its dist-info on sys.path."""
    site = tmp_path / "site"
    make_distribution(
        site,
        "wiggle-families",
        "1.2",
        {"wiggle": "wiggle_pkg:Lines"},
        {"wiggle_pkg": good_plugin("wiggle")},
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("wiggle_pkg", None)


def test_builtin_families_come_from_the_entry_point_group(tmp_path):
    plugins = {p.name: p for p in Registry(tmp_path / "none").plugins()}
    sinusoid = plugins["sinusoid"]
    assert sinusoid.ok and sinusoid.source.kind == "builtin" and str(sinusoid.source) == "built-in"
    assert sinusoid.source.distribution == "maml-tune" and sinusoid.source.version
    assert sinusoid.to_dict()["status"] == "ok" and sinusoid.kind == "regression"


def test_discovery_imports_nothing(tmp_path):
    marker = tmp_path / "imported"
    write(tmp_path / "plugins", "noisy", f"open({str(marker)!r}, 'w').close()\n")
    registry = Registry(tmp_path / "plugins")
    assert [p.name for p in registry.discover() if p.source.kind == "local"] == ["noisy"]
    assert not marker.exists()
    registry.get("sinusoid")  # loading one family imports only that one
    assert not marker.exists()
    registry.plugins()
    assert marker.exists()


def test_local_plugin_is_loaded_under_its_own_module_name(tmp_path):
    write(tmp_path, "lines", good_plugin("lines"))
    write(tmp_path, "_helper", "raise RuntimeError('helpers are not plugins')\n")
    registry = Registry(tmp_path)
    family = registry.get("lines")
    assert family.__module__ == f"{LOCAL_MODULE_PREFIX}.lines"
    assert str(tmp_path) not in sys.path
    plugin = registry.plugin("lines")
    assert plugin.source.kind == "local" and plugin.source.path == str(tmp_path / "lines.py")
    assert registry.get("lines") is family  # loaded once per registry
    assert [p.name for p in registry.plugins() if p.source.kind == "local"] == ["lines"]
    instance = registry.create("lines", {"k_shot": "3"})
    assert instance.options.k_shot == 3


def test_package_plugin_is_found_through_a_real_entry_point(tmp_path, package_on_path):
    registry = Registry(tmp_path / "none")
    plugin = registry.plugin("wiggle")
    assert plugin.ok, plugin.error
    assert plugin.source.kind == "package"
    assert str(plugin.source) == "package wiggle-families 1.2"
    assert (
        plugin.to_dict()["version"] == "1.2"
        and plugin.to_dict()["distribution"] == "wiggle-families"
    )
    assert registry.create("wiggle").name == "wiggle"


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("raise RuntimeError('no GPU driver found')\n", "RuntimeError: no GPU driver found"),
        ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        (broken("    def sample(", "    def _sample("), "missing contract method(s): sample"),
        (broken('kind = "regression"', 'kind = "clustering"'), "kind must be one of"),
        (broken("option(5,", "option('five',"), "default of option 'k_shot': expected an integer"),
        (broken("@dataclass(frozen=True)", "@dataclass"), "frozen dataclass"),
        (
            good_plugin("other"),
            "expected one TaskFamily subclass with name = 'broken', found 'other'",
        ),
    ],
    ids=[
        "raises",
        "import-error",
        "sys-exit",
        "keyboard-interrupt",
        "missing-method",
        "bad-kind",
        "bad-default",
        "not-frozen",
        "wrong-name",
    ],
)
def test_a_broken_plugin_is_a_recorded_error_and_others_still_load(tmp_path, text, cause):
    write(tmp_path, "broken", text)
    write(tmp_path, "lines", good_plugin("lines"))
    registry = Registry(tmp_path)
    plugins = {p.name: p for p in registry.plugins()}  # never raises
    assert not plugins["broken"].ok and cause in plugins["broken"].error
    assert plugins["lines"].ok and plugins["sinusoid"].ok
    assert registry.names() == sorted(["lines", *BUILTINS])
    with pytest.raises(PluginError) as info:
        registry.get("broken")
    message = str(info.value)
    assert (
        "'broken'" in message
        and f"local file {tmp_path / 'broken.py'}" in message
        and cause in message
    )


def test_duplicate_names_are_errors_naming_both_sources(tmp_path, package_on_path):
    write(tmp_path, "wiggle", good_plugin("wiggle"))
    registry = Registry(tmp_path)
    duplicates = [p for p in registry.plugins() if p.name == "wiggle"]
    assert len(duplicates) == 2 and not any(p.ok for p in duplicates)
    for plugin in duplicates:
        assert "duplicate family name 'wiggle'" in plugin.error
        assert (
            "package wiggle-families 1.2" in plugin.error
            and str(tmp_path / "wiggle.py") in plugin.error
        )
    assert registry.get("sinusoid").name == "sinusoid"
    with pytest.raises(PluginError, match="duplicate"):
        registry.get("wiggle")


def test_load_plugins_env_limits_packages_and_local_files(tmp_path, package_on_path, monkeypatch):
    marker = tmp_path / "imported"
    write(tmp_path / "p", "lines", good_plugin("lines"))
    write(tmp_path / "p", "noisy", f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.setenv("MAML_TUNE_LOAD_PLUGINS", "")
    assert Registry(tmp_path / "p").names() == BUILTINS
    monkeypatch.setenv("MAML_TUNE_LOAD_PLUGINS", " lines , wiggle")
    assert Registry(tmp_path / "p").names() == sorted(["lines", "wiggle", *BUILTINS])
    assert not marker.exists()
    with pytest.raises(
        FamilyError, match="MAML_TUNE_LOAD_PLUGINS limits plugins to: lines, wiggle"
    ):
        Registry(tmp_path / "p").get("noisy")


def test_plugins_dir_comes_from_argument_then_env_then_default(tmp_path, monkeypatch):
    assert Registry().plugins_dir == Path("plugins")
    monkeypatch.setenv("MAML_TUNE_PLUGINS_DIR", str(tmp_path))
    assert Registry().plugins_dir == tmp_path
    assert Registry(tmp_path / "x").plugins_dir == tmp_path / "x"


def test_unknown_family_and_invalid_options_are_reported(tmp_path):
    write(tmp_path, "lines", good_plugin("lines"))
    registry = Registry(tmp_path)
    with pytest.raises(
        FamilyError,
        match=r"unknown task family 'nope' \(available: imagefolder, lines, omniglot, sinusoid, table, ",
    ):
        registry.get("nope")
    with pytest.raises(
        ConfigError, match=r"family 'lines' option 'k_shot': expected <= 50, got 99"
    ):
        registry.create("lines", {"k_shot": 99})
    expected = r"family 'lines' option 'slope_max': expected a number, got 'steep'"
    with pytest.raises(ConfigError, match=expected):
        registry.create("lines", {"slope_max": "steep"})
    with pytest.raises(ConfigError, match="has no option 'n_way'"):
        registry.create("lines", {"n_way": 3})


def test_a_plugin_constructor_crash_becomes_a_plugin_error(tmp_path):
    text = (
        good_plugin("lines")
        + "\n    def __init__(self, options=None):\n        raise KeyError('oops')\n"
    )
    write(tmp_path, "lines", text)
    expected = r"'lines' \(local file .*lines.py\) failed to initialise: KeyError"
    with pytest.raises(PluginError, match=expected):
        Registry(tmp_path).create("lines")


def test_contract_problem_accepts_builtins_and_rejects_non_families():
    from maml_tune.families.sinusoid import Sinusoid

    assert contract_problem(Sinusoid) is None
    assert "not a TaskFamily subclass" in contract_problem(object)


def test_nothing_is_imported_from_the_current_directory(tmp_path):
    """Only the configured plugins folder is scanned: family files or packages in the working
    directory are neither listed nor imported."""
    marker = tmp_path / "imported"
    (tmp_path / "cwdfam.py").write_text(
        good_plugin("cwdfam") + f"\nopen({str(marker)!r}, 'w').close()\n"
    )
    make_distribution(
        tmp_path,
        "cwd-dist",
        "0.1",
        {"cwdpkg": "cwdpkg_mod:Lines"},
        {"cwdpkg_mod": good_plugin("cwdpkg") + f"\nopen({str(marker)!r}, 'w').close()\n"},
    )
    script = Path(sys.executable).with_name("maml-tune")
    if not script.exists():
        pytest.skip("the maml-tune console script is not installed next to this Python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAML_TUNE_")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(script), "plugins", "list", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    names = [p["name"] for p in json.loads(result.stdout)]
    assert "sinusoid" in names and "cwdfam" not in names and "cwdpkg" not in names
    assert not marker.exists()
