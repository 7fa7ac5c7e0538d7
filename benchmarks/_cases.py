"""``tests/core/cases.py`` for the benchmark scripts (the tests folder is no package).

Importing this puts the repository root first on ``sys.path`` too, so the scripts run
against this checkout's ``maml_tune`` with nothing but python3 and torch installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location(
    "maml_tune_tests_core_cases", ROOT / "tests" / "core" / "cases.py"
)
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases
_spec.loader.exec_module(cases)
