"""The rows of captured turns and calls, built on the writer thread (conversion, prompt
matching, redaction, spans: none of it on the host's thread)."""

from __future__ import annotations

import logging
from typing import Any

from ..privacy import Redactor
from ..prompts import PromptRegistry, versions_in_messages
from ._messages import (
    clean_text,
    jsonable,
    llm_output,
    message_dict,
    messages_list,
    output_messages,
    text_of,
    user_messages_from_inputs,
    user_text_inputs,
)
from ._otel import SpanEmitter
from ._state import CallState, TurnState, utc
from ._turns import ThreadMemory
from ._writer import Row

__all__ = ["RowBuilder"]

logger = logging.getLogger("loop_middleware.capture")


class RowBuilder:
    """Turns and calls into store rows (writer thread only, except :meth:`turn_record`, which
    snapshots on the host's thread what the host may change next)."""

    def __init__(self, registry: PromptRegistry, redactor: Redactor | None,
                 spans: SpanEmitter | None, owner: Any) -> None:
        self.registry = registry
        self.redactor = redactor
        self.spans = spans
        self.owner = owner
        """Whose ``errors`` counter our own failures are added to (the recorder)."""
        self._seen_prompts: set[str] = set()
        self._redacted: dict[str, str] = {}
        self._threads = ThreadMemory()

    def r(self, value: Any) -> Any:
        if self.redactor is None:
            return value
        if isinstance(value, str):
            return self._redact_text(value)
        if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
            # Message lists: an LLM call's input repeats the whole history, so each message's
            # text is redacted once and remembered.
            return [{**m, "content": self._redact_text(m["content"] or ""),
                     "tool_calls": self.redactor.redact_value(m.get("tool_calls") or [])}
                    for m in value]
        return self.redactor.redact_value(value)

    def _redact_text(self, text: str) -> str:
        cached = self._redacted.get(text)
        if cached is None:
            cached = self.redactor.redact(text) if self.redactor is not None else text
            if len(self._redacted) >= 20_000:
                self._redacted.clear()
            self._redacted[text] = cached
        return cached

    def turn_record(self, turn: TurnState, *, final: bool, definitive: bool = True) -> Any:
        # Snapshot what the host may change next (a resume reopens the turn) at submit time.
        snap = {
            "end_ns": turn.end_ns,
            "latency_ms": turn.latency_ms,
            "error": turn.error, "status": turn.status, "outputs": turn.raw_outputs,
            "interrupts": list(turn.interrupts), "resumes": list(turn.resumes),
            "outcome": "interrupted" if turn.status == "interrupted" else turn.outcome,
        }
        return lambda: self.turn_rows(turn, snap, final=final, definitive=definitive)

    def turn_rows(self, turn: TurnState, snap: dict[str, Any], *, final: bool,
                   definitive: bool) -> list[Row]:
        if turn.user_messages is None or (final and not turn.user_messages and turn.fallback_user):
            found = user_text_inputs(turn.raw_inputs)
            if not found and final and turn.fallback_user is not None:
                found = user_messages_from_inputs({"messages": turn.fallback_user})
            if found or turn.user_messages is None:
                turn.user_messages = self.r(self._threads.new_user_messages(turn.thread_id, found))
        end_ns = snap["end_ns"] or turn.start_ns
        thread_row = {"thread_id": turn.thread_id, "created_at": utc(turn.start_ns),
                      "updated_at": utc(end_ns if final else turn.start_ns), "source": "capture"}
        if turn.user_id:
            thread_row["user_id"] = turn.user_id
        meta = dict(turn.metadata)
        if snap["interrupts"] or snap["resumes"]:
            meta["interrupts"] = [_interrupt_dict(i) for i in snap["interrupts"]]
            meta["resumes"] = [jsonable(v) for v in snap["resumes"]]
        if snap["outcome"]:
            meta["outcome"] = snap["outcome"]
        row: dict[str, Any] = {
            "id": turn.turn_id, "thread_id": turn.thread_id, "started_at": utc(turn.start_ns),
            "input_messages": turn.user_messages, "meta": self.r(jsonable(meta)),
        }
        if final:
            outputs = self.r(output_messages(snap["outputs"]))
            turn.output_text = next(
                (m["content"] for m in reversed(outputs) if m["role"] == "assistant"), None
            )
            row.update(ended_at=utc(end_ns), latency_ms=snap["latency_ms"],
                       error=self.r(snap["error"]), output_messages=outputs)
            if definitive and self.spans is not None:
                with turn.lock:
                    calls = sorted(turn.calls, key=lambda c: c.seq)
                try:
                    self.spans.emit_turn(turn, calls, {c.call_id: c.versions for c in calls})
                except Exception:
                    self.owner.errors += 1
                    logger.exception("loop-middleware: span emission failed")
        return [("thread", thread_row), ("turn", row)]

    def call_rows(self, call: CallState) -> list[Row]:
        rows: list[Row] = []
        if call.kind == "llm":
            call.input_messages = messages_list(call.raw_input)
            _fill_llm_output(call)
            # Versions from the exact text (the prompt is the host's, not user data), then redact.
            turn = call.turn
            with turn.lock:
                explicit, rendered = dict(turn.explicit), tuple(turn.rendered)
            call.versions = versions_in_messages(call.input_messages, registry=self.registry,
                                                 explicit=explicit, rendered=rendered)
            call.input_messages = self.r(call.input_messages)
            call.output_messages = self.r(call.output_messages)
            call.error = self.r(call.error)
            for v in call.versions:
                if v.sha256 not in self._seen_prompts:
                    rows.append(("prompt_version", {
                        **v.model_dump(), "first_seen": utc(call.start_ns)}))
                    self._seen_prompts.add(v.sha256)
            rows.append(("llm_call", {
                "id": call.call_id, "turn_id": call.turn_id, "thread_id": call.thread_id,
                "seq": call.seq, "model": call.model, "provider": call.provider,
                "input_messages": call.input_messages, "output_messages": call.output_messages,
                "prompt_shas": [v.sha256 for v in call.versions],
                "input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
                "latency_ms": call.latency_ms, "finish_reason": call.finish_reason,
                "error": call.error, "started_at": utc(call.start_ns),
            }))
        else:
            _fill_tool_output(call)
            call.arguments = self.r(jsonable(call.arguments))
            call.result, call.error = self.r(call.result), self.r(call.error)
            rows.append(("tool_call", {
                "id": call.call_id, "turn_id": call.turn_id, "thread_id": call.thread_id,
                "seq": call.seq, "name": call.name or "", "arguments": jsonable(call.arguments),
                "result": call.result, "error": call.error, "latency_ms": call.latency_ms,
                "tool_call_id": call.tool_call_id, "started_at": utc(call.start_ns),
            }))
        return rows



