"""The one interface the dashboard reads a study through (:class:`StudySource`)."""

from __future__ import annotations

import abc
from collections.abc import Iterable

from maml_tune.dashboard._records import RefreshStats, StudyInfo, TrialRecord
from maml_tune.errors import StudyError
from maml_tune.search.storage import mask_url


class StudySource(abc.ABC):
    """A read-only view of one study's trials, kept up to date by :meth:`refresh`.

    The dashboard (:class:`~maml_tune.dashboard.state.Dashboard`, the live loop and the CLI)
    only uses the attributes and methods below, so a new way of reading studies is one subclass.
    A subclass sets, in its ``__init__``:

    * ``url``: the storage URL (shown masked by :attr:`masked_url`);
    * ``info``: the study's :class:`StudyInfo` (it does not change while the source is open);
    * ``trials``: an empty ``{trial_id: TrialRecord}`` dict, filled by :meth:`refresh`;
    * ``last``: a :class:`RefreshStats` (the statistics of the latest :meth:`refresh`).

    Sources never write to the study.
    """

    kind: str = "abstract"
    """A short name shown in the dashboard's footer (``sql``, ``optuna``)."""

    url: str
    info: StudyInfo
    trials: dict[int, TrialRecord]
    last: RefreshStats

    @abc.abstractmethod
    def refresh(self) -> RefreshStats:
        """Bring :attr:`trials` up to date with the storage.

        Called once when the source is opened and then on every dashboard refresh. It adds the
        trials not seen yet and updates the ones that may have changed (state, times, values,
        params); it may leave the per-trial details (:meth:`details`) as they were. Returns the
        counts of new and changed trials and stores them in :attr:`last`.
        """

    @abc.abstractmethod
    def details(self, records: Iterable[TrialRecord], *, force: bool = False) -> None:
        """Fill in the user/system attributes, intermediate values and heartbeats of ``records``.

        Called by each view for the few trials its panels show (best, curves, running), so it
        may change only those records' detail fields. A source whose :meth:`refresh` already
        loads the details does nothing here; ``force`` reloads even finished trials.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections; called once, when the dashboard is done with the source."""

    # the rest is shared: plain reads of :attr:`trials`
    def by_number(self, number: int) -> TrialRecord | None:
        return next((t for t in self.trials.values() if t.number == number), None)

    def records(self) -> list[TrialRecord]:
        """Every trial seen so far, by number."""
        return sorted(self.trials.values(), key=lambda t: t.number)

    def trial(self, number: int) -> TrialRecord:
        """One trial with everything loaded (refreshes first when the number is not known yet)."""
        if self.by_number(number) is None:
            self.refresh()
        record = self.by_number(number)
        if record is None:
            raise StudyError(f"study {self.info.name!r} has no trial {number}")
        self.details([record], force=True)
        return record

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
