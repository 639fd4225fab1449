"""LangSmith and Langfuse exports, format detection, and ``loopmw import``.

The LangSmith export is made by langsmith's own tracer on a real LangGraph agent whose runs are
also captured live, so the imported threads are compared with what live capture stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langsmith._internal._serde import dumps_json
from typer.testing import CliRunner

from loop_middleware import IngestError, Store
from loop_middleware.capture import import_transcripts
from loop_middleware.cli import app
from loop_middleware.types import Thread
from tests.capture._import_sources import SCRIPT, langsmith_export
from tests.conftest import reopen

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def shape(t: Thread) -> list[dict[str, Any]]:
    """Everything a detector can see of a thread, minus timings (measured at different points)."""
    out = []
    for turn in t.turns:
        out.append({
            "id": turn.id, "user": turn.user_text, "reply": turn.reply_text, "error": turn.error,
            "messages": [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in turn.messages],
            "llm": [(c.id, c.seq, c.model, c.provider, c.input_tokens, c.output_tokens, c.finish_reason,
                     c.error, [(m.role, m.content, m.tool_calls) for m in c.input_messages],
                     [(m.role, m.content, m.tool_calls) for m in c.output_messages],
                     [v.sha256 for v in c.prompt_versions]) for c in turn.llm_calls],
            "tools": [(c.id, c.seq, c.name, c.arguments, c.result, c.error, c.tool_call_id)
                      for c in turn.tool_calls],
        })
    return out


def test_langsmith_export_imports_as_what_live_capture_stored(tmp_path: Path, store_url: str) -> None:
    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    path, runs = langsmith_export(tmp_path, live_url=live_url)
    assert {r["run_type"] for r in runs} >= {"chain", "llm", "tool"}
    report = import_transcripts(Store(store_url), path)
    assert report.files == {str(path): "langsmith"}
    assert report.skipped == [] and report.warnings == []
    live = {t.thread_id: t for t in reopen(live_url).list_threads()}
    imported = {t.thread_id: t for t in reopen(store_url).list_threads()}
    assert sorted(imported) == sorted(live) == sorted(tid for tid, _ in SCRIPT)
    for tid in live:
        assert shape(imported[tid]) == shape(live[tid]), tid
    t = imported["ls-conv-1"]
    # The card number was redacted on the way in, and the failed refund kept its error.
    assert "4111" not in json.dumps(shape(t)) and "[CARD]" in t.turns[1].user_text
    assert t.turns[1].tool_calls[0].error == "RuntimeError: refund service unavailable (HTTP 503)"
    assert t.turns[1].tool_calls[0].result is None
    # Real timings: each turn and call has a latency from the runs' start and end times.
    assert all(turn.latency_ms and turn.latency_ms > 0 for turn in t.turns)
    assert all(c.latency_ms is not None for turn in t.turns for c in turn.llm_calls)
    # The feedback record landed on the turn it was about.
    [fb] = t.feedback
    assert (fb.label, fb.score, fb.comment, fb.turn_id) == ("user_score", 0.0, "did not get my refund",
                                                             t.turns[1].id)
    # Idempotent: a second import adds nothing.
    again = import_transcripts(reopen(store_url), path)
    assert again.turns == report.turns
    assert {t.thread_id: shape(t) for t in reopen(store_url).list_threads()} == \
        {tid: shape(t) for tid, t in imported.items()}


def test_langsmith_nested_bulk_export_with_feedback_stats(tmp_path: Path) -> None:
    path, runs = langsmith_export(tmp_path)
    flat = Store(f"sqlite:///{tmp_path / 'flat.db'}")
    import_transcripts(flat, path)
    # The same runs as a nested tree (child_runs), inputs/outputs as JSON text as bulk exports
    # keep them, no trace_id on the children, and feedback_stats instead of feedback records.
    by_id = {r["id"]: dict(r) for r in runs}
    for r in by_id.values():
        r["inputs"], r["outputs"] = json.dumps(r.get("inputs")), json.dumps(r.get("outputs"))
        r.setdefault("child_runs", [])
    roots = []
    for r in sorted(by_id.values(), key=lambda r: r["dotted_order"]):
        if r.get("parent_run_id"):
            r.pop("trace_id")
            by_id[r["parent_run_id"]]["child_runs"].append(r)
        else:
            roots.append(r)
    last = max((r for r in roots if r["extra"]["metadata"]["thread_id"] == "ls-conv-1"),
               key=lambda r: r["start_time"])
    last["feedback_stats"] = {"user_score": {"n": 1, "avg": 0.0, "values": {}},
                              "category": {"n": 2, "avg": None, "values": {"wrong": 2, "ok": 0}}}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(roots), encoding="utf-8")
    tree = Store(f"sqlite:///{tmp_path / 'tree.db'}")
    report = import_transcripts(tree, nested)
    assert report.skipped == [], report.skipped
    assert {t.thread_id: shape(t) for t in tree.list_threads()} == \
        {t.thread_id: shape(t) for t in flat.list_threads()}
    t = tree.get_thread("ls-conv-1")
    assert t is not None
    assert sorted((f.label, f.score, f.turn_id) for f in t.feedback) == [
        ("user_score", 0.0, t.turns[1].id), ("wrong", None, t.turns[1].id)]


def test_a_broken_run_skips_its_trace_and_keeps_the_others(tmp_path: Path) -> None:
    path, runs = langsmith_export(tmp_path)
    lines = path.read_text().splitlines()
    bad_root = min((r for r in runs if r["extra"]["metadata"].get("thread_id") == "ls-conv-1"
                    and not r.get("parent_run_id")), key=lambda r: r["start_time"])
    tool = next(r for r in runs if r["run_type"] == "tool" and r["trace_id"] == bad_root["id"])
    out = []
    for ln in lines:
        rec = json.loads(ln)
        if rec.get("id") == tool["id"]:
            rec["start_time"] = "half past nine"
        out.append(json.dumps(rec))
    path.write_text("\n".join(out) + "\n")
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    report = import_transcripts(store, path)
    [msg] = report.skipped
    assert f"run {tool['id']}" in msg and "field 'start_time'" in msg and f"trace {bad_root['id']} skipped" in msg
    t = store.get_thread("ls-conv-1")
    assert t is not None and [turn.user_text for turn in t.turns] == [
        "Then refund order 12 please, my card is [CARD]"]
    assert store.get_thread("ls-conv-2") is not None


def test_langfuse_trace_details_with_observations_and_scores() -> None:
    store = Store("sqlite://")
    report = import_transcripts(store, FIXTURES / "langfuse_traces.json")
    assert report.files == {str(FIXTURES / "langfuse_traces.json"): "langfuse"}
    assert report.skipped == [] and report.warnings == []
    assert (report.threads, report.turns, report.llm_calls, report.tool_calls, report.feedback) == (2, 3, 4, 1, 2)
    t = store.get_thread("lf-session-1")  # two traces of one session: one thread, two turns
    assert t is not None and t.user_id == "lf-user-9" and t.metadata["plan"] == "pro"
    assert [turn.id for turn in t.turns] == ["lf-trace-1", "lf-trace-2"]
    first, second = t.turns
    assert first.user_text == "Where is order 12?" and first.reply_text == "Order 12 shipped on Monday."
    g1, g2 = first.llm_calls
    # The tool schemas the LangChain integration appends to a generation's input are not messages.
    assert [m.role for m in g1.input_messages] == ["system", "user"]
    assert [m.role for m in g2.input_messages] == ["system", "user", "assistant", "tool"]
    assert (g1.id, g1.model, g1.provider, g1.input_tokens, g1.output_tokens, g1.latency_ms) == (
        "gen-1a", "gpt-4o-mini-2024-07-18", "openai", 812, 21, pytest.approx(800.0))
    assert g1.output_messages[0].tool_calls == [{"id": "call-a", "name": "order_lookup", "args": {"order_id": "12"}}]
    [tool] = first.tool_calls
    assert (tool.id, tool.seq, tool.name, tool.arguments, tool.result, tool.tool_call_id, tool.latency_ms) == (
        "tool-1", 1, "order_lookup", {"order_id": "12"}, "Order 12: shipped on Monday", "call-a",
        pytest.approx(50.0))
    assert first.latency_ms == pytest.approx(2000.0)  # trace start to the last generation's end
    assert second.user_text == "and can you refund it? I was charged twice"
    assert [c.id for c in second.llm_calls] == ["gen-2a"]  # the EVENT is not a call
    assert sorted((f.label, f.score, f.comment, f.turn_id) for f in t.feedback) == [
        ("bad", 0.0, None, "lf-trace-2"), ("user-feedback", 0.0, "I still want my money back", "lf-trace-2")]
    # A trace without observations is read from its input and output.
    faq = store.get_thread("lf-trace-3")
    assert faq is not None
    assert (faq.turns[0].user_text, faq.turns[0].reply_text) == ("What are your opening hours?",
                                                                "We answer around the clock.")


def test_langfuse_v2_observations_page_with_string_io() -> None:
    store = Store("sqlite://")
    report = import_transcripts(store, FIXTURES / "langfuse_observations_v2.jsonl")
    assert report.skipped == [] and (report.threads, report.turns, report.feedback) == (1, 1, 1)
    t = store.get_thread("lf-session-2")
    assert t is not None and t.user_id == "lf-user-3"
    turn = t.turns[0]
    assert (turn.user_text, turn.reply_text) == ("Reset my password please",
                                                 "I sent a reset link to the e-mail on file.")
    assert [m.role for m in turn.llm_calls[0].input_messages] == ["system", "user"]
    assert [(f.label, f.score) for f in t.feedback] == [("thumbs", 1.0)]


def test_formats_are_detected_and_ambiguity_is_an_error(tmp_path: Path) -> None:
    conv = {"id": "c", "messages": [{"role": "user", "content": "hi"}]}
    run = {"id": "r1", "run_type": "chain", "trace_id": "r1", "start_time": "2025-01-01T00:00:00Z",
           "inputs": {"input": "hello"}, "outputs": {"output": "hi there"}}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(conv) + "\n" + json.dumps(run) + "\n")
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    with pytest.raises(IngestError, match=r"cannot tell the format: 1 look like OpenAI-style message "
                                          r"lists \(first: .*mixed.jsonl:1\); 1 look like LangSmith runs "
                                          r"\(first: .*mixed.jsonl:2\); say which with --format"):
        import_transcripts(store, mixed)
    assert store.count_threads() == 0
    # Saying which: the run is imported, the other record is named.
    report = import_transcripts(store, mixed, format="langsmith")
    assert report.threads == 1 and len(report.skipped) == 1 and "mixed.jsonl:1" in report.skipped[0]
    t = store.get_thread("r1")
    assert t is not None and (t.turns[0].user_text, t.turns[0].reply_text) == ("hello", "hi there")
    both = tmp_path / "both.json"
    both.write_text(json.dumps([{"messages": [{"role": "user", "content": "x"}], "run_type": "chain"}]))
    with pytest.raises(IngestError, match="looks like OpenAI-style message lists and LangSmith runs"):
        import_transcripts(store, both)
    with pytest.raises(Exception, match="format must be auto"):
        import_transcripts(store, mixed, format="csv")  # type: ignore[arg-type]


def test_cli_import(tmp_path: Path) -> None:
    res = runner.invoke(app, ["import", "--help"], terminal_width=120)
    assert res.exit_code == 0
    for word in ("openai", "langsmith", "langfuse", "--format", "tool_calls", "sessionId", "--prompt"):
        assert word in res.output
    db = tmp_path / "cli.db"
    prompt = tmp_path / "support.md"
    prompt.write_text("You are the support agent of Acme Pay. Be brief and kind.\n")
    res = runner.invoke(app, ["import", str(FIXTURES / "openai_history.jsonl"),
                              str(FIXTURES / "langfuse_traces.json"), "--db", str(db), "--prompt", str(prompt)])
    assert res.exit_code == 0, res.output
    assert "read as openai" in res.output and "read as langfuse" in res.output
    assert "9 records -> 8 threads, 11 turns" in res.output
    t = Store(str(db)).get_thread("conv-100")
    assert t is not None and t.turns[0].llm_calls[0].prompt_version is not None
    assert t.turns[0].llm_calls[0].prompt_version.name == "support"
    res = runner.invoke(app, ["threads", "--db", str(db)])
    assert "conv-100" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "c", "messages": [{"role": "user", "content": "hi"}]}) + "\n"
                   + json.dumps({"id": "r", "run_type": "chain"}) + "\n")
    res = runner.invoke(app, ["import", str(bad), "--db", str(db)])
    assert res.exit_code == 1 and "--format" in res.output
    res = runner.invoke(app, ["import", str(bad), "--db", str(db), "--format", "openai"])
    assert res.exit_code == 0 and "skipped" in res.output
    res = runner.invoke(app, ["import", str(bad), "--db", str(db), "--format", "csv"])
    assert res.exit_code == 1 and "--format takes" in res.output


def test_langsmith_prompt_runs_give_the_declared_prompt_version(tmp_path: Path) -> None:
    """A prompt-template run's metadata (here LangChain hub's) names the version of the system
    text it rendered: the import attributes the LLM call to it, as live capture does."""
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tracers.langchain import LangChainTracer

    from loop_middleware import LoopCallbackHandler
    from tests._fakes import fake_model, reply
    from tests.capture._import_sources import CapturingClient

    template = ChatPromptTemplate.from_messages([
        ("system", "You are the support agent for {product}. Answer in two sentences at most."),
        ("human", "{question}"),
    ])
    template.metadata = {"lc_hub_owner": "acme", "lc_hub_repo": "support-system",
                         "lc_hub_commit_hash": "0f1e2d3c"}
    chain = template | fake_model(reply("Yes, we ship to Canada."))
    client = CapturingClient()
    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    handler = LoopCallbackHandler(live_url, emit_spans=False)
    chain.invoke({"product": "Acme", "question": "Do you ship to Canada?"},
                 config={"callbacks": [LangChainTracer(client=client, project_name="p"), handler],
                         "metadata": {"thread_id": "hub-1"}})
    handler.flush()
    handler.close()
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([json.loads(dumps_json(r)) for r in client.captured.values()]),
                    encoding="utf-8")
    store = Store(f"sqlite:///{tmp_path / 'imported.db'}")
    report = import_transcripts(store, path, format="langsmith")
    assert report.skipped == [], report.skipped
    imported = store.get_thread("hub-1")
    live = reopen(live_url).get_thread("hub-1")
    assert imported is not None and live is not None
    [call] = imported.turns[0].llm_calls
    [version] = call.prompt_versions
    assert (version.name, version.git_commit) == ("acme/support-system", "0f1e2d3c")
    assert version.text.startswith("You are the support agent for {product}.")
    assert [v.sha256 for v in call.prompt_versions] == \
        [v.sha256 for v in live.turns[0].llm_calls[0].prompt_versions]
