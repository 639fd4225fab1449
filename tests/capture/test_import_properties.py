"""Property tests of history import: random OpenAI-style conversations (system prompt or not,
several user messages in a row, parallel tool calls answered in any order, tool errors,
timestamps or none) are imported, the store is reopened, and every turn, LLM call and tool
call is compared with the source. Random junk records never crash an import.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop_middleware import Store
from loop_middleware.capture import import_transcripts
from loop_middleware.privacy import Redactor
from tests.conftest import new_pg_database

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
text = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=40)
words = st.text("abcdefghij klmnop", min_size=1, max_size=12)
args_value = st.dictionaries(st.sampled_from(["id", "q", "n", "city"]),
                             st.integers(0, 999) | words, max_size=3)


@dataclass
class Conv:
    thread_id: str
    system: str | None
    messages: list[dict[str, Any]]
    # the expectation, built alongside the messages (independently of the importer)
    turns: list[dict[str, Any]] = field(default_factory=list)


@st.composite
def conversations(draw: st.DrawFn, idx: int) -> Conv:
    system = draw(st.none() | text.filter(bool))
    stamped = draw(st.booleans())
    t0 = datetime(2024, 5, 1, tzinfo=UTC) + timedelta(days=idx)
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    conv = Conv(f"prop-{idx}", system, msgs)
    n_turns = draw(st.integers(1, 4))
    for ti in range(n_turns):
        users = draw(st.lists(text, min_size=1, max_size=2))
        turn: dict[str, Any] = {"users": users, "steps": []}
        msgs.extend({"role": "user", "content": u} for u in users)
        for ri in range(draw(st.integers(0, 2))):
            calls = [{"id": f"c{ti}-{ri}-{k}", "name": draw(st.sampled_from(["search_kb", "track", "refund"])),
                      "args": draw(args_value)} for k in range(draw(st.integers(1, 2)))]
            lead = draw(text)
            msgs.append({"role": "assistant", "content": lead or None, "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["args"])}} for c in calls]})
            results = [(c, draw(text), draw(st.booleans())) for c in calls]
            for c, res, failed in draw(st.permutations(results)):
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": res,
                             **({"status": "error"} if failed else {})})
            turn["steps"].append({"content": lead, "calls": results})
        # Only the last turn may go unanswered: user messages in a row are one turn.
        if ti < n_turns - 1 or draw(st.integers(0, 4)) > 0:
            answer = draw(text)
            msgs.append({"role": "assistant", "content": answer})
            turn["steps"].append({"content": answer, "calls": []})
        conv.turns.append(turn)
    if stamped:
        for i, m in enumerate(msgs):
            m["timestamp"] = (t0 + timedelta(seconds=i)).isoformat()
    return conv


def check(conv: Conv, store: Store, red: Redactor) -> None:
    r = red.redact
    t = store.get_thread(conv.thread_id)
    assert t is not None
    assert len(t.turns) == len(conv.turns)
    history: list[tuple[str, str]] = [("system", r(conv.system))] if conv.system else []
    for got, want in zip(t.turns, conv.turns, strict=True):
        assert got.user_text == "\n".join(r(u) for u in want["users"])
        history += [("user", r(u)) for u in want["users"]]
        assert len(got.llm_calls) == len(want["steps"])
        tools = iter(got.tool_calls)
        seq = 0
        for call, step in zip(got.llm_calls, want["steps"], strict=True):
            assert call.seq == seq
            seq += 1
            assert [(m.role, m.content) for m in call.input_messages] == history
            [out] = call.output_messages
            assert out.content == r(step["content"])
            assert [(c["id"], c["name"], c["args"]) for c in out.tool_calls] == [
                (c["id"], c["name"], red.redact_value(c["args"])) for c, _, _ in step["calls"]]
            assert len(call.prompt_versions) == (1 if conv.system else 0)
            history.append(("assistant", r(step["content"])))
            for c, res, failed in step["calls"]:  # in the assistant's order, whatever the results' order
                tc = next(tools)
                assert (tc.seq, tc.name, tc.arguments, tc.tool_call_id) == (seq, c["name"], red.redact_value(c["args"]), c["id"])
                assert tc.result == r(res)
                # a failed tool's text is its error ("error" when it said nothing)
                assert tc.error == ((r(res) or "error") if failed else None)
                seq += 1
            # the tool results, in the order the transcript gives them
            history += [("tool", r(res)) for _, res, _ in sorted(
                step["calls"], key=lambda x: [m.get("tool_call_id") for m in conv.messages].index(x[0]["id"]))]
        assert next(tools, None) is None
        replies = [s["content"] for s in want["steps"] if s["content"]]
        assert got.reply_text == (r(replies[-1]) if replies else "")


def run(convs: list[Conv], url: str) -> None:
    red = Redactor()
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "history.jsonl"
        f.write_text("".join(json.dumps({"id": c.thread_id, "messages": c.messages}) + "\n" for c in convs),
                     encoding="utf-8")
        report = import_transcripts(Store(url), f)
        assert report.skipped == [] and report.threads == len(convs)
        store = Store(url)  # reopened: what is on disk
        for c in convs:
            check(c, store, red)
        again = import_transcripts(store, f)
        assert (again.turns, again.llm_calls, again.tool_calls) == (report.turns, report.llm_calls, report.tool_calls)
        assert Store(url).count_threads() == len(convs)
        store.close()


@SETTINGS
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(*(conversations(i) for i in range(n)))))
def test_random_conversations_roundtrip_on_sqlite(convs: tuple[Conv, ...]) -> None:
    with tempfile.TemporaryDirectory() as d:
        run(list(convs), f"sqlite:///{Path(d) / 'p.db'}")


@pytest.mark.usefixtures("postgres_url")
@settings(SETTINGS, max_examples=10)
@given(data=st.data())
def test_random_conversations_roundtrip_on_postgres(postgres_url: str, data: st.DataObject) -> None:
    convs = [data.draw(conversations(i)) for i in range(data.draw(st.integers(1, 3)))]
    run(convs, new_pg_database(postgres_url))


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "messages", "role", "content", "tool_calls", "run_type", "trace_id",
                         "inputs", "outputs", "start_time", "traceId", "type", "startTime", "input",
                         "output", "observations", "name", "value", "feedback", "parent_run_id",
                         "timestamp", "sessionId", "extra", "x"]), inner, max_size=6),
    max_leaves=25,
)


@SETTINGS
@given(junk=st.lists(json_value, max_size=6), fmt=st.sampled_from(["openai", "langsmith", "langfuse"]))
def test_junk_records_never_crash_and_good_ones_still_land(junk: list[Any], fmt: str) -> None:
    good = {"openai": {"id": "good", "messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]},
            "langsmith": {"id": "good", "trace_id": "good", "run_type": "chain",
                          "start_time": "2025-01-01T00:00:00Z", "inputs": {"input": "hi"},
                          "outputs": {"output": "hello"}, "extra": {"metadata": {"thread_id": "good"}}},
            "langfuse": {"id": "good", "timestamp": "2025-01-01T00:00:00Z", "sessionId": "good",
                         "input": "hi", "output": "hello", "observations": [], "scores": []}}[fmt]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "junk.jsonl"
        f.write_text("".join(json.dumps(x, allow_nan=True) + "\n" for x in [*junk, good]))
        store = Store(f"sqlite:///{Path(d) / 'j.db'}")
        report = import_transcripts(store, f, format=fmt)  # type: ignore[arg-type]
        # The good record is stored, unless a junk record claims its id (it then comes first).
        if not any('"good"' in json.dumps(x, allow_nan=True) for x in junk):
            t = store.get_thread("good")
            assert t is not None and t.turns[-1].reply_text == "hello"
        # Every record not imported is named: the file and the line.
        assert all(str(f) in m for m in report.skipped)
        store.close()
