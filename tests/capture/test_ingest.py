"""Ingest of OTLP/JSON exports: spans from real instrumentations, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loop_middleware import IngestError, LoopCallbackHandler, Store
from loop_middleware.capture import ingest_otlp
from tests._fakes import fake_model, reply, tool_call
from tests.capture.test_handler import build_graph, order_lookup


def otlp_json(spans: Any) -> dict[str, Any]:
    """Spans as the OTLP/JSON an exporter or collector writes."""
    return MessageToDict(encode_spans(spans))


def test_genai_spans_from_our_handler_roundtrip(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = LoopCallbackHandler(f"sqlite:///{tmp_path / 'a.db'}", tracer_provider=provider)
    graph = build_graph(
        fake_model(tool_call("order_lookup", {"order_id": "12"}), reply("Order 12 shipped."), reply("Bye!")),
        [order_lookup],
    )
    for text in ("Where is order 12?", "thanks"):
        graph.invoke({"messages": [("user", text)]},
                     config={"callbacks": [handler], "configurable": {"thread_id": "conv-9"}})
    handler.flush()
    f = tmp_path / "export.json"
    f.write_text(json.dumps(otlp_json(exporter.get_finished_spans())))

    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    report = ingest_otlp(f, store)
    assert (report.threads, report.turns, report.llm_calls, report.tool_calls) == (1, 2, 3, 1)
    assert report.skipped == []
    t = store.get_thread("conv-9")
    assert t is not None
    assert [turn.user_text for turn in t.turns] == ["Where is order 12?", "thanks"]
    assert [turn.reply_text for turn in t.turns] == ["Order 12 shipped.", "Bye!"]
    assert t.turns[0].tool_calls[0].name == "order_lookup"
    assert t.turns[0].tool_calls[0].arguments == {"order_id": "12"}
    assert t.turns[0].llm_calls[0].input_tokens == 20
    # the prompt version survives the trip (hash of the system message)
    assert t.turns[0].llm_calls[0].prompt_version is not None


def test_openinference_spans_from_a_real_instrumentation(tmp_path: Path) -> None:
    from openinference.instrumentation.langchain import LangChainInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inst = LangChainInstrumentor()
    inst.instrument(tracer_provider=provider)
    try:
        graph = build_graph(
            fake_model(tool_call("order_lookup", {"order_id": "3"}), reply("Order 3 is on its way.")),
            [order_lookup],
        )
        graph.invoke({"messages": [("user", "Where is order 3?")]},
                     config={"configurable": {"thread_id": "oi-1"}, "metadata": {"session_id": "oi-1"}})
    finally:
        inst.uninstrument()
    data = otlp_json(exporter.get_finished_spans())
    store = Store(f"sqlite:///{tmp_path / 'oi.db'}")
    report = ingest_otlp(data, store)
    assert report.turns == 1 and report.llm_calls == 2 and report.tool_calls == 1
    [thread] = store.list_threads()
    turn = thread.turns[0]
    assert "Where is order 3?" in turn.user_text
    assert turn.reply_text == "Order 3 is on its way."
    assert turn.tool_calls[0].name == "order_lookup"
    assert "shipped on Monday" in (turn.tool_calls[0].result or "")


def _span(span_id: str, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "traceId": "t" * 32, "spanId": span_id, "name": "chat gpt", "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000500000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.conversation.id", "value": {"stringValue": "c1"}},
            {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": f"question {span_id}"}]}])}},
            {"key": "gen_ai.output.messages", "value": {"stringValue": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "answer"}]}])}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
        ],
    }
    s.update(over)
    return s


def _req(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": list(spans)}]}]}


def test_malformed_records_are_named_and_good_ones_ingested(tmp_path: Path) -> None:
    good = _span("a1")
    other_trace = _span("b1", traceId="u" * 32)
    no_id = _span("", spanId="")
    bad_time = _span("c1", startTimeUnixNano="yesterday")
    bad_attr = _span("d1", attributes=[{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "many"}}])
    lines = [
        json.dumps(_req(good, no_id)).encode(),
        b'{"resourceSpans": [ {"truncated": ',
        json.dumps(_req(bad_time, bad_attr)).encode(),
        b"\xff\xfe not utf-8 \x80",
        json.dumps(_req(other_trace)).encode(),
        json.dumps({"hello": "world"}).encode(),
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"\n".join(lines))
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    report = ingest_otlp(f, store)
    assert report.turns == 2
    assert len(report.skipped) == 6
    text = "\n".join(report.skipped)
    assert f"{f}:1" in text and "field 'spanId'" in text
    assert f"{f}:2" in text and "not valid JSON" in text
    assert "field 'startTimeUnixNano'" in text and "span c1" in text
    assert "field 'intValue'" in text and "span d1" in text
    assert f"{f}:4" in text and "not valid UTF-8" in text
    assert f"{f}:6" in text and "resourceSpans" in text
    [t] = store.list_threads()
    assert t.thread_id == "c1"
    assert sorted(turn.user_text for turn in t.turns) == ["question a1", "question b1"]


def test_unreadable_inputs_raise_clear_errors(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'e.db'}")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(IngestError, match="empty input"):
        ingest_otlp(empty, store)
    with pytest.raises(IngestError, match="cannot read"):
        ingest_otlp(tmp_path / "missing.json", store)
    junk = tmp_path / "junk.json"
    junk.write_text('{"not": "otlp"}')
    with pytest.raises(IngestError, match="no OTLP/JSON trace data"):
        ingest_otlp(junk, store)
    assert store.count_threads() == 0
