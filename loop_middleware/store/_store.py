"""The store: SQLite by default, PostgreSQL (or any SQLAlchemy database) through the URL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Text, cast, event, func, null, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlmodel import Session, create_engine

from .._perf import gc_paused
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
from ._aggregates import AggregateQueries
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
from ._upsert import TABLE_ORDER, TABLES, merge_row, pk_key, upsert

__all__ = ["DEFAULT_URL", "Store"]

logger = logging.getLogger("loop_middleware.store")

_DATA_ERRORS = (DataError, IntegrityError, ProgrammingError)

DEFAULT_URL = "sqlite:///loop.db"


def _now() -> datetime:
    return datetime.now(UTC)


def _resolve_url(url: str | None) -> str:
    url = url or os.environ.get("LOOP_DATABASE_URL") or DEFAULT_URL
    if "://" not in url:
        # A bare path is a SQLite file: friendlier than an SQLAlchemy error.
        url = f"sqlite:///{url}"
    return url


class Store(AggregateQueries):
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
            # Later events of the same row (turn start, then turn end) complete earlier ones.
            by_table[table][pk] = merge_row(table, prev, values) if prev else dict(values)
        try:
            with self.engine.begin() as conn:
                # Tables in a fixed order, rows by primary key: concurrent writers (several
                # processes of one app) then lock shared rows in the same order and never
                # deadlock each other.
                for table in sorted(by_table, key=TABLE_ORDER.__getitem__):
                    pk_rows = by_table[table]
                    self._upsert(conn, table, [pk_rows[k] for k in sorted(pk_rows, key=pk_key)])
        except (DBAPIError, OSError) as exc:
            # The database is unreachable, locked or out of space: worth retrying later.
            raise StoreError(f"write to {self.safe_url} failed: {exc.__class__.__name__}: {exc}",
                             transient=not isinstance(exc, _DATA_ERRORS)) from exc
        except (SQLAlchemyError, ValueError, OverflowError) as exc:
            # The rows themselves were refused: retrying the same rows will not help.
            raise StoreError(f"write to {self.safe_url} refused the rows: {exc.__class__.__name__}: {exc}",
                             transient=False) from exc

    def _upsert(self, conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
        upsert(conn, self.dialect, table, rows)

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
        return [tid for tid, _ in self.thread_index(since=since)]

    def thread_index(self, *, since: datetime | None = None) -> list[tuple[str, datetime | None]]:
        """``(thread_id, updated_at)`` as :meth:`thread_ids`, read from the thread table alone."""
        c = ThreadRow.__table__.c  # type: ignore[attr-defined]
        q = select(c.thread_id, c.updated_at).order_by(c.created_at, c.thread_id)
        if since is not None:
            q = q.where(c.updated_at >= since)
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(q)]

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
        llm_inputs: bool = True,
    ) -> list[Thread]:
        """Threads with their turns (in order), LLM and tool calls, prompt versions and feedback.

        Args:
            since: Only threads updated at or after this time.
            thread_ids: Only these threads.
            limit: At most this many threads (oldest first).
            include_empty: Also return threads with no turn (e.g. feedback only).
            llm_inputs: Load each LLM call's input messages. Those are the conversation so far
                (their bytes grow with the square of the turns) and diagnosis never reads them:
                ``False`` leaves them empty and loads about twice as fast.
        """
        ids = list(thread_ids) if thread_ids is not None else self.thread_ids(since=since)
        if limit is not None:
            ids = ids[:limit]
        out: list[Thread] = []
        # Chunked so that IN (...) lists stay within every database's parameter limit.
        for i in range(0, len(ids), 500):
            with gc_paused():
                out.extend(self._load(ids[i : i + 500], include_empty, llm_inputs))
        return out

    def _load(self, ids: list[str], include_empty: bool, llm_inputs: bool = True) -> list[Thread]:
        # Speed matters here: extraction reads every new thread, and an LLM call's input is the
        # whole conversation so far (the bytes grow with the square of the turns). So: Core
        # selects of plain tuples (no ORM identity map), and message lists validated straight
        # from their JSON text by pydantic-core (one Rust call per list instead of json.loads
        # plus one validation per message). Everything is still validated (pydantic's validating
        # constructor measured faster than ``model_construct``).
        if not ids:
            return []
        th, tu, lc, tc, fb, pv = (t.__table__.c for t in (  # type: ignore[union-attr]
            ThreadRow, TurnRow, LLMCallRow, ToolCallRow, FeedbackRow, PromptVersionRow))
        with self.engine.connect() as conn:
            threads = {r[0]: r for r in conn.execute(
                select(th.thread_id, th.user_id, th.created_at, th.updated_at, th.meta)
                .where(th.thread_id.in_(ids)))}
            turns = conn.execute(
                select(tu.id, tu.thread_id, tu.started_at, tu.ended_at, tu.latency_ms, tu.error,
                       cast(tu.input_messages, Text), cast(tu.output_messages, Text), tu.meta)
                .where(tu.thread_id.in_(ids))).all()
            llm = conn.execute(
                select(lc.id, lc.turn_id, lc.seq, lc.model, lc.provider,
                       cast(lc.input_messages, Text) if llm_inputs else null(),
                       cast(lc.output_messages, Text),
                       lc.prompt_shas, lc.input_tokens, lc.output_tokens, lc.latency_ms,
                       lc.finish_reason, lc.error, lc.started_at)
                .where(lc.thread_id.in_(ids))).all()
            tools = conn.execute(
                select(tc.id, tc.turn_id, tc.seq, tc.name, tc.arguments, tc.result, tc.error,
                       tc.latency_ms, tc.tool_call_id, tc.started_at)
                .where(tc.thread_id.in_(ids))).all()
            fbs = conn.execute(
                select(fb.id, fb.thread_id, fb.turn_id, fb.kind, fb.score, fb.label, fb.comment,
                       fb.created_at)
                .where(fb.thread_id.in_(ids))).all()
            shas = {sha for c in llm for sha in (c[7] or [])}
            versions = {
                r[0]: PromptVersion(sha256=r[0], text=r[1] or "", name=r[2], path=r[3],
                                    git_commit=r[4], git_dirty=bool(r[5]))
                for r in conn.execute(
                    select(pv.sha256, pv.text, pv.name, pv.path, pv.git_commit, pv.git_dirty)
                    .where(pv.sha256.in_(shas)))
            } if shas else {}
        llm_by_turn: dict[str, list[LLMCall]] = defaultdict(list)
        for c in llm:
            llm_by_turn[c[1]].append(LLMCall(
                id=c[0], seq=c[2] or 0, model=c[3], provider=c[4],
                input_messages=_msgs_json(c[5]), output_messages=_msgs_json(c[6]),
                prompt_versions=[versions.get(sha) or PromptVersion(sha256=sha, text="")
                                 for sha in c[7] or []],
                input_tokens=c[8], output_tokens=c[9], latency_ms=c[10], finish_reason=c[11],
                error=c[12], started_at=c[13],
            ))
        tools_by_turn: dict[str, list[ToolCall]] = defaultdict(list)
        for t in tools:
            tools_by_turn[t[1]].append(ToolCall(
                id=t[0], seq=t[2] or 0, name=t[3] or "", arguments=t[4], result=t[5], error=t[6],
                latency_ms=t[7], tool_call_id=t[8], started_at=t[9],
            ))
        turns_by_thread: dict[str, list[Any]] = defaultdict(list)
        for t in turns:
            turns_by_thread[t[1]].append(t)
        fb_by_thread: dict[str, list[Any]] = defaultdict(list)
        for f in fbs:
            fb_by_thread[f[1]].append(f)

        result = []
        for tid in ids:
            row = threads.get(tid)
            if row is None:
                continue
            trows = sorted(turns_by_thread.get(tid, []), key=lambda t: (_ts(t[2]), t[0]))
            if not trows and not include_empty:
                continue
            built = [
                _build_turn(t, i, llm_by_turn.get(t[0], []), tools_by_turn.get(t[0], []))
                for i, t in enumerate(trows)
            ]
            result.append(Thread(
                thread_id=tid, turns=built, user_id=row[1], created_at=row[2],
                updated_at=row[3], metadata=row[4] or {},
                feedback=[
                    # Validated: ``kind`` is a closed set and feedback rows are few.
                    Feedback(
                        id=f[0], thread_id=f[1], turn_id=f[2], kind=f[3], score=f[4], label=f[5],
                        comment=f[6], created_at=f[7],
                    )
                    for f in sorted(fb_by_thread.get(tid, []), key=lambda f: _ts(f[7]))
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


_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


def _msgs(raw: Any) -> list[Message]:
    out = []
    for m in raw if isinstance(raw, list) else ([] if raw is None else [raw]):
        try:
            out.append(Message.model_validate(m))
        except Exception:  # noqa: BLE001 - an odd stored message is shown, not dropped
            out.append(Message(role="other", content=str(m)))
    return out


def _msgs_json(raw: str | None) -> list[Message]:
    """A stored message list from its JSON text: validated in one pass when well formed, else
    message by message (an odd message becomes an ``other`` message, never dropped)."""
    if not raw:
        return []
    try:
        return _MESSAGES.validate_json(raw)
    except ValueError:
        pass
    try:
        data = json.loads(raw)
    except ValueError:
        return [Message(role="other", content=raw)]
    return _msgs(data)


def _build_turn(t: Any, index: int, llm_calls: list[LLMCall], tool_calls: list[ToolCall]) -> Turn:
    """A turn from its row ``(id, thread_id, started_at, ended_at, latency_ms, error,
    input_messages json, output_messages json, meta)`` and its calls."""
    llm_calls.sort(key=lambda c: c.seq)
    tool_calls.sort(key=lambda c: c.seq)
    # The turn's messages: what the user said, then what the agent produced, in order.
    messages = _msgs_json(t[6])
    steps: list[tuple[int, list[Message]]] = [(c.seq, c.output_messages) for c in llm_calls]
    steps += [
        (c.seq, [Message(role="tool", content=(c.result or "") if c.error is None else f"Error: {c.error}",
                         name=c.name, tool_call_id=c.tool_call_id)])
        for c in tool_calls
    ]
    for _, ms in sorted(steps, key=lambda s: s[0]):
        messages.extend(ms)
    if not llm_calls:
        messages.extend(_msgs_json(t[7]))
    return Turn(
        id=t[0], thread_id=t[1], index=index, messages=messages, llm_calls=llm_calls,
        tool_calls=tool_calls, started_at=t[2], ended_at=t[3], latency_ms=t[4], error=t[5],
        metadata=t[8] or {},
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
