"""Idempotent upserts of ``(table, values)`` rows: how a repeated or concurrent write merges.

Every row is keyed by its primary key (capture's own ids), so writing a batch twice, replaying a
spool, or several host processes writing the same thread never duplicates anything. What a
second write of a row changes:

- most columns take the newer value (a turn's end completes its start);
- some keep the first value ever written (``_KEEP_FIRST``);
- times keep the earliest or the latest value (``_EARLIEST`` / ``_LATEST``), whatever order the
  writes land in: with several processes capturing turns of one thread, the batch of a process
  that lags behind must not move the thread's start later or its last update back.

Rows are written tables in a fixed order and rows by primary key, so two writers that touch the
same rows lock them in the same order and never deadlock each other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case
from sqlmodel import Session, SQLModel

from ._tables import (
    DiagnosisRow,
    FeedbackRow,
    FixRow,
    IntentAssignmentRow,
    IntentRow,
    LLMCallRow,
    MetaRow,
    PromptVersionRow,
    SignalRow,
    ThreadRow,
    ToolCallRow,
    TurnRow,
)

__all__ = ["TABLES", "TABLE_ORDER", "merge_row", "pk_key", "upsert"]

TABLES: dict[str, type[SQLModel]] = {
    "thread": ThreadRow,
    "turn": TurnRow,
    "llm_call": LLMCallRow,
    "tool_call": ToolCallRow,
    "prompt_version": PromptVersionRow,
    "feedback": FeedbackRow,
    "signal": SignalRow,
    "intent": IntentRow,
    "intent_assignment": IntentAssignmentRow,
    "diagnosis": DiagnosisRow,
    "fix": FixRow,
    # small state written together with results (e.g. the intent model with its assignments)
    "meta": MetaRow,
}
TABLE_ORDER = {name: i for i, name in enumerate(TABLES)}

# Columns an upsert must not overwrite once set (the first sighting wins).
_KEEP_FIRST = {
    "thread": {"source"},
    # when a root cause was first diagnosed / a fix first proposed: kept across re-saves
    "diagnosis": {"created_at"},
    "fix": {"created_at"},
}
_EARLIEST = {"thread": {"created_at"}, "prompt_version": {"first_seen"}}
_LATEST = {"thread": {"updated_at"}}


def _ts(d: datetime) -> float:
    return (d if d.tzinfo is not None else d.replace(tzinfo=UTC)).timestamp()


def _pick_time(a: Any, b: Any, latest: bool) -> Any:
    if a is None or b is None:
        return b if a is None else a
    if not (isinstance(a, datetime) and isinstance(b, datetime)):
        return b
    return (b if _ts(b) > _ts(a) else a) if latest else (b if _ts(b) < _ts(a) else a)


def pk_key(pk: tuple[Any, ...]) -> tuple[str, ...]:
    """A sort key for primary keys (the lock order)."""
    return tuple("" if v is None else str(v) for v in pk)


def merge_row(table: str, prev: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Two writes of one row in the same batch, merged as the database would merge them."""
    keep = _KEEP_FIRST.get(table, set())
    merged = {**prev, **values}
    merged.update({c: prev[c] for c in keep if prev.get(c) is not None})
    for cols, latest in ((_EARLIEST.get(table, ()), False), (_LATEST.get(table, ()), True)):
        for c in cols:
            if c in prev and c in values:
                merged[c] = _pick_time(prev[c], values[c], latest)
    return merged


def upsert(conn: Any, dialect: str, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` or merge them into the rows already there, in order."""
    model = TABLES[table]
    sa_table = model.__table__  # type: ignore[attr-defined]
    pk_cols = [c.name for c in sa_table.primary_key.columns]
    keep = _KEEP_FIRST.get(table, set())
    earliest, latest = _EARLIEST.get(table, set()), _LATEST.get(table, set())
    # Consecutive rows of one column set go in one executemany; the rows' order (the lock
    # order) is kept.
    runs: list[tuple[frozenset[str], list[dict[str, Any]]]] = []
    for r in rows:
        shape = frozenset(r)
        if runs and runs[-1][0] == shape:
            runs[-1][1].append(r)
        else:
            runs.append((shape, [r]))
    for cols, group in runs:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(sa_table)
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(sa_table)
        else:  # any other database: slower, portable merge
            with Session(bind=conn) as s:
                for r in group:
                    s.merge(model(**r))
                s.flush()
            continue
        update: dict[str, Any] = {}
        for c in cols:
            if c in pk_cols or c in keep:
                continue
            new, old = stmt.excluded[c], sa_table.c[c]
            if c in earliest or c in latest:
                wins = new > old if c in latest else new < old
                update[c] = case((old.is_(None), new), (new.is_(None), old), (wins, new), else_=old)
            else:
                update[c] = new
        stmt = (
            stmt.on_conflict_do_update(index_elements=pk_cols, set_=update)
            if update
            else stmt.on_conflict_do_nothing(index_elements=pk_cols)
        )
        # executemany of one cached statement: a multi-row VALUES statement would be compiled
        # anew for every batch (its shape changes with the row count), which cost more than the
        # insert itself.
        conn.execute(stmt, group)
