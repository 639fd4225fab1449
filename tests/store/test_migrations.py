"""Schema migrations on SQLite and a real PostgreSQL server: new, pre-migration and older
databases reach the newest revision with their data intact; the schema matches ``_tables.py``."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from loop_middleware import Store, StoreError
from loop_middleware.store import _migrate
from loop_middleware.store._migrate import BASELINE, HEAD, current_revision, downgrade, upgrade
from loop_middleware.store._upsert import TABLES
from tests.conftest import new_pg_database

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


def _msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "name": extra.get("name"),
            "tool_calls": extra.get("tool_calls", []), "tool_call_id": extra.get("tool_call_id"), "id": None}


def _rows() -> list[tuple[str, dict[str, Any]]]:
    """Three threads in the row shapes capture and ingest write: a captured one with an LLM and
    a tool call, an ingested (OTLP) one, and one that has only feedback."""
    call = {"id": "tc1", "name": "order_lookup", "args": {"order_id": "12", "opts": {"deep": [1, {"x": None}]}}}
    return [
        ("thread", {"thread_id": "cap", "created_at": T0, "updated_at": T0 + timedelta(seconds=3),
                    "user_id": "u1"}),
        ("turn", {"id": "cap-t0", "thread_id": "cap", "started_at": T0, "ended_at": T0 + timedelta(seconds=3),
                  "latency_ms": 3000.0, "input_messages": [_msg("user", "Where is order 12? 🚚")],
                  "output_messages": [_msg("assistant", "It shipped.")], "meta": {"langgraph_node": "agent"}}),
        ("llm_call", {"id": "cap-l0", "turn_id": "cap-t0", "thread_id": "cap", "seq": 0, "model": "m",
                      "provider": "p", "input_messages": [_msg("system", "Be nice."), _msg("user", "Where is order 12? 🚚")],
                      "output_messages": [_msg("assistant", "", tool_calls=[call])], "prompt_shas": [],
                      "input_tokens": 20, "output_tokens": 5, "latency_ms": 900.0, "finish_reason": "tool_calls",
                      "error": None, "started_at": T0}),
        ("tool_call", {"id": "cap-x1", "turn_id": "cap-t0", "thread_id": "cap", "seq": 1, "name": "order_lookup",
                       "arguments": call["args"], "result": "shipped", "error": None, "latency_ms": 10.0,
                       "tool_call_id": "tc1", "started_at": T0 + timedelta(seconds=1)}),
        ("llm_call", {"id": "cap-l2", "turn_id": "cap-t0", "thread_id": "cap", "seq": 2, "model": "m",
                      "provider": "p", "input_messages": [], "output_messages": [_msg("assistant", "It shipped.")],
                      "prompt_shas": [], "input_tokens": 30, "output_tokens": 3, "latency_ms": 800.0,
                      "finish_reason": "stop", "error": None, "started_at": T0 + timedelta(seconds=2)}),
        ("thread", {"thread_id": "ot", "created_at": T0 + timedelta(hours=1), "updated_at": T0 + timedelta(hours=1)}),
        ("turn", {"id": "ot-t0", "thread_id": "ot", "started_at": T0 + timedelta(hours=1),
                  "ended_at": T0 + timedelta(hours=1, seconds=1), "latency_ms": 1000.0, "error": "boom",
                  "input_messages": [_msg("user", "مرحبا 你好")], "output_messages": [],
                  "meta": {"source": "otlp", "root_span": "invoke_agent"}}),
        ("thread", {"thread_id": "fb", "created_at": T0 + timedelta(hours=2), "updated_at": T0 + timedelta(hours=2)}),
        ("feedback", {"id": "f1", "thread_id": "fb", "turn_id": None, "kind": "outcome", "score": None,
                      "label": "churned", "comment": "left", "created_at": T0 + timedelta(hours=2)}),
        ("feedback", {"id": "f2", "thread_id": "cap", "turn_id": "cap-t0", "kind": "feedback", "score": 0.0,
                      "label": "thumbs_down", "comment": None, "created_at": T0 + timedelta(seconds=5)}),
    ]


def _sources(url: str) -> dict[str, str | None]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(text("SELECT thread_id, source FROM loop_thread"))}
    finally:
        engine.dispose()


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list[Any]:
    """What alembic autogenerate would change to make the database match ``_tables.py``."""

    def loop_only(_obj: Any, name: str | None, type_: str, _reflected: bool, _other: Any) -> bool:
        return type_ != "table" or bool(name and name.startswith("loop_"))

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_object": loop_only, "compare_type": True})
            return list(compare_metadata(ctx, SQLModel.metadata))
    finally:
        engine.dispose()


def _fresh_like(url: str, request: pytest.FixtureRequest) -> str:
    """Another empty database of the same kind as ``url``."""
    if url.startswith("sqlite"):
        return url.replace("loop.db", "reference.db")
    return new_pg_database(request.getfixturevalue("postgres_url"))


def _dump(store: Store) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json") for t in store.list_threads(include_empty=True)]


def test_head_constant_matches_the_scripts() -> None:
    # ensure_schema trusts HEAD to skip importing alembic; a new revision must move it.
    assert _migrate.head_revision() == HEAD
    assert _migrate.revisions()[0] == BASELINE and _migrate.revisions()[-1] == HEAD


def test_new_database_is_created_at_head_and_matches_tables(store_url: str) -> None:
    store = Store(store_url)
    assert current_revision(store.engine) == HEAD
    assert set(inspect(store.engine).get_table_names()) >= {m.__tablename__ for m in TABLES.values()}
    assert _schema_diff(store_url) == []
    # the comparison is sensitive: a missing index shows up
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_loop_thread_source"))
    diff = _schema_diff(store_url)
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_loop_thread_source")]
    store.close()


def test_upgrade_from_0001_keeps_every_row_and_backfills_source(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    assert upgrade(store_url, "0001") == "0001"
    assert "source" not in _columns(store_url, "loop_thread")
    old = Store(store_url, create=False)  # the row API is compatible with the 0001 schema
    old.write_rows(_rows())
    old.close()

    store = Store(store_url)  # opens -> migrates
    assert current_revision(store.engine) == HEAD
    assert _sources(store_url) == {"cap": "capture", "ot": "otlp", "fb": None}

    reference = Store(_fresh_like(store_url, request))
    reference.write_rows(_rows())
    assert _dump(store) == _dump(reference)  # nothing lost or altered by the upgrade
    [cap, ot, fb] = store.list_threads(include_empty=True)
    assert cap.turns[0].user_text == "Where is order 12? 🚚" and cap.turns[0].reply_text == "It shipped."
    assert cap.turns[0].tool_calls[0].arguments == {"order_id": "12", "opts": {"deep": [1, {"x": None}]}}
    assert [f.label for f in cap.feedback] == ["thumbs_down"] and [f.label for f in fb.feedback] == ["churned"]
    assert ot.turns[0].error == "boom" and ot.turns[0].metadata["source"] == "otlp"

    # new writes work, including the new column
    store.write_rows([
        ("thread", {"thread_id": "new", "created_at": T0 + timedelta(days=1), "source": "capture"}),
        ("turn", {"id": "new-t0", "thread_id": "new", "started_at": T0 + timedelta(days=1),
                  "input_messages": [_msg("user", "hello again")]}),
    ])
    assert [t.thread_id for t in Store(store_url).list_threads()] == ["cap", "ot", "new"]
    assert _sources(store_url)["new"] == "capture"
    store.close()
    reference.close()


def test_database_created_before_migrations_is_adopted(store_url: str) -> None:
    # What Store() built before migrations existed: create_all of the 0001 tables, no version table.
    engine = create_engine(store_url)
    SQLModel.metadata.create_all(engine, tables=[t for n, t in SQLModel.metadata.tables.items() if n.startswith("loop_")])
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_loop_thread_source"))
        conn.execute(text("ALTER TABLE loop_thread DROP COLUMN source"))
    engine.dispose()
    old = Store(store_url, create=False)
    old.write_rows(_rows())
    old.set_meta("watermark", {"at": "2026-02-01"})
    old.close()
    assert current_revision(store_url) is None

    store = Store(store_url)
    assert current_revision(store.engine) == HEAD
    assert _schema_diff(store_url) == []
    assert [t.thread_id for t in store.list_threads(include_empty=True)] == ["cap", "ot", "fb"]
    assert store.get_meta("watermark") == {"at": "2026-02-01"}
    assert _sources(store_url) == {"cap": "capture", "ot": "otlp", "fb": None}
    store.close()


def test_downgrade_drops_only_the_new_column_and_upgrade_restores_it(store_url: str) -> None:
    store = Store(store_url)
    store.write_rows(_rows())
    before = _dump(store)
    store.close()
    # SQLite has no ALTER ... DROP with an index: alembic's batch mode copies the table
    assert downgrade(store_url, "0001") == "0001"
    assert "source" not in _columns(store_url, "loop_thread")
    after = Store(store_url)
    assert current_revision(after.engine) == HEAD
    assert _dump(after) == before
    assert _sources(store_url) == {"cap": "capture", "ot": "otlp", "fb": None}
    after.close()


def test_schema_from_a_newer_version_is_refused(sqlite_url: str) -> None:
    Store(sqlite_url).close()
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"'9999'.*newer version"):
        Store(sqlite_url)
    with pytest.raises(StoreError, match="cannot upgrade"):
        upgrade(sqlite_url.replace("loop.db", "other.db"), "0042")


def _all_at_once(urls: list[str]) -> list[BaseException]:
    """Open a Store on each URL, from one thread each, released together; the errors."""
    barrier = threading.Barrier(len(urls))
    errors: list[BaseException] = []

    def open_store(url: str) -> None:
        try:
            barrier.wait()
            Store(url).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=open_store, args=(u,), daemon=True) for u in urls]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in workers), "a migration hung"
    return errors


def test_concurrent_openers_migrate_once(store_url: str) -> None:
    """Several workers opening the same new database at once (e.g. gunicorn workers): one
    migrates, the others wait for its lock and find the schema current."""
    assert _all_at_once([store_url] * 6) == []
    assert current_revision(store_url) == HEAD
    engine = create_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()
    assert _schema_diff(store_url) == []


def test_threads_migrating_different_databases_do_not_mix(tmp_path: Path) -> None:
    # alembic keeps its context in module globals: without serialising, these interfere.
    urls = [f"sqlite:///{tmp_path / f'{i}.db'}" for i in range(6)]
    assert _all_at_once(urls) == []
    assert [current_revision(u) for u in urls] == [HEAD] * 6
