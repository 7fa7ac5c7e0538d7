"""Project-level invariants: dependency direction, README ↔ CI, packaging."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def __init__(self, names): self.names = names
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in self.names:
                raise ImportError(f"{{name}} is blocked in this test")
    sys.meta_path.insert(0, Block({blocked!r}))
    """
)


def _import_with_blocked(modules: list[str], blocked: set[str]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=blocked) + "\n".join(f"import {m}" for m in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def _package_modules(subpackage: str) -> list[str]:
    base = ROOT / "maml_tune" / subpackage
    return [
        "maml_tune."
        + ".".join(p.relative_to(ROOT / "maml_tune").with_suffix("").parts).removesuffix(".__init__")
        for p in sorted(base.rglob("*.py"))
    ]


def test_core_imports_without_optuna_typer_rich():
    result = _import_with_blocked(_package_modules("core"), {"optuna", "typer", "rich"})
    assert result.returncode == 0, result.stderr


def test_families_import_without_optuna_typer_rich():
    result = _import_with_blocked(_package_modules("families"), {"optuna", "typer", "rich"})
    assert result.returncode == 0, result.stderr


def test_search_imports_without_typer_rich():
    modules = _package_modules("search")
    result = _import_with_blocked(modules, {"typer", "rich"})
    assert result.returncode == 0, result.stderr


# Who may import whom inside the package: a layer imports only layers below it (cli may also
# use dashboard, which renders for it). Top-level modules (errors) are below everything; the
# package's own __init__ is the public facade that re-exports from above.
LAYERS = {"core": 0, "families": 1, "search": 2, "dashboard": 3, "cli": 4}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every maml_tune import in ``path``, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maml_tune"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("maml_tune")]
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], -1) if len(parts) > 1 else -1


def test_internal_layering_points_one_way_without_private_cross_module_imports():
    problems = []
    for path in sorted((ROOT / "maml_tune").rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for target, names in _imports(path):
            if module != "maml_tune" and _layer(target) > _layer(module):
                problems.append(f"{module} imports {target} (a higher layer)")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != package:
                problems.append(f"{module} imports private {', '.join(private)} from {target}")
    assert problems == []


def test_the_layering_check_sees_an_upward_and_a_private_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from maml_tune.search.storage import _hidden\n")
    assert _imports(probe) == [("maml_tune.search.storage", ["_hidden"])]
    assert _layer("maml_tune.search.storage") > _layer("maml_tune.core.config") > _layer("maml_tune.errors")


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [
        line.strip()
        for line in readme.splitlines()
        if line.strip().startswith("pip install torch==2.13.0") and "pytest" in line
    ]
    assert len(commands) == 1, "the README must show exactly one test command"
    assert commands[0] in ci.splitlines()


def test_builtin_families_are_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="maml_tune.task_families")}
    assert "sinusoid" in names


@pytest.mark.parametrize("module", ["maml_tune.cli.main"])
def test_help_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr


def test_lint_is_clean():
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], capture_output=True, text=True, cwd=ROOT
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
