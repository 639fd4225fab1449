"""Exact counts over every session, for a diagnosis that reads its threads from a sample.

:func:`~loop_middleware.diagnose.diagnose` finds mechanisms, tests version jumps and picks
evidence in the threads it is given. At 100k sessions and more, loading them all costs far more
than the diagnosis itself, so :func:`~loop_middleware.diagnose.diagnose_store` gives it a
deterministic uniform sample and a :class:`Population`: the numbers every diagnosis reports
(sessions affected, share of sessions, rates in the intent and elsewhere, lift, Fisher p, impact)
are then counted by the database over every session, not estimated from the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Population"]


@dataclass
class Population:
    """Every session's counts, beside the sample :func:`diagnose` reads its threads from."""

    total: int
    """Sessions in the store (threads with at least one turn)."""
    sample: int
    """Sessions in the sample given to :func:`diagnose` as ``threads``."""
    sessions: Mapping[str | None, int]
    """Sessions per intent (``None``: unassigned)."""
    count_affected: Callable[[Sequence[str], str | None], tuple[int, int]]
    """``(kinds, intent) -> (sessions of the intent with any of kinds, such sessions elsewhere)``
    (e.g. :meth:`~loop_middleware.store.Store.affected_sessions`)."""
    _cache: dict[tuple[tuple[str, ...], str | None], tuple[int, int]] = field(
        default_factory=dict, repr=False)

    @property
    def scale(self) -> float:
        """Sessions per sampled session: what turns a count made in the sample (the sessions a
        version change added) into an estimate for every session."""
        return self.total / self.sample if self.sample else 1.0

    def affected(self, kinds: Sequence[str], intent_id: str | None) -> tuple[int, int]:
        """:attr:`count_affected`, asked once per (kinds, intent)."""
        key = (tuple(sorted(set(kinds))), intent_id)
        if key not in self._cache:
            self._cache[key] = self.count_affected(key[0], intent_id)
        return self._cache[key]
