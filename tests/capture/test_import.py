"""History import of OpenAI-style transcripts: real files, real SQLite and PostgreSQL.

The expected values are read off the fixture file by hand (tests/capture/fixtures/), never
from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from loop_middleware import IngestError, Store, StoreError, load_prompt
from loop_middleware.capture import ImportReport, import_transcripts
from loop_middleware.store._tables import (
    FeedbackRow,
    LLMCallRow,
    PromptVersionRow,
    ThreadRow,
    ToolCallRow,
    TurnRow,
)
from tests.conftest import PgServer, new_pg_database, reopen

FIXTURES = Path(__file__).parent / "fixtures"
HISTORY = FIXTURES / "openai_history.jsonl"
SYSTEM = "You are the support agent of Acme Pay. Be brief and kind.\n"


def table_counts(store: Store) -> dict[str, int]:
    """Rows per capture table, counted in SQL."""
    out = {}
    with store.engine.connect() as conn:
        for row in (ThreadRow, TurnRow, LLMCallRow, ToolCallRow, FeedbackRow, PromptVersionRow):
            t = row.__table__  # type: ignore[attr-defined]
            out[t.name] = conn.execute(select(func.count()).select_from(t)).scalar_one()
    return out


def test_openai_history_lands_as_threads_with_the_live_capture_shape(store_url: str, tmp_path: Path) -> None:
    prompt_file = tmp_path / "support.md"
    prompt_file.write_text(SYSTEM, encoding="utf-8")
    pv = load_prompt(prompt_file)
    report = import_transcripts(Store(store_url), HISTORY)
    assert report.files == {str(HISTORY): "openai"}
    assert report.skipped == [] and report.warnings == []
    # 6 conversations; turns: 2 + 1 + 1 + 1 + 2 + 1; assistant messages after a user: 10;
    # tool results: 2 + 1 + 1; feedback: thumbs+outcome, message thumbs, outcome.
    assert (report.records, report.threads, report.turns, report.llm_calls, report.tool_calls,
            report.feedback) == (6, 6, 8, 10, 4, 4)

    store = reopen(store_url)
    t = store.get_thread("conv-100")
    assert t is not None and t.user_id == "u-1"
    assert t.created_at is not None and t.created_at.isoformat().startswith("2025-03-01T09:00:00")
    assert [turn.user_text for turn in t.turns] == ["Where are orders 12 and 13?", "thanks!"]
    first = t.turns[0]
    assert first.reply_text == "Order 12 was delivered on Monday; order 13 is out for delivery."
    # Two parallel calls whose results came back in the other order: tool calls follow the
    # assistant message's order, each with its own result.
    assert [(c.seq, c.name, c.arguments, c.result, c.tool_call_id) for c in first.tool_calls] == [
        (1, "track_order", {"order_id": "12"}, "12: delivered Monday", "call_12"),
        (2, "track_order", {"order_id": "13"}, "13: out for delivery", "call_13"),
    ]
    llm0, llm1 = first.llm_calls
    assert (llm0.seq, llm1.seq) == (0, 3)
    assert (llm0.model, llm0.input_tokens, llm0.output_tokens, llm0.finish_reason) == (
        "gpt-4o-mini", 812, 40, "tool_calls")
    # Each call's input is the history so far, system prompt first.
    assert [m.role for m in llm0.input_messages] == ["system", "user"]
    assert [m.role for m in llm1.input_messages] == ["system", "user", "assistant", "tool", "tool"]
    assert llm1.input_messages[0].content == SYSTEM
    # The system message is the registered prompt: same version, with its file.
    assert llm0.prompt_version is not None and llm0.prompt_version.sha256 == pv.sha256
    assert llm0.prompt_version.path == str(prompt_file)
    assert [m.role for m in first.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    # Timestamps from the file: the turn took 3.5 s from question to answer.
    assert first.latency_ms == pytest.approx(3500.0)
    assert t.turns[1].latency_ms == pytest.approx(800.0)
    assert sorted((f.kind, f.label, f.score, f.comment) for f in t.feedback) == [
        ("feedback", "thumbs_down", 0.0, "too slow"), ("outcome", "resolved", None, None)]

    de = store.get_thread("conv-101")
    assert de is not None and de.user_id == "u-2" and de.metadata["channel"] == "web"
    # Content parts joined; the e-mail redacted before it was stored, as live capture does.
    assert de.turns[0].user_text == "Ich habe keine Rückerstattung bekommen. Mail: [EMAIL]"
    assert "jana.schmidt" not in json.dumps([m.model_dump() for c in de.turns[0].llm_calls
                                             for m in c.input_messages])
    assert [(f.label, f.turn_id) for f in de.feedback] == [("thumbs_down", de.turns[0].id)]

    # The legacy functions API: function_call + a "function" message.
    bal = store.get_thread("conv-103")
    assert bal is not None
    [call] = bal.turns[0].tool_calls
    assert (call.name, call.arguments, call.result) == ("get_balance", {}, '{"balance": "12.50 EUR"}')

    # A greeting before the user spoke is history, not a turn; two user messages in a row open
    # one turn, which got no reply.
    g = store.get_thread("conv-104")
    assert g is not None and [turn.user_text for turn in g.turns] == ["my card was declined",
                                                                       "the visa\nhello??"]
    assert [m.role for m in g.turns[0].llm_calls[0].input_messages] == ["assistant", "user"]
    assert g.turns[1].llm_calls == [] and g.turns[1].reply_text == ""

    # LangChain message dicts, and a tool that failed.
    r = store.get_thread("conv-105")
    assert r is not None
    [failed] = r.turns[0].tool_calls
    assert failed.error == "Error: refund service unavailable (HTTP 503)"
    assert [(f.kind, f.label, f.score) for f in r.feedback] == [("outcome", "churned", 1.0)]

    # A record without an id gets one from its content.
    blob = json.dumps([{"role": "user", "content": "hello?"}, {"role": "assistant", "content": "Hi! How can I help?"}],
                      sort_keys=True, ensure_ascii=False)
    anon = store.get_thread("conv-" + hashlib.sha256(blob.encode()).hexdigest()[:24])
    assert anon is not None and anon.turns[0].reply_text == "Hi! How can I help?"

    # Where the threads came from.
    with store.engine.connect() as conn:
        sources = set(conn.execute(select(ThreadRow.__table__.c.source)).scalars())  # type: ignore[attr-defined]
    assert sources == {"import"}


def test_importing_the_same_file_again_changes_nothing(store_url: str) -> None:
    first = import_transcripts(Store(store_url), HISTORY)
    before = table_counts(reopen(store_url))
    threads_before = [t.model_dump(exclude={"updated_at"}) for t in reopen(store_url).list_threads()]
    second = import_transcripts(Store(store_url), HISTORY)
    assert table_counts(reopen(store_url)) == before
    assert before["loop_thread"] == 6 and before["loop_turn"] == 8
    assert [t.model_dump(exclude={"updated_at"}) for t in reopen(store_url).list_threads()] == threads_before
    assert (first.threads, first.turns, first.llm_calls) == (second.threads, second.turns, second.llm_calls)


def _line(rec: Any) -> bytes:
    return json.dumps(rec).encode() + b"\n"


def test_bad_records_are_named_and_the_good_ones_stored(tmp_path: Path) -> None:
    good = {"id": "ok-1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [
        _line(good),                                                             # 1
        b'{"id": "bad-utf8", "messages": [{"role": "user", "content": "caf\xe9"}]}\n',  # 2
        b'{"id": "cut", "messages": [\n',                                        # 3
        _line({"id": "x1", "messages": "hello"}),                                # 4
        _line({"id": "x2", "messages": [{"content": "no role"}]}),               # 5
        _line({"id": "x3", "messages": [{"role": "user", "content": 42}]}),      # 6
        _line({"id": "x4", "messages": []}),                                     # 7
        _line({"id": "x5", "messages": [{"role": "system", "content": "s"},
                                        {"role": "assistant", "content": "a"}]}),  # 8
        _line({"id": "x6", "messages": [{"role": "user", "content": "x" * 5000}]}),  # 9
        _line({"id": True, "messages": [{"role": "user", "content": "hi"}]}),    # 10
        _line({"id": "x8", "messages": [{"role": "assistant", "content": "", "tool_calls": {"a": 1}},
                                        {"role": "user", "content": "hi"}]}),    # 11
        _line({"id": "x9", "messages": [{"role": "user", "content": "hi", "timestamp": "yesterday"}]}),  # 12
        _line({"id": "x10", "messages": [{"role": "wizard", "content": "hi"}]}),  # 13
        _line({"id": "ok-2", "messages": [{"role": "user", "content": "bye"}]}),  # 14
        _line({"id": "x11", "messages": [{"role": "user", "content": "hi"}], "feedback": {"score": "great"}}),  # 15
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"".join(lines))
    store = Store(f"sqlite:///{tmp_path / 'bad.db'}")
    report = import_transcripts(store, f, max_message_chars=1000)
    assert sorted(t.thread_id for t in store.list_threads()) == ["ok-1", "ok-2"]
    assert report.threads == 2
    by_line = {int(re.search(r"mixed\.jsonl:(\d+)", m).group(1)): m for m in report.skipped}  # type: ignore[union-attr]
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15]
    expect = {
        2: "not valid UTF-8", 3: "not valid JSON", 4: "field 'messages'", 5: "field 'messages[0].role'",
        6: "field 'messages[0].content'", 7: "empty conversation", 8: "no user message",
        9: "over the limit of 1,000", 10: "field 'id'", 11: "field 'messages[0].tool_calls'",
        12: "field 'messages[0].timestamp'", 13: "role 'wizard'", 15: "field 'feedback.score'",
    }
    for n, text in expect.items():
        assert text in by_line[n], by_line[n]
    assert "field 'messages[0].content'" in by_line[9]
    # With no limit the big message is imported whole.
    big = tmp_path / "big.jsonl"
    big.write_bytes(_line({"id": "big", "messages": [{"role": "user", "content": "x" * 3_000_000}]}))
    assert import_transcripts(store, big).skipped != []  # over the default 2,000,000
    assert import_transcripts(store, big, max_message_chars=None).threads == 1
    t = reopen(store.url).get_thread("big")
    assert t is not None and len(t.turns[0].user_text) == 3_000_000


def test_unreadable_inputs_stop_before_anything_is_written(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'u.db'}")
    good = tmp_path / "good.jsonl"
    good.write_bytes(_line({"id": "g", "messages": [{"role": "user", "content": "hi"}]}))
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"  \n")
    latin = tmp_path / "latin1.json"
    text = json.dumps({"id": "l", "messages": [{"role": "user", "content": "caf"}]},
                      indent=2).replace('"caf"', '"caf\xe9"')
    latin.write_bytes(text.encode("latin-1"))
    bad_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "\xe9" in ln)
    bad_col = text.splitlines()[bad_line - 1].index("\xe9") + 1
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "id": "b",\n  "messages": [\n', encoding="utf-8")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"foo": 1}, {"bar": 2}]), encoding="utf-8")
    cases = {
        tmp_path / "missing.jsonl": "cannot read",
        empty: "empty file",
        latin: f"not valid UTF-8 at line {bad_line}, column {bad_col}",
        broken: "not valid JSON or JSON Lines",
        unknown: "no record is an OpenAI-style conversation",
    }
    for path, text in cases.items():
        with pytest.raises(IngestError, match=text) as info:
            import_transcripts(store, [good, path])
        assert str(path) in str(info.value)
    assert store.count_threads() == 0  # the good file listed first was not half-imported
    # UTF-16 with a BOM (what some Windows tools write) is read.
    u16 = tmp_path / "u16.json"
    u16.write_bytes(json.dumps({"id": "w", "messages": [{"role": "user", "content": "grüß dich"}]}).encode("utf-16"))
    assert import_transcripts(store, u16).threads == 1
    t = store.get_thread("w")
    assert t is not None and t.turns[0].user_text == "grüß dich"


def test_records_in_memory_and_wrappers(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert import_transcripts(store, conv).threads == 1  # one bare conversation
    r = import_transcripts(store, [conv, {"id": "two", "messages": conv}])
    assert (r.records, r.threads, r.duplicates) == (2, 2, 0)
    f = tmp_path / "wrapped.json"
    f.write_text(json.dumps({"conversations": [{"id": "w1", "messages": conv}, {"id": "w2", "messages": conv}]}))
    r = import_transcripts(store, f)
    assert r.threads == 2 and store.get_thread("w2") is not None


def test_repeated_and_clashing_ids_in_one_import(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    more = [*msgs, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "that's all"}]
    other = [{"role": "user", "content": "something else"}]
    f = tmp_path / "dups.jsonl"
    f.write_bytes(b"".join(_line(r) for r in (
        {"id": "a", "messages": msgs}, {"id": "a", "messages": msgs},      # the same twice
        {"id": "b", "messages": msgs}, {"id": "b", "messages": more},      # a later, longer snapshot
        {"id": "c", "messages": msgs}, {"id": "c", "messages": other},     # a clash
    )))
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    report = import_transcripts(store, f)
    assert report.duplicates == 2
    assert [m for m in report.skipped if "dups.jsonl:6" in m and "'c' is already used" in m]
    b = store.get_thread("b")
    assert b is not None and len(b.turns) == 2
    c = store.get_thread("c")
    assert c is not None and c.turns[0].user_text == "hi"


class _DiesAfterFirstWrite(Store):
    """A store on a real PostgreSQL server that is shut down right after the first batch."""

    server: PgServer

    def write_rows(self, rows: Any) -> None:
        super().write_rows(rows)
        if self.server.data.exists() and not getattr(self, "_stopped", False):
            self._stopped = True
            self.server.stop()


def test_a_database_that_dies_mid_import_loses_nothing(pg_server: PgServer, tmp_path: Path) -> None:
    url = new_pg_database(pg_server.url)
    f = tmp_path / "many.jsonl"
    f.write_bytes(b"".join(_line({"id": f"c-{i}", "messages": [
        {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]})
        for i in range(250)))
    store = _DiesAfterFirstWrite(url)
    store.server = pg_server
    try:
        with pytest.raises(StoreError, match=r"after 100 of 250 conversations were written") as info:
            import_transcripts(store, f)
        assert info.value.transient
    finally:
        pg_server.start()
    store.close()
    assert reopen(url).count_threads() == 100  # the first transaction, whole
    report = import_transcripts(reopen(url), f)  # again, with the database back
    assert report.threads == 250
    assert table_counts(reopen(url))["loop_thread"] == 250
    assert table_counts(reopen(url))["loop_turn"] == 250


def test_report_reads_well() -> None:
    r = ImportReport(records=3, threads=2, turns=4, llm_calls=5, tool_calls=1, feedback=0,
                     skipped=["x"], duplicates=1)
    assert str(r) == ("3 records -> 2 threads, 4 turns, 5 LLM calls, 1 tool calls, 0 feedback; "
                      "1 records skipped; 1 duplicates")
