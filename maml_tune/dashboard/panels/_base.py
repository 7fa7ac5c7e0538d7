"""What a dashboard panel is (:class:`DashboardPanel`) and the registry the layout reads (:data:`PANELS`)."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the view module needs no panel; a runtime import would only slow the start
    from rich.console import RenderableType

    from maml_tune.dashboard.state import View


class DashboardPanel(abc.ABC):
    """One box of the dashboard, drawn from a :class:`~maml_tune.dashboard.state.View`.

    Subclass it in a new module of this package and decorate the class with :func:`register`:
    the package imports every module in it, and :func:`maml_tune.dashboard.render.dashboard`
    places each registered panel by the attributes below.
    """

    name: str
    """Unique, for the registry and error messages."""
    column: Literal["top", "left", "right"]
    """``top``: full width above the columns; ``left``/``right``: the column on wide terminals."""
    wide_order: int
    """Position inside its column on wide terminals (two columns)."""
    narrow_order: int
    """Position in the single column of narrow terminals (after the ``top`` panels)."""

    def shown(self, view: View) -> bool:
        """Whether this panel belongs on this view (called on every render); default: always."""
        return True

    @abc.abstractmethod
    def render(self, view: View, width: int, chart_height: int) -> RenderableType:
        """The panel for ``view``, at most ``width`` columns wide; charts get ``chart_height`` rows.

        Called on every render (every refresh while watching); must not change ``view``.
        """


PANELS: dict[str, DashboardPanel] = {}
"""Every registered panel by name, in registration order."""


def register(cls: type[DashboardPanel]) -> type[DashboardPanel]:
    """Class decorator: add one instance of ``cls`` to :data:`PANELS`."""
    if cls.name in PANELS:
        raise ValueError(f"a dashboard panel named {cls.name!r} is already registered")
    PANELS[cls.name] = cls()
    return cls