def _interrupt_dict(i: Any) -> dict[str, Any]:
    value = getattr(i, "value", i)
    out: dict[str, Any] = {"value": jsonable(value)}
    if getattr(i, "id", None):
        out["id"] = str(i.id)
    return out



def _fill_llm_output(call: CallState) -> None:
    out = call.raw_output
    if out is None:
        return
    messages, gen_info, llm_out = llm_output(out)
    call.output_messages = [message_dict(m) for m in messages if m is not None]
    for m in messages:
        usage = getattr(m, "usage_metadata", None)
        if usage:
            call.input_tokens = (call.input_tokens or 0) + int(usage.get("input_tokens") or 0)
            call.output_tokens = (call.output_tokens or 0) + int(usage.get("output_tokens") or 0)
        meta = getattr(m, "response_metadata", None) or {}
        call.finish_reason = call.finish_reason or meta.get("finish_reason") or meta.get("stop_reason")
        call.model = call.model or meta.get("model_name") or meta.get("model")
    if call.input_tokens is None:
        usage = llm_out.get("token_usage") or llm_out.get("usage") or {}
        if isinstance(usage, dict) and usage:
            call.input_tokens = usage.get("prompt_tokens") or usage.get("input_tokens")
            call.output_tokens = usage.get("completion_tokens") or usage.get("output_tokens")
    call.finish_reason = call.finish_reason or gen_info.get("finish_reason")
    if call.finish_reason is None and call.output_messages and not call.error:
        call.finish_reason = "tool_calls" if call.output_messages[-1]["tool_calls"] else "stop"


def _fill_tool_output(call: CallState) -> None:
    out = call.raw_output
    if out is None:
        return
    content = getattr(out, "content", None)
    if content is not None or hasattr(out, "tool_call_id"):
        call.result = text_of(content)
        call.tool_call_id = call.tool_call_id or getattr(out, "tool_call_id", None)
        if getattr(out, "status", None) == "error" and call.error is None:
            call.error, call.error_type = call.result, "ToolError"
        return
    update = getattr(out, "update", None)  # a LangGraph Command returned by the tool
    if update is not None or hasattr(out, "goto"):
        msgs = update.get("messages") if isinstance(update, dict) else None
        if msgs:
            call.result = "\n".join(m["content"] for m in messages_list(msgs))
        else:
            call.result = clean_text(repr(out))
        return
    if isinstance(out, list) and out and all(hasattr(d, "page_content") for d in out):
        # A retriever's documents.
        call.result = "\n\n".join(text_of(d.page_content) for d in out)
        return
    call.result = clean_text(out) if isinstance(out, str) else repr(jsonable(out))


