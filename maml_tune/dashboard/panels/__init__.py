"""The dashboard's panels, one module each; importing the package registers them all.

Adding a panel is one new module here (a :class:`DashboardPanel` subclass decorated with
:func:`register`) plus its test: every module of the package is imported below, so nothing
else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil

from maml_tune.dashboard.panels._base import PANELS, DashboardPanel, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PANELS", "DashboardPanel", "register"]
