"""Counts computed by the database: intent x signal kind x prompt version x day, with SQL GROUP BY.

Diagnosis needs, for every cell, how many sessions an intent has, how many of them show a signal
kind, and how those split by prompt version and over time. Counting that in Python means loading
every thread; here the database does it in one statement per question (SQLite and PostgreSQL
alike, through SQLAlchemy Core), so it stays cheap at any number of threads.

Definitions (the same as the diagnosis stage's, so its numbers can be read from here):

- A **session** is a thread with at least one turn (what :meth:`Store.list_threads` returns).
- Its **intent** is its ``loop_intent_assignment`` row (``None``: unassigned or not yet
  extracted); with ``leaf=True`` the sub-intent when it has one.
- Its **prompt version** is its *main* one: the version used by most of its turns, first-used on
  ties, where a turn's version is the first (by ``seq``) LLM call's first prompt (as
  ``diagnose``'s ``thread_main_prompt``). ``None`` when no call recorded a prompt.
- Its **day** is the UTC date of its ``created_at`` (its first turn's start when that is missing).
- A session is **affected** by a signal kind when it has at least one stored signal of that kind
  (distinct sessions, not signals). Kinds in ``exclude_opening`` do not count on a thread's first
  turn (``turn_index = 0``): user-side signals there say nothing about the agent, which had not
  answered yet (``DiagnoseConfig.opening_excluded_signals``).

Each session falls in exactly one ``(intent, prompt version, day)`` group, so sums over any of the
three keys are exact totals (``sum`` of :meth:`session_counts` over days = sessions per intent and
version, and so on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, nulls_first, or_, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ._tables import IntentAssignmentRow, LLMCallRow, SignalRow, ThreadRow, TurnRow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["AggregateQueries", "SessionCount", "SignalCount"]

_ASSIGNMENT = IntentAssignmentRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SessionCount:
    """Sessions of one ``(intent, prompt version, day)`` group."""

    intent_id: str | None
    prompt_sha256: str | None
    day: date | None
    sessions: int


@dataclass(frozen=True, slots=True)
class SignalCount:
    """Sessions of one ``(intent, signal kind, prompt version, day)`` group that show the kind."""

    intent_id: str | None
    kind: str
    prompt_sha256: str | None
    day: date | None
    sessions: int


def _day(value: Any) -> date | None:
    """SQLite's ``date()`` gives text, PostgreSQL's a date."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


