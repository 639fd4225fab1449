"""Prompt versions (files, hashes, git, templates) and OpenTelemetry spans."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import SystemMessage
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loop_middleware import ConfigError, LoopCallbackHandler, load_prompt
from loop_middleware.prompts import sha256_text, version_of
from tests._fakes import fake_model, reply, tool_call
from tests.capture.test_handler import build_graph, order_lookup, run
from tests.conftest import reopen


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


def test_load_prompt_records_hash_path_and_git_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    f = tmp_path / "support.md"
    f.write_text("You are a support agent.\n")
    git(tmp_path, "add", "support.md")
    git(tmp_path, "commit", "-qm", "prompt")
    head = git(tmp_path, "rev-parse", "HEAD")
    pv = load_prompt(f)
    assert pv.sha256 == sha256_text("You are a support agent.\n")
    assert pv.git_commit == head and pv.git_dirty is False
    assert pv.name == "support"
    f.write_text("You are a support agent. Be brief.\n")
    edited = load_prompt(f)
    assert edited.git_commit == head and edited.git_dirty is True
    assert edited.sha256 != pv.sha256


def test_load_prompt_outside_git_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("hello")
    assert load_prompt(f).git_commit is None
    with pytest.raises(ConfigError, match="not found"):
        load_prompt(tmp_path / "missing.md")
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"\xff\xfe bad \x80")
    with pytest.raises(ConfigError, match="not valid utf-8"):
        load_prompt(bad)


def test_registered_prompt_recognised_inside_a_longer_system_message(tmp_path: Path) -> None:
    f = tmp_path / "policy.md"
    f.write_text("Refunds are possible within 30 days.")
    pv = load_prompt(f)
    found = version_of("You are Acme's agent.\n\nRefunds are possible within 30 days.\nBe kind.")
    assert [v.sha256 for v in found] == [pv.sha256]


def test_filled_template_is_recognised_and_unregistered_text_is_hashed(tmp_path: Path) -> None:
    f = tmp_path / "greet.md"
    f.write_text("You are {agent_name}. Today is {{ date }}. Answer in {language}.")
    pv = load_prompt(f)
    found = version_of("You are Ava. Today is Monday. Answer in French.")
    assert [v.sha256 for v in found] == [pv.sha256]
    other = version_of("A prompt nobody registered.")
    assert other[0].sha256 == sha256_text("A prompt nobody registered.")
    assert other[0].path is None


def test_unregistered_prompt_versioned_in_store(sqlite_url: str) -> None:
    graph = build_graph(fake_model(reply("ok")), [order_lookup], system="An ad-hoc prompt v7")
    handler = LoopCallbackHandler(sqlite_url)
    run(graph, handler, "p", "hi")
    handler.flush()
    store = reopen(sqlite_url)
    call = store.get_thread("p").turns[0].llm_calls[0]  # type: ignore[union-attr]
    assert call.prompt_version is not None
    assert call.prompt_version.sha256 == sha256_text("An ad-hoc prompt v7")
    assert call.prompt_version.text == "An ad-hoc prompt v7"
    assert [v.sha256 for v in store.prompt_versions()] == [sha256_text("An ad-hoc prompt v7")]


def _spans(capture_content: bool, url: str, tmp_path: Path) -> dict[str, Any]:
    f = tmp_path / "support.md"
    f.write_text("You are Acme support.")
    load_prompt(f)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = LoopCallbackHandler(url, tracer_provider=provider, capture_content=capture_content)
    graph = build_graph(
        fake_model(tool_call("order_lookup", {"order_id": "7"}), reply("Shipped.")),
        [order_lookup], system="You are Acme support.",
    )
    run(graph, handler, "otel-1", "where is order 7")
    handler.flush()
    return {s.name: s for s in exporter.get_finished_spans()}


def test_spans_follow_genai_and_openinference_conventions(sqlite_url: str, tmp_path: Path) -> None:
    spans = _spans(True, sqlite_url, tmp_path)
    assert set(spans) == {"invoke_agent agent", "chat FakeToolModel", "execute_tool order_lookup"}
    turn, chat, tool = spans["invoke_agent agent"], spans["chat FakeToolModel"], spans["execute_tool order_lookup"]
    assert turn.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert turn.attributes["gen_ai.conversation.id"] == "otel-1"
    assert turn.attributes["session.id"] == "otel-1"
    assert turn.attributes["openinference.span.kind"] == "AGENT"
    assert chat.parent is not None and chat.parent.span_id == turn.context.span_id
    assert tool.parent is not None and tool.parent.span_id == turn.context.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "FakeToolModel"
    assert chat.attributes["gen_ai.usage.input_tokens"] in (20, 30)
    assert chat.attributes["gen_ai.prompt.name"] == "support"
    assert chat.attributes["gen_ai.prompt.version"] == sha256_text("You are Acme support.")[:12]
    assert chat.attributes["llm.prompt_template.version"] == chat.attributes["gen_ai.prompt.version"]
    assert chat.attributes["openinference.span.kind"] == "LLM"
    assert "You are Acme support." in str(chat.attributes["gen_ai.input.messages"])
    assert tool.attributes["gen_ai.tool.name"] == "order_lookup"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["openinference.span.kind"] == "TOOL"
    assert tool.start_time is not None and turn.start_time is not None
    assert turn.start_time <= tool.start_time <= tool.end_time <= turn.end_time  # type: ignore[operator]


def test_content_can_be_kept_off_spans(sqlite_url: str, tmp_path: Path) -> None:
    spans = _spans(False, sqlite_url, tmp_path)
    for span in spans.values():
        text = " ".join(str(v) for v in span.attributes.values())
        assert "where is order 7" not in text
        assert "Shipped." not in text
        assert "You are Acme support." not in text
    assert spans["chat FakeToolModel"].attributes["loop.input.chars"] > 0
    # the store still keeps whole messages
    assert reopen(sqlite_url).get_thread("otel-1").turns[0].user_text == "where is order 7"  # type: ignore[union-attr]


def test_system_message_passed_as_object() -> None:
    assert version_of(SystemMessage("x").text)[0].sha256 == sha256_text("x")


def test_private_data_is_redacted_before_store_and_spans(sqlite_url: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = LoopCallbackHandler(sqlite_url, tracer_provider=provider)
    secret = "sk-proj-Q1w2E3r4T5y6U7i8O9p0AsDfGhJkLzXc"
    graph = build_graph(
        fake_model(tool_call("order_lookup", {"order_id": "7", "email": "ann@example.com"}),
                   reply("Card 4111 1111 1111 1111 is on file for ann@example.com")),
        [order_lookup],
    )
    run(graph, handler, "pii", f"my api key {secret} leaked, mail me at ann@example.com")
    handler.flush()
    t = reopen(sqlite_url).get_thread("pii")
    assert t is not None
    stored = t.model_dump_json()
    spans = " ".join(str(v) for s in exporter.get_finished_spans() for v in s.attributes.values())
    for text in (stored, spans):
        assert secret not in text
        assert "ann@example.com" not in text
        assert "4111 1111 1111 1111" not in text
    assert "[REDACTED" in t.turns[0].user_text or "[" in t.turns[0].user_text
    assert t.turns[0].tool_calls[0].arguments["order_id"] == "7"  # ordinary values kept
    # the prompt version is still recognised (versions are taken before redaction)
    assert t.turns[0].llm_calls[0].prompt_version is not None


def test_redaction_can_be_switched_off(sqlite_url: str) -> None:
    handler = LoopCallbackHandler(sqlite_url, redact=False)
    graph = build_graph(fake_model(reply("ok")), [order_lookup])
    run(graph, handler, "raw", "mail me at ann@example.com")
    handler.flush()
    assert reopen(sqlite_url).get_thread("raw").turns[0].user_text == "mail me at ann@example.com"  # type: ignore[union-attr]
