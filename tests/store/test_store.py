"""The store on SQLite and a real PostgreSQL server: round trips, feedback, idempotency, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loop_middleware import ConfigError, LoopCallbackHandler, Store, StoreError
from tests._fakes import fake_model, reply
from tests.capture.test_handler import build_graph, order_lookup, run
from tests.conftest import reopen


def test_feedback_and_outcomes_attach_to_threads(store_url: str) -> None:
    handler = LoopCallbackHandler(store_url)
    graph = build_graph(fake_model(reply("Here you go.")), [order_lookup])
    run(graph, handler, "fb", "cancel my plan")
    handler.flush()
    store = Store(store_url)
    turn_id = store.get_thread("fb").turns[0].id  # type: ignore[union-attr]
    store.add_feedback("fb", turn_id=turn_id, thumbs=False, comment="didn't help at all")
    store.add_feedback("fb", score=0.2)
    store.add_outcome("fb", "churned")
    t = reopen(store_url).get_thread("fb")
    assert t is not None
    kinds = [(f.kind, f.label, f.score) for f in t.feedback]
    assert kinds == [("feedback", "thumbs_down", 0.0), ("feedback", None, 0.2), ("outcome", "churned", None)]
    assert t.feedback[0].turn_id == turn_id and t.feedback[0].comment == "didn't help at all"
    with pytest.raises(ConfigError):
        store.add_feedback("fb")
    with pytest.raises(ConfigError):
        store.add_outcome("fb", "")


def test_rows_are_idempotent_upserts(store_url: str) -> None:
    store = Store(store_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("thread", {"thread_id": "x", "created_at": t0, "updated_at": t0}),
        ("turn", {"id": "turn-1", "thread_id": "x", "started_at": t0,
                  "input_messages": [{"role": "user", "content": "hi"}]}),
    ]
    store.write_rows(rows)
    store.write_rows(rows)  # a replayed batch
    store.write_rows([("turn", {"id": "turn-1", "thread_id": "x", "started_at": t0,
                                "ended_at": t0 + timedelta(seconds=1), "latency_ms": 1000.0,
                                "input_messages": [{"role": "user", "content": "hi"}]}),
                      ("thread", {"thread_id": "x", "created_at": t0 + timedelta(days=1),
                                  "updated_at": t0 + timedelta(days=1)})])
    [t] = Store(store_url).list_threads()
    assert len(t.turns) == 1 and t.turns[0].latency_ms == 1000.0
    assert t.created_at is not None and t.created_at.replace(tzinfo=UTC) == t0  # first sighting kept
    assert Store(store_url).count_threads() == 1


def test_since_filter_and_limit(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(5):
        ts = base + timedelta(days=i)
        store.write_rows([
            ("thread", {"thread_id": f"t{i}", "created_at": ts, "updated_at": ts}),
            ("turn", {"id": f"u{i}", "thread_id": f"t{i}", "started_at": ts,
                      "input_messages": [{"role": "user", "content": f"m{i}"}]}),
        ])
    assert [t.thread_id for t in store.list_threads(since=base + timedelta(days=3))] == ["t3", "t4"]
    assert [t.thread_id for t in store.list_threads(limit=2)] == ["t0", "t1"]


def test_bad_urls_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid database URL|driver"):
        Store("nosuchdb+driver://x/y")
    with pytest.raises(StoreError, match="cannot open store"):
        Store("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    try:
        Store("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    except StoreError as exc:
        assert "secret" not in str(exc)
    # a bare path is a SQLite file
    s = Store(str(tmp_path / "plain.db"))
    assert s.dialect == "sqlite" and (tmp_path / "plain.db").exists()


def test_default_url_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert Store().url.endswith("env.db")
    monkeypatch.delenv("LOOP_DATABASE_URL")
    monkeypatch.chdir(tmp_path)
    assert Store().url == "sqlite:///loop.db"
    assert (tmp_path / "loop.db").exists()


def test_awkward_values_are_stored_on_every_database(store_url: str) -> None:
    """NUL, lone surrogates, NaN and integers past 64 bits are made storable, not fatal."""
    store = Store(store_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.write_rows([
        ("thread", {"thread_id": "odd", "created_at": t0, "updated_at": t0}),
        ("turn", {"id": "odd-0", "thread_id": "odd", "started_at": t0, "error": "bad\x00byte \udcff",
                  "input_messages": [{"role": "user", "content": "nul\x00 and \ud800 surrogate"}],
                  "meta": {"score": float("nan"), "big": 2**80}}),
    ])
    [t] = Store(store_url).list_threads()
    assert t.turns[0].user_text == "nul\u2400 and \ufffd\ufffd\ufffd surrogate"
    assert t.turns[0].metadata == {"score": None, "big": str(2**80)}
    assert t.turns[0].error is not None and "\u2400" in t.turns[0].error


def test_refused_rows_are_kept_aside_and_do_not_block_later_rows(store_url: str, tmp_path: Path) -> None:
    from loop_middleware.capture import BackgroundWriter

    store = Store(store_url)
    writer = BackgroundWriter(store, spool_path=tmp_path / "s.jsonl", retry_interval=0.1)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def rows(tid: str, bad: bool) -> list[tuple[str, dict[str, object]]]:
        out: list[tuple[str, dict[str, object]]] = [
            ("thread", {"thread_id": tid, "created_at": t0, "updated_at": t0}),
            ("turn", {"id": f"{tid}-0", "thread_id": tid, "started_at": t0,
                      "input_messages": [{"role": "user", "content": tid}]}),
        ]
        if bad:  # a turn without a thread id: NOT NULL is violated
            out.append(("turn", {"id": f"{tid}-bad", "thread_id": None, "started_at": t0}))
        return out

    writer.submit(lambda: rows("a", True))
    assert writer.flush(10)
    writer.submit(lambda: rows("b", False))
    assert writer.flush(10)
    writer.close()
    assert [t.thread_id for t in Store(store_url).list_threads()] == ["a", "b"]
    assert writer.stats.rejected == 1
    rejected = (tmp_path / "s.jsonl.rejected.jsonl").read_text()
    assert "a-bad" in rejected and writer.spool_files == []


def test_odd_stored_messages_are_shown_not_dropped(store_url: str) -> None:
    """Messages are validated straight from their JSON text; a list holding something that is
    not a message falls back to message-by-message reading, the odd item kept as ``other``."""
    store = Store(store_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    store.write_rows([
        ("thread", {"thread_id": "odd", "created_at": t0, "updated_at": t0}),
        ("turn", {"id": "odd-0", "thread_id": "odd", "started_at": t0,
                  "input_messages": [{"role": "user", "content": "hello"}, "a bare string",
                                     {"role": "robot", "content": "x"}],
                  "output_messages": None}),
        ("llm_call", {"id": "odd-l", "turn_id": "odd-0", "thread_id": "odd", "seq": 1,
                      "input_messages": [{"role": "user", "content": "hello"}],
                      "output_messages": [{"role": "assistant", "content": "hi",
                                           "tool_calls": [{"id": "c1", "name": "f", "args": {}}]}]}),
        ("tool_call", {"id": "odd-t", "turn_id": "odd-0", "thread_id": "odd", "seq": 2,
                       "name": "f", "arguments": {"q": [1, 2]}, "error": "boom"}),
    ])
    [t] = Store(store_url).list_threads()
    msgs = t.turns[0].messages
    assert [(m.role, m.content) for m in msgs] == [
        ("user", "hello"), ("other", "a bare string"), ("other", str({"role": "robot", "content": "x"})),
        ("assistant", "hi"), ("tool", "Error: boom"),
    ]
    assert msgs[3].tool_calls == [{"id": "c1", "name": "f", "args": {}}]
    [call] = t.turns[0].llm_calls
    assert [m.content for m in call.input_messages] == ["hello"]
    assert t.turns[0].tool_calls[0].arguments == {"q": [1, 2]}
