"""Property tests of the store: random threads written in capture's row shapes come back from
``list_threads`` exactly (text, order, nested tool arguments), on SQLite and real PostgreSQL.

Text in JSON columns (message contents, tool arguments) is any Python string, NUL and lone
surrogates included: the JSON encoder escapes them, so both databases keep them exactly. Text in
plain columns (ids, names, errors, tool results) is drawn without NUL and lone surrogates, which
capture replaces before writing (``capture._messages.clean_text``); what the store does with them
unreplaced is pinned down by the tests at the end.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from loop_middleware import Store
from loop_middleware.types import Message

Row = tuple[str, dict[str, Any]]

# --- strategies ---------------------------------------------------------------------------------

# Anything, including NUL, C0/C1 controls, emoji, RTL, CJK and lone surrogates.
any_text = st.text(st.characters(codec=None), max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "a\udfffb", "مرحبا بالعالم", "你好，世界", "👩‍👩‍👧‍👦🚀", "\u202eevil\u202c", "\r\n\t\x1b[31m"]
)
# What a plain (non-JSON) column can hold on every backend.
plain_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
ident = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=12)

json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | any_text
)
json_wide = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def deep_json(draw: st.DrawFn) -> Any:
    """JSON nested up to 20 levels (st.recursive alone rarely goes that deep)."""
    value = draw(json_wide)
    for _ in range(draw(st.integers(0, 20))):
        value = [value] if draw(st.booleans()) else {draw(any_text): value}
    return value


def message(role: str) -> st.SearchStrategy[dict[str, Any]]:
    tool_call = st.fixed_dictionaries({"id": ident, "name": ident, "args": deep_json()})
    return st.fixed_dictionaries({
        "role": st.just(role), "content": any_text, "name": st.none() | ident,
        "tool_calls": st.lists(tool_call, max_size=2) if role == "assistant" else st.just([]),
        "tool_call_id": st.none() | ident, "id": st.none() | ident,
    })


@dataclass
class CallSpec:
    kind: str  # "llm" | "tool"
    values: dict[str, Any]


@dataclass
class TurnSpec:
    id: str
    started_at: datetime
    input_messages: list[dict[str, Any]]
    output_messages: list[dict[str, Any]]
    error: str | None
    calls: list[CallSpec] = field(default_factory=list)


@dataclass
class ThreadSpec:
    thread_id: str
    user_id: str | None
    created_at: datetime
    turns: list[TurnSpec]


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def calls(draw: st.DrawFn) -> list[CallSpec]:
    out = []
    for seq in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            out.append(CallSpec("llm", {
                "seq": seq, "model": draw(st.none() | plain_text), "provider": draw(st.none() | plain_text),
                "input_messages": draw(st.lists(message("system") | message("user"), max_size=2)),
                "output_messages": draw(st.lists(message("assistant"), max_size=2)),
                "prompt_shas": [], "input_tokens": draw(st.none() | st.integers(0, 2**31 - 1)),
                "output_tokens": draw(st.none() | st.integers(0, 2**31 - 1)),
                "latency_ms": draw(st.floats(0, 1e7)), "finish_reason": draw(st.none() | plain_text),
                "error": draw(st.none() | plain_text),
            }))
        else:
            out.append(CallSpec("tool", {
                "seq": seq, "name": draw(plain_text), "arguments": draw(deep_json()),
                "result": draw(st.none() | plain_text), "error": draw(st.none() | plain_text),
                "latency_ms": draw(st.floats(0, 1e7)), "tool_call_id": draw(st.none() | ident),
            }))
    return out


@st.composite
def threads(draw: st.DrawFn) -> list[ThreadSpec]:
    ids = draw(st.lists(ident, min_size=1, max_size=4, unique=True))
    out = []
    for n, tid in enumerate(ids):
        created = T0 + timedelta(seconds=draw(st.integers(0, 10**6)), microseconds=draw(st.integers(0, 999_999)))
        turns = [
            TurnSpec(
                id=f"{n}-{draw(ident)}-{i}",
                started_at=created + timedelta(milliseconds=draw(st.integers(0, 10**7))),
                input_messages=draw(st.lists(message("user"), min_size=1, max_size=2)),
                output_messages=draw(st.lists(message("assistant"), max_size=2)),
                error=draw(st.none() | plain_text),
                calls=draw(calls()),
            )
            for i in range(draw(st.integers(1, 3)))
        ]
        out.append(ThreadSpec(tid, draw(st.none() | ident), created, turns))
    return out


def capture_rows(spec: list[ThreadSpec]) -> list[Row]:
    """The rows capture's Recorder writes: thread + turn at start, calls as they end, thread +
    turn again at the end (the second turn row completes the first)."""
    rows: list[Row] = []
    for th in spec:
        for turn in th.turns:
            start: dict[str, Any] = {"thread_id": th.thread_id, "created_at": th.created_at,
                                     "updated_at": turn.started_at}
            if th.user_id:
                start["user_id"] = th.user_id
            rows.append(("thread", start))
            rows.append(("turn", {"id": turn.id, "thread_id": th.thread_id, "started_at": turn.started_at,
                                  "input_messages": turn.input_messages, "meta": {}}))
            for c in turn.calls:
                rows.append(("llm_call" if c.kind == "llm" else "tool_call", {
                    "id": f"{turn.id}/{c.values['seq']}", "turn_id": turn.id, "thread_id": th.thread_id,
                    "started_at": turn.started_at, **c.values,
                }))
            end = turn.started_at + timedelta(seconds=1)
            rows.append(("thread", {**start, "updated_at": end}))
            rows.append(("turn", {"id": turn.id, "thread_id": th.thread_id, "started_at": turn.started_at,
                                  "input_messages": turn.input_messages, "meta": {}, "ended_at": end,
                                  "latency_ms": 1000.0, "error": turn.error,
                                  "output_messages": turn.output_messages}))
    return rows


def _utc(d: datetime | None) -> datetime | None:
    return None if d is None else (d if d.tzinfo else d.replace(tzinfo=UTC))


def _m(d: dict[str, Any]) -> Message:
    return Message.model_validate(d)


def _storable_spec(obj: Any) -> Any:
    """What the store promises to give back: the written values made storable (NUL as U+2400,
    lone surrogates as U+FFFD, non-finite floats as None, integers past 64 bits as text)."""
    import dataclasses

    from loop_middleware._text import storable

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _storable_spec(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj)})
    if isinstance(obj, datetime):
        return obj
    if isinstance(obj, list) and obj and dataclasses.is_dataclass(obj[0]):
        return [_storable_spec(o) for o in obj]
    return storable(obj)


def check_round_trip(store: Store, spec: list[ThreadSpec]) -> None:
    spec = [_storable_spec(t) for t in spec]
    got = store.list_threads()
    # oldest thread first (ties by id); turns by start time (ties by id); calls by seq
    want = sorted(spec, key=lambda t: (t.created_at, t.thread_id))
    assert [t.thread_id for t in got] == [t.thread_id for t in want]
    for g, w in zip(got, want, strict=True):
        assert _utc(g.created_at) == w.created_at and g.user_id == w.user_id
        wturns = sorted(w.turns, key=lambda t: (t.started_at, t.id))
        assert [t.id for t in g.turns] == [t.id for t in wturns]
        for gt, wt in zip(g.turns, wturns, strict=True):
            assert gt.error == wt.error and _utc(gt.started_at) == wt.started_at
            llm = [c.values for c in wt.calls if c.kind == "llm"]
            tools = [c.values for c in wt.calls if c.kind == "tool"]
            assert [(c.seq, c.model, c.provider, c.input_tokens, c.output_tokens, c.error, c.finish_reason)
                    for c in gt.llm_calls] == [
                (c["seq"], c["model"], c["provider"], c["input_tokens"], c["output_tokens"], c["error"],
                 c["finish_reason"]) for c in llm]
            assert [c.input_messages for c in gt.llm_calls] == [[_m(m) for m in c["input_messages"]] for c in llm]
            assert [c.output_messages for c in gt.llm_calls] == [[_m(m) for m in c["output_messages"]] for c in llm]
            assert [(c.seq, c.name, c.result, c.error, c.tool_call_id) for c in gt.tool_calls] == [
                (c["seq"], c["name"], c["result"], c["error"], c["tool_call_id"]) for c in tools]
            for gc, wc in zip(gt.tool_calls, tools, strict=True):
                assert gc.arguments == wc["arguments"]
                assert math.isclose(gc.latency_ms or 0.0, wc["latency_ms"], rel_tol=1e-12)
            # the turn's conversation: the user's messages, then each step's output in order
            expected = [_m(m) for m in wt.input_messages]
            for c in sorted(wt.calls, key=lambda c: c.values["seq"]):
                if c.kind == "llm":
                    expected += [_m(m) for m in c.values["output_messages"]]
                else:
                    v = c.values
                    content = (v["result"] or "") if v["error"] is None else f"Error: {v['error']}"
                    expected.append(Message(role="tool", content=content, name=v["name"],
                                            tool_call_id=v["tool_call_id"]))
            if not llm:
                expected += [_m(m) for m in wt.output_messages]
            assert gt.messages == expected


# --- the round trip -----------------------------------------------------------------------------

_SETTINGS = settings(
    max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(spec=threads(), batch=st.integers(1, 40))
def test_threads_round_trip_on_sqlite(spec: list[ThreadSpec], batch: int) -> None:
    rows = capture_rows(spec)
    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{Path(d) / 'p.db'}")
        try:
            # in batches of any size, as the background writer groups them
            for i in range(0, len(rows), batch):
                store.write_rows(rows[i : i + batch])
            store.write_rows(rows[: batch])  # a replayed batch changes nothing
            check_round_trip(store, spec)
            check_round_trip(Store(store.url), spec)  # from disk, not from a cache
        finally:
            store.close()


@pytest.fixture(scope="module")
def pg_store(postgres_url: str) -> Any:
    from tests.conftest import new_pg_database

    store = Store(new_pg_database(postgres_url))
    yield store
    store.close()


@settings(_SETTINGS, max_examples=20)
@given(spec=threads(), batch=st.integers(1, 40))
def test_threads_round_trip_on_postgres(pg_store: Store, spec: list[ThreadSpec], batch: int) -> None:
    with pg_store.engine.begin() as conn:  # a fresh database per example is too slow: empty it
        conn.execute(text("TRUNCATE loop_thread, loop_turn, loop_llm_call, loop_tool_call"))
    rows = capture_rows(spec)
    for i in range(0, len(rows), batch):
        pg_store.write_rows(rows[i : i + batch])
    check_round_trip(pg_store, spec)


# --- what the store does with text capture would have cleaned -----------------------------------


def _turn_with(tid: str, **values: Any) -> list[Row]:
    return [("thread", {"thread_id": tid, "created_at": T0}),
            ("turn", {"id": f"{tid}-0", "thread_id": tid, "started_at": T0,
                      "input_messages": [{"role": "user", "content": "hi"}], **values})]


def test_nul_in_a_text_column_is_kept_visibly(store_url: str) -> None:
    """PostgreSQL text cannot hold NUL: every database gets U+2400 instead, nothing fails."""
    store = Store(store_url)
    store.write_rows(_turn_with("n", error="a\x00b"))
    assert store.get_thread("n").turns[0].error == "a\u2400b"  # type: ignore[union-attr]


def test_nan_in_json_is_stored_as_null(store_url: str) -> None:
    """PostgreSQL's json refuses NaN: every database stores null instead."""
    store = Store(store_url)
    rows = [*_turn_with("f"), ("tool_call", {"id": "f-t", "turn_id": "f-0", "thread_id": "f", "name": "t",
                                             "arguments": {"x": float("nan"), "y": 1.5}})]
    store.write_rows(rows)
    assert store.get_thread("f").turns[0].tool_calls[0].arguments == {"x": None, "y": 1.5}  # type: ignore[union-attr]


def test_lone_surrogate_in_a_text_column_is_replaced(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.write_rows(_turn_with("s", error="a\ud800b"))
    assert store.get_thread("s").turns[0].error == "a\ufffd\ufffd\ufffdb"  # type: ignore[union-attr]


def test_first_created_at_is_kept_within_one_batch(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    later = T0 + timedelta(minutes=5)
    store.write_rows([*_turn_with("k"), ("thread", {"thread_id": "k", "created_at": later})])
    assert _utc(store.get_thread("k").created_at) == T0  # type: ignore[union-attr]
