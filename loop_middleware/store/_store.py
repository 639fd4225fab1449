"""The store: SQLite by default, PostgreSQL (or any SQLAlchemy database) through the URL."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from .._text import storable
from ..errors import ConfigError, StoreError
from ..types import (
    Diagnosis,
    Feedback,
    Fix,
    Intent,
    LLMCall,
    Message,
    PromptVersion,
    Signal,
    Thread,
    ToolCall,
    Turn,
)
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

__all__ = ["DEFAULT_URL", "Store"]

logger = logging.getLogger("loop_middleware.store")

_DATA_ERRORS = (DataError, IntegrityError, ProgrammingError)

DEFAULT_URL = "sqlite:///loop.db"

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
}

# Columns an upsert must not overwrite once set (the first sighting wins).
_KEEP_FIRST = {
    "thread": {"created_at", "source"},
    "prompt_version": {"first_seen"},
    # when a root cause was first diagnosed / a fix first proposed: kept across re-saves
    "diagnosis": {"created_at"},
    "fix": {"created_at"},
}


def _now() -> datetime:
    return datetime.now(UTC)


def _resolve_url(url: str | None) -> str:
    url = url or os.environ.get("LOOP_DATABASE_URL") or DEFAULT_URL
    if "://" not in url:
        # A bare path is a SQLite file: friendlier than an SQLAlchemy error.
        url = f"sqlite:///{url}"
    return url


class Store:
    """Where captured threads and the loop's results live.

    Args:
        url: Any SQLAlchemy URL (``sqlite:///loop.db``, ``postgresql+psycopg://u:p@host/db``) or
            a bare file path for SQLite. Defaults to ``$LOOP_DATABASE_URL``, else ``./loop.db``.
        create: Create the tables, or migrate them to the current schema, on open.
        echo: Log SQL (debugging).

    Raises:
        ConfigError: The URL cannot be parsed or its driver is not installed.
        StoreError: The database cannot be reached.
    """

    def __init__(self, url: str | None = None, *, create: bool = True, echo: bool = False) -> None:
        self.url = _resolve_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.url.startswith("sqlite"):
            # Writes come from the background writer thread, reads from the host's.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 5.0}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ImportError, ModuleNotFoundError) as exc:
            raise ConfigError(
                f"the database driver for {self.safe_url} is not installed ({exc}); "
                "for PostgreSQL: pip install 'loop-middleware[postgres]'"
            ) from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types for bad URLs
            raise ConfigError(f"invalid database URL {self.safe_url}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            self.create_tables()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001
            return "<unparseable url>"

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ..."""
        return self.engine.dialect.name

    def create_tables(self) -> None:
        """Create the loop tables, or upgrade them to this version's schema, keeping the data.

        Runs the alembic migrations shipped with the package: an empty database gets every
        table, one created before migrations existed is adopted, an older revision is upgraded.
        Costs one query when the schema is already current.

        Raises:
            StoreError: The database cannot be reached, or its schema is newer than this version.
        """
        from ._migrate import ensure_schema

        try:
            ensure_schema(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {exc}") from exc

    def session(self) -> Session:
        """A new SQLModel session (use as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    # --- writing ----------------------------------------------------------------------------

    def write_rows(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Upsert ``(table, values)`` rows in one transaction (idempotent by primary key).

        Raises:
            StoreError: The write failed; nothing of the batch was committed.
        """
        by_table: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
        for table, values in rows:
            model = TABLES[table]
            values = {k: v if isinstance(v, datetime) else storable(v) for k, v in values.items()}
            pk = tuple(values[c.name] for c in model.__table__.primary_key.columns)  # type: ignore[attr-defined]
            prev = by_table[table].get(pk)
            # Later events of the same row (turn start, then turn end) complete earlier ones,
            # except columns where the first sighting wins.
            if prev:
                keep = _KEEP_FIRST.get(table, set())
                merged = {**prev, **values}
                merged.update({c: prev[c] for c in keep if prev.get(c) is not None})
                by_table[table][pk] = merged
            else:
                by_table[table][pk] = dict(values)
        try:
            with self.engine.begin() as conn:
                for table, pk_rows in by_table.items():
                    self._upsert(conn, table, list(pk_rows.values()))
        except (DBAPIError, OSError) as exc:
            # The database is unreachable, locked or out of space: worth retrying later.
            raise StoreError(f"write to {self.safe_url} failed: {exc.__class__.__name__}: {exc}",
                             transient=not isinstance(exc, _DATA_ERRORS)) from exc
        except (SQLAlchemyError, ValueError, OverflowError) as exc:
            # The rows themselves were refused: retrying the same rows will not help.
            raise StoreError(f"write to {self.safe_url} refused the rows: {exc.__class__.__name__}: {exc}",
                             transient=False) from exc

    def _upsert(self, conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
        model = TABLES[table]
        sa_table = model.__table__  # type: ignore[attr-defined]
        pk_cols = [c.name for c in sa_table.primary_key.columns]
        keep = _KEEP_FIRST.get(table, set())
        # Group rows by their column set: one multi-row statement per shape.
        shapes: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            shapes[frozenset(r)].append(r)
        for cols, group in shapes.items():
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                stmt: Any = pg_insert(sa_table).values(group)
            elif self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                stmt = sqlite_insert(sa_table).values(group)
            else:  # any other database: slower, portable merge
                with Session(bind=conn) as s:
                    for r in group:
                        s.merge(model(**r))
                    s.flush()
                continue
            update = {c: stmt.excluded[c] for c in cols if c not in pk_cols and c not in keep}
            stmt = (
                stmt.on_conflict_do_update(index_elements=pk_cols, set_=update)
                if update
                else stmt.on_conflict_do_nothing(index_elements=pk_cols)
            )
            conn.execute(stmt)

    # --- feedback and outcomes --------------------------------------------------------------

    def add_feedback(
        self,
        thread_id: str,
        *,
        turn_id: str | None = None,
        thumbs: bool | None = None,
        score: float | None = None,
        comment: str | None = None,
        label: str | None = None,
    ) -> Feedback:
        """Attach explicit user feedback to a thread (or one of its turns).

        Give ``thumbs`` (True = up, False = down) or a numeric ``score`` (0 = worst), and/or a
        free-text ``comment``.
        """
        if thumbs is None and score is None and comment is None:
            raise ConfigError("feedback needs thumbs, score or comment")
        if thumbs is not None:
            score = 1.0 if thumbs else 0.0
            label = label or ("thumbs_up" if thumbs else "thumbs_down")
        return self._add_feedback("feedback", thread_id, turn_id, score, label, comment)

    def add_outcome(
        self,
        thread_id: str,
        outcome: str,
        *,
        value: float | None = None,
        turn_id: str | None = None,
        comment: str | None = None,
    ) -> Feedback:
        """Attach a business outcome (``converted``, ``churned``, ``escalated``, ...) to a thread."""
        if not outcome:
            raise ConfigError("outcome must be a non-empty label")
        return self._add_feedback("outcome", thread_id, turn_id, value, outcome, comment)

    def _add_feedback(
        self, kind: str, thread_id: str, turn_id: str | None, score: float | None,
        label: str | None, comment: str | None,
    ) -> Feedback:
        fb = Feedback(
            id=uuid.uuid4().hex, thread_id=thread_id, turn_id=turn_id, kind=kind,  # type: ignore[arg-type]
            score=score, label=label, comment=comment, created_at=_now(),
        )
        self.write_rows([
            ("thread", {"thread_id": thread_id, "created_at": fb.created_at}),
            ("feedback", fb.model_dump()),
        ])
        return fb

    # --- reading ----------------------------------------------------------------------------

    def count_threads(self) -> int:
        """How many threads the store holds."""
        with self.session() as s:
            return int(s.exec(select(func.count()).select_from(ThreadRow)).one()[0])  # type: ignore[call-overload]

    def thread_ids(self, *, since: datetime | None = None) -> list[str]:
        """Thread ids, oldest first; ``since`` keeps threads updated at or after that time."""
        q = select(ThreadRow.__table__.c.thread_id).order_by(  # type: ignore[attr-defined]
            ThreadRow.__table__.c.created_at, ThreadRow.__table__.c.thread_id  # type: ignore[attr-defined]
        )
        if since is not None:
            q = q.where(ThreadRow.__table__.c.updated_at >= since)  # type: ignore[attr-defined]
        with self.session() as s:
            return [r[0] for r in s.execute(q).all()]

    def get_thread(self, thread_id: str) -> Thread | None:
        """One thread with its turns, or None."""
        found = self.list_threads(thread_ids=[thread_id])
        return found[0] if found else None

    def list_threads(
        self,
        *,
        since: datetime | None = None,
        thread_ids: Iterable[str] | None = None,
        limit: int | None = None,
        include_empty: bool = False,
    ) -> list[Thread]:
        """Threads with their turns (in order), LLM and tool calls, prompt versions and feedback.

        Args:
            since: Only threads updated at or after this time.
            thread_ids: Only these threads.
            limit: At most this many threads (oldest first).
            include_empty: Also return threads with no turn (e.g. feedback only).
        """
        ids = list(thread_ids) if thread_ids is not None else self.thread_ids(since=since)
        if limit is not None:
            ids = ids[:limit]
        out: list[Thread] = []
        # Chunked so that IN (...) lists stay within every database's parameter limit.
        for i in range(0, len(ids), 500):
            out.extend(self._load(ids[i : i + 500], include_empty))
        return out

    def _load(self, ids: list[str], include_empty: bool) -> list[Thread]:
        if not ids:
            return []
        with self.session() as s:
            threads = {r.thread_id: r for r in s.exec(select(ThreadRow).where(ThreadRow.thread_id.in_(ids))).scalars()}  # type: ignore[attr-defined,call-overload]
            turns = s.exec(select(TurnRow).where(TurnRow.thread_id.in_(ids))).scalars().all()  # type: ignore[attr-defined,call-overload]
            llm = s.exec(select(LLMCallRow).where(LLMCallRow.thread_id.in_(ids))).scalars().all()  # type: ignore[attr-defined,call-overload]
            tools = s.exec(select(ToolCallRow).where(ToolCallRow.thread_id.in_(ids))).scalars().all()  # type: ignore[attr-defined,call-overload]
            fbs = s.exec(select(FeedbackRow).where(FeedbackRow.thread_id.in_(ids))).scalars().all()  # type: ignore[attr-defined,call-overload]
            shas = {sha for c in llm for sha in (c.prompt_shas or [])}
            pvs = {
                r.sha256: r
                for r in s.exec(select(PromptVersionRow).where(PromptVersionRow.sha256.in_(shas))).scalars()  # type: ignore[attr-defined,call-overload]
            } if shas else {}
        versions = {
            sha: PromptVersion(
                sha256=r.sha256, text=r.text or "", name=r.name, path=r.path,
                git_commit=r.git_commit, git_dirty=r.git_dirty,
            )
            for sha, r in pvs.items()
        }
        llm_by_turn: dict[str, list[LLMCallRow]] = defaultdict(list)
        for c in llm:
            llm_by_turn[c.turn_id].append(c)
        tools_by_turn: dict[str, list[ToolCallRow]] = defaultdict(list)
        for t in tools:
            tools_by_turn[t.turn_id].append(t)
        turns_by_thread: dict[str, list[TurnRow]] = defaultdict(list)
        for t in turns:
            turns_by_thread[t.thread_id].append(t)
        fb_by_thread: dict[str, list[FeedbackRow]] = defaultdict(list)
        for f in fbs:
            fb_by_thread[f.thread_id].append(f)

        result = []
        for tid in ids:
            row = threads.get(tid)
            if row is None:
                continue
            trows = sorted(turns_by_thread.get(tid, []), key=lambda t: (_ts(t.started_at), t.id))
            if not trows and not include_empty:
                continue
            built = [
                _build_turn(t, i, llm_by_turn.get(t.id, []), tools_by_turn.get(t.id, []), versions)
                for i, t in enumerate(trows)
            ]
            result.append(Thread(
                thread_id=tid, turns=built, user_id=row.user_id, created_at=row.created_at,
                updated_at=row.updated_at, metadata=row.meta or {},
                feedback=[
                    Feedback(
                        id=f.id, thread_id=f.thread_id, turn_id=f.turn_id, kind=f.kind,  # type: ignore[arg-type]
                        score=f.score, label=f.label, comment=f.comment, created_at=f.created_at,
                    )
                    for f in sorted(fb_by_thread.get(tid, []), key=lambda f: _ts(f.created_at))
                ],
            ))
        return result

    def prompt_versions(self) -> list[PromptVersion]:
        """Every prompt version seen in captured traffic, oldest first."""
        with self.session() as s:
            rows = s.exec(select(PromptVersionRow).order_by(PromptVersionRow.first_seen)).scalars().all()  # type: ignore[arg-type,call-overload]
        return [
            PromptVersion(sha256=r.sha256, text=r.text or "", name=r.name, path=r.path,
                          git_commit=r.git_commit, git_dirty=r.git_dirty)
            for r in rows
        ]

    # --- results of later stages -----------------------------------------------------------

    def save_signals(self, thread_ids: Iterable[str], signals: Iterable[Signal]) -> None:
        """Replace the signals of ``thread_ids`` with ``signals`` (one transaction)."""
        from sqlalchemy import delete

        ids = list(thread_ids)
        rows = []
        for i, sig in enumerate(signals):
            key = f"{sig.thread_id}|{sig.kind}|{sig.turn_index}|{i}"
            rows.append({"id": hashlib.sha256(key.encode()).hexdigest()[:32], "thread_id": sig.thread_id,
                         "kind": sig.kind, "turn_index": sig.turn_index,
                         "payload": sig.model_dump(mode="json")})
        try:
            with self.engine.begin() as conn:
                for i in range(0, len(ids), 500):
                    conn.execute(delete(SignalRow.__table__).where(  # type: ignore[attr-defined]
                        SignalRow.__table__.c.thread_id.in_(ids[i : i + 500])))  # type: ignore[attr-defined]
                for i in range(0, len(rows), 500):
                    self._upsert(conn, "signal", rows[i : i + 500])
        except SQLAlchemyError as exc:
            raise StoreError(f"saving signals to {self.safe_url} failed: {exc}") from exc

    def load_signals(self, *, thread_ids: Iterable[str] | None = None) -> list[Signal]:
        """Stored signals (all, or of ``thread_ids``)."""
        q = select(SignalRow.__table__.c.payload)  # type: ignore[attr-defined]
        if thread_ids is not None:
            q = q.where(SignalRow.__table__.c.thread_id.in_(list(thread_ids)))  # type: ignore[attr-defined]
        with self.session() as s:
            return [Signal.model_validate(r[0]) for r in s.execute(q).all()]

    def save_intents(self, intents: Iterable[Intent]) -> None:
        """Upsert intents (ids are stable across runs)."""
        rows = [("intent", {"id": it.id, "category": it.category, "parent_id": it.parent_id,
                            "payload": it.model_dump(mode="json")}) for it in intents]
        if rows:
            self.write_rows(rows)

    def load_intents(self) -> list[Intent]:
        """Every stored intent and sub-intent."""
        with self.session() as s:
            rows = s.execute(select(IntentRow.__table__.c.payload)).all()  # type: ignore[attr-defined]
        return [Intent.model_validate(r[0]) for r in rows]

    def save_assignments(self, assignments: dict[str, tuple[str | None, str | None]]) -> None:
        """Upsert ``thread_id -> (intent id, sub-intent id)``."""
        rows = [("intent_assignment", {"thread_id": t, "intent_id": a, "sub_intent_id": b})
                for t, (a, b) in assignments.items()]
        for i in range(0, len(rows), 500):
            self.write_rows(rows[i : i + 500])

    def load_assignments(self, *, leaf: bool = False) -> dict[str, str | None]:
        """``thread_id -> intent id`` (the sub-intent when ``leaf`` and there is one)."""
        t = IntentAssignmentRow.__table__.c  # type: ignore[attr-defined]
        with self.session() as s:
            rows = s.execute(select(t.thread_id, t.intent_id, t.sub_intent_id)).all()
        return {r[0]: (r[2] or r[1]) if leaf else r[1] for r in rows}

    def save_diagnoses(self, diagnoses: Iterable[Diagnosis]) -> None:
        """Upsert diagnoses (their ids are stable for the same root cause)."""
        now = _now()
        rows = [("diagnosis", {"id": d.id, "intent_id": d.intent_id, "failure_mode": d.failure_mode,
                               "created_at": now, "payload": d.model_dump(mode="json")})
                for d in diagnoses]
        if rows:
            self.write_rows(rows)

    def load_diagnoses(self) -> list[Diagnosis]:
        """Stored diagnoses, highest impact first."""
        with self.session() as s:
            rows = s.execute(select(DiagnosisRow.__table__.c.payload)).all()  # type: ignore[attr-defined]
        out = [Diagnosis.model_validate(r[0]) for r in rows]
        return sorted(out, key=lambda d: -d.impact)

    def save_fixes(self, fixes: Iterable[Fix]) -> None:
        """Upsert fixes with their current status."""
        now = _now()
        rows = [("fix", {"id": f.id, "diagnosis_id": f.diagnosis_id, "status": f.status,
                         "created_at": f.created_at or now, "payload": f.model_dump(mode="json")})
                for f in fixes]
        if rows:
            self.write_rows(rows)

    def load_fixes(self) -> list[Fix]:
        """Stored fixes, oldest first."""
        t = FixRow.__table__.c  # type: ignore[attr-defined]
        with self.session() as s:
            rows = s.execute(select(t.payload).order_by(t.created_at)).all()
        return [Fix.model_validate(r[0]) for r in rows]

    # --- small key/value state --------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A value saved with :meth:`set_meta`."""
        with self.session() as s:
            row = s.get(MetaRow, key)
            return default if row is None else row.value

    def set_meta(self, key: str, value: Any) -> None:
        """Save a JSON-serialisable value under ``key``."""
        with self.session() as s:
            s.merge(MetaRow(key=key, value=value, updated_at=_now()))
            s.commit()


def _ts(d: datetime | None) -> float:
    if d is None:
        return 0.0
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def _msgs(raw: list[dict[str, Any]] | None) -> list[Message]:
    out = []
    for m in raw or []:
        try:
            out.append(Message.model_validate(m))
        except Exception:  # noqa: BLE001 - an odd stored message is shown, not dropped
            out.append(Message(role="other", content=str(m)))
    return out


def _build_turn(
    t: TurnRow, index: int, llm: list[LLMCallRow], tools: list[ToolCallRow],
    versions: dict[str, PromptVersion],
) -> Turn:
    llm_calls = [
        LLMCall(
            id=c.id, seq=c.seq, model=c.model, provider=c.provider,
            input_messages=_msgs(c.input_messages), output_messages=_msgs(c.output_messages),
            prompt_versions=[
                versions.get(sha) or PromptVersion(sha256=sha, text="") for sha in c.prompt_shas or []
            ],
            input_tokens=c.input_tokens, output_tokens=c.output_tokens, latency_ms=c.latency_ms,
            finish_reason=c.finish_reason, error=c.error, started_at=c.started_at,
        )
        for c in sorted(llm, key=lambda c: c.seq)
    ]
    tool_calls = [
        ToolCall(
            id=c.id, seq=c.seq, name=c.name, arguments=c.arguments, result=c.result,
            error=c.error, latency_ms=c.latency_ms, tool_call_id=c.tool_call_id,
            started_at=c.started_at,
        )
        for c in sorted(tools, key=lambda c: c.seq)
    ]
    # The turn's messages: what the user said, then what the agent produced, in order.
    messages = _msgs(t.input_messages)
    steps: list[tuple[int, list[Message]]] = [(c.seq, c.output_messages) for c in llm_calls]
    steps += [
        (c.seq, [Message(role="tool", content=(c.result or "") if c.error is None else f"Error: {c.error}",
                         name=c.name, tool_call_id=c.tool_call_id)])
        for c in tool_calls
    ]
    for _, ms in sorted(steps, key=lambda s: s[0]):
        messages.extend(ms)
    if not llm_calls:
        messages.extend(_msgs(t.output_messages))
    return Turn(
        id=t.id, thread_id=t.thread_id, index=index, messages=messages, llm_calls=llm_calls,
        tool_calls=tool_calls, started_at=t.started_at, ended_at=t.ended_at,
        latency_ms=t.latency_ms, error=t.error, metadata=t.meta or {},
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL: the host can read while the writer writes; busy_timeout: wait on locks briefly.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=5000")
    except Exception as exc:  # noqa: BLE001 - a read-only file still opens for reading
        logger.debug("sqlite pragmas not applied: %s", exc)
    finally:
        cur.close()