class AggregateQueries:
    """GROUP BY counts over the store's tables (mixed into :class:`~loop_middleware.store.Store`)."""

    engine: Engine

    @property
    def safe_url(self) -> str:  # pragma: no cover - the Store's own property replaces it
        raise NotImplementedError

    # --- building blocks --------------------------------------------------------------------

    @staticmethod
    def _sessions_subquery() -> Any:
        """``(thread_id, day)`` of every thread with at least one turn."""
        th, tu = ThreadRow.__table__.c, TurnRow.__table__.c  # type: ignore[attr-defined]
        first = (select(tu.thread_id, func.min(tu.started_at).label("first_start"))
                 .group_by(tu.thread_id).subquery("first_turn"))
        return (select(th.thread_id, func.date(func.coalesce(th.created_at, first.c.first_start))
                       .label("day"))
                .join(first, first.c.thread_id == th.thread_id)
                .subquery("sessions"))

    @staticmethod
    def _main_prompt_subquery() -> Any:
        """``(thread_id, sha)``: each thread's main prompt version (see the module docstring)."""
        tu, lc = TurnRow.__table__.c, LLMCallRow.__table__.c  # type: ignore[attr-defined]
        sha = lc.prompt_shas[0].as_string()
        calls = (select(lc.turn_id, lc.thread_id, sha.label("sha"),
                        func.row_number().over(partition_by=lc.turn_id, order_by=(lc.seq, lc.id))
                        .label("rn"))
                 .where(sha.is_not(None)).subquery("calls"))
        positions = (select(tu.id, tu.thread_id,
                            func.row_number().over(partition_by=tu.thread_id,
                                                   order_by=(nulls_first(tu.started_at), tu.id))
                            .label("pos"))
                     .subquery("positions"))
        per_sha = (select(positions.c.thread_id, calls.c.sha, func.count().label("n"),
                          func.min(positions.c.pos).label("first"))
                   .join(calls, and_(calls.c.turn_id == positions.c.id,
                                     calls.c.thread_id == positions.c.thread_id, calls.c.rn == 1))
                   .group_by(positions.c.thread_id, calls.c.sha).subquery("per_sha"))
        ranked = (select(per_sha.c.thread_id, per_sha.c.sha,
                         func.row_number().over(partition_by=per_sha.c.thread_id,
                                                order_by=(per_sha.c.n.desc(), per_sha.c.first))
                         .label("r"))
                  .subquery("ranked"))
        return select(ranked.c.thread_id, ranked.c.sha).where(ranked.c.r == 1).subquery("main")

    @staticmethod
    def _intent_column(leaf: bool) -> Any:
        a = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        return func.coalesce(a.sub_intent_id, a.intent_id) if leaf else a.intent_id

    def _rows(self, query: Any, what: str) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query))
        except SQLAlchemyError as exc:
            raise StoreError(f"counting {what} in {self.safe_url} failed: {exc}") from exc

    # --- the counts -------------------------------------------------------------------------

    def session_counts(self, *, leaf: bool = False) -> list[SessionCount]:
        """Sessions per ``(intent, main prompt version, day)``.

        Args:
            leaf: Group by sub-intent where a thread has one (else by top-level intent).
        """
        a = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        s, m = self._sessions_subquery(), self._main_prompt_subquery()
        intent = self._intent_column(leaf).label("intent_id")
        q = (select(intent, m.c.sha, s.c.day, func.count())
             .select_from(s)
             .outerjoin(_ASSIGNMENT, a.thread_id == s.c.thread_id)
             .outerjoin(m, m.c.thread_id == s.c.thread_id)
             .group_by(intent, m.c.sha, s.c.day))
        return [SessionCount(r[0], r[1], _day(r[2]), int(r[3])) for r in self._rows(q, "sessions")]

    def signal_counts(self, *, exclude_opening: Iterable[str] = (),
                      leaf: bool = False) -> list[SignalCount]:
        """Affected sessions per ``(intent, signal kind, main prompt version, day)``.

        Args:
            exclude_opening: Signal kinds that do not count on a thread's first turn.
            leaf: Group by sub-intent where a thread has one.
        """
        a = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        sg = SignalRow.__table__.c  # type: ignore[attr-defined]
        excluded = sorted(set(exclude_opening))
        hits = select(sg.thread_id, sg.kind)
        if excluded:
            hits = hits.where(or_(sg.kind.not_in(excluded), sg.turn_index.is_(None),
                                  sg.turn_index != 0))
        affected = hits.distinct().subquery("affected")
        s, m = self._sessions_subquery(), self._main_prompt_subquery()
        intent = self._intent_column(leaf).label("intent_id")
        q = (select(intent, affected.c.kind, m.c.sha, s.c.day, func.count())
             .select_from(affected)
             .join(s, s.c.thread_id == affected.c.thread_id)
             .outerjoin(_ASSIGNMENT, a.thread_id == s.c.thread_id)
             .outerjoin(m, m.c.thread_id == s.c.thread_id)
             .group_by(intent, affected.c.kind, m.c.sha, s.c.day))
        return [SignalCount(r[0], r[1], r[2], _day(r[3]), int(r[4]))
                for r in self._rows(q, "signals")]

    def intent_totals(self, *, leaf: bool = False) -> dict[str | None, int]:
        """Sessions per intent (``None``: unassigned)."""
        a = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        s = self._sessions_subquery()
        intent = self._intent_column(leaf).label("intent_id")
        q = (select(intent, func.count()).select_from(s)
             .outerjoin(_ASSIGNMENT, a.thread_id == s.c.thread_id)
             .group_by(intent))
        return {r[0]: int(r[1]) for r in self._rows(q, "sessions per intent")}

    def prompt_version_totals(self) -> dict[str | None, int]:
        """Sessions per main prompt version (``None``: no prompt recorded)."""
        s, m = self._sessions_subquery(), self._main_prompt_subquery()
        q = (select(m.c.sha, func.count()).select_from(s)
             .outerjoin(m, m.c.thread_id == s.c.thread_id).group_by(m.c.sha))
        return {r[0]: int(r[1]) for r in self._rows(q, "sessions per prompt version")}

    def intent_sizes(self, *, leaf: bool = False) -> dict[str | None, int]:
        """Assigned threads per intent, from the assignment table alone (threads without turns
        included): what :class:`~loop_middleware.types.Intent` ``.size`` reports."""
        intent = self._intent_column(leaf).label("intent_id")
        q = select(intent, func.count()).select_from(_ASSIGNMENT).group_by(intent)
        return {r[0]: int(r[1]) for r in self._rows(q, "intent sizes")}

    def affected_sessions(self, kinds: Iterable[str], intent_id: str | None, *,
                          exclude_opening: Iterable[str] = (), leaf: bool = False) -> tuple[int, int]:
        """Sessions with at least one signal of any of ``kinds``: ``(in the intent, elsewhere)``.

        One statement however many sessions: what a diagnosis merging several signal kinds
        reports ("any of them, each session once"), exact at any size. ``intent_id=None`` is the
        unassigned sessions; ``exclude_opening`` as in :meth:`signal_counts`.
        """
        a = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        sg = SignalRow.__table__.c  # type: ignore[attr-defined]
        kinds = sorted(set(kinds))
        if not kinds:
            return 0, 0
        excluded = sorted(set(exclude_opening))
        hits = select(sg.thread_id).where(sg.kind.in_(kinds))
        if excluded:
            hits = hits.where(or_(sg.kind.not_in(excluded), sg.turn_index.is_(None),
                                  sg.turn_index != 0))
        affected = hits.distinct().subquery("affected")
        s = self._sessions_subquery()
        intent = self._intent_column(leaf)
        inside = intent.is_(None) if intent_id is None else func.coalesce(intent == intent_id, False)
        q = (select(inside.label("inside"), func.count())
             .select_from(affected)
             .join(s, s.c.thread_id == affected.c.thread_id)
             .outerjoin(_ASSIGNMENT, a.thread_id == affected.c.thread_id)
             .group_by(inside))
        counts = {bool(r[0]): int(r[1]) for r in self._rows(q, "affected sessions")}
        return counts.get(True, 0), counts.get(False, 0)
