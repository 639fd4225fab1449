"""The capture core shared by the callback handler and the agent middleware.

The host-side methods (``start_*`` / ``end_*``) only take timestamps and keep references to the
host's objects; every conversion (messages to dicts, prompt hashing, span attributes) runs later
on the writer thread. State is keyed by run/turn ids, never by "current" globals, so parallel
threads in one process cannot mix.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context

from ..privacy import Redactor
from ..prompts import PromptRegistry, default_registry, versions_in_messages
from ..store import Store
from ..types import PromptVersion
from ._messages import (
    clean_text,
    jsonable,
    message_dict,
    messages_list,
    text_of,
    user_messages_from_inputs,
)
from ._otel import SpanEmitter
from ._writer import BackgroundWriter, Row

__all__ = ["CallState", "Recorder", "TurnState"]

logger = logging.getLogger("loop_middleware.capture")


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


@dataclass
class CallState:
    """One LLM or tool call in flight (raw references until finalised on the writer thread)."""

    kind: str  # "llm" | "tool"
    call_id: str
    turn_id: str
    thread_id: str
    seq: int
    start_ns: int
    start_perf: float
    name: str | None = None
    model: str | None = None
    provider: str | None = None
    raw_input: Any = None
    raw_output: Any = None
    arguments: Any = None
    tool_call_id: str | None = None
    end_ns: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    error_type: str | None = None
    # filled by finalise()
    input_messages: list[dict[str, Any]] = field(default_factory=list)
    output_messages: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    result: str | None = None


@dataclass
class TurnState:
    """One turn in flight."""

    turn_id: str
    thread_id: str
    start_ns: int
    start_perf: float
    raw_inputs: Any = None
    user_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    otel_context: Any = None
    seq: int = 0
    calls: list[CallState] = field(default_factory=list)
    end_ns: int | None = None
    latency_ms: float | None = None
    raw_outputs: Any = None
    error: str | None = None
    error_type: str | None = None
    user_messages: list[dict[str, Any]] = field(default_factory=list)
    output_text: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_seq(self) -> int:
        with self.lock:
            s = self.seq
            self.seq += 1
            return s


_META_KEEP = ("langgraph_node", "langgraph_checkpoint_ns", "checkpoint_id", "assistant_id", "graph_id")


class Recorder:
    """Records turns, LLM calls and tool calls and hands them to a background writer.

    Args:
        store: The store, or a URL; defaults to ``$LOOP_DATABASE_URL`` / ``./loop.db``.
        writer: An existing writer to share (one per store is plenty).
        tracer_provider: OpenTelemetry provider for spans (the global one when None).
        emit_spans: Emit OpenTelemetry spans at all.
        capture_content: Put message text on spans (the store always keeps it).
        registry: Prompt registry used to recognise prompt versions.
        agent_name: The host agent's name on spans.
        redact: Redact private data before it is stored or put on spans: True (default
            settings), False, or a configured :class:`~loop_middleware.privacy.Redactor`.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        writer: BackgroundWriter | None = None,
        tracer_provider: Any = None,
        emit_spans: bool = True,
        capture_content: bool = True,
        registry: PromptRegistry | None = None,
        agent_name: str = "agent",
        redact: bool | Redactor = True,
    ) -> None:
        if writer is not None:
            self.store = writer.store
            self.writer = writer
        else:
            self.store = store if isinstance(store, Store) else Store(store)
            self.writer = BackgroundWriter(self.store)
        self.registry = registry or default_registry
        # Secrets, card numbers, emails and phones are redacted before anything is persisted or
        # exported (on the writer thread, never on the host's).
        self.redactor: Redactor | None = (
            redact if isinstance(redact, Redactor) else Redactor() if redact else None
        )
        self.spans = SpanEmitter(tracer_provider, capture_content=capture_content,
                                 agent_name=agent_name) if emit_spans else None
        self.turns: dict[str, TurnState] = {}
        self.calls: dict[str, CallState] = {}
        self.errors = 0
        """Errors inside capture, counted and logged, never raised into the host."""
        self._seen_prompts: set[str] = set()
        self._redacted: dict[str, str] = {}  # writer thread only

    # --- host side ---------------------------------------------------------------------------

    def start_turn(
        self,
        turn_id: str,
        thread_id: str,
        inputs: Any,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TurnState:
        turn = TurnState(
            turn_id=turn_id, thread_id=thread_id, start_ns=time.time_ns(),
            start_perf=time.perf_counter(), raw_inputs=inputs, user_id=user_id,
            metadata={k: metadata[k] for k in _META_KEEP if metadata and k in metadata},
            otel_context=otel_context.get_current() if self.spans else None,
        )
        self.turns[turn_id] = turn
        self.writer.submit(lambda: self._turn_rows(turn, final=False))
        return turn

    def end_turn(self, turn_id: str, outputs: Any = None, error: BaseException | str | None = None) -> None:
        turn = self.turns.pop(turn_id, None)
        if turn is None:
            return
        turn.end_ns = time.time_ns()
        turn.latency_ms = (time.perf_counter() - turn.start_perf) * 1000
        turn.raw_outputs = outputs
        if error is not None:
            turn.error, turn.error_type = _err(error)
        self.writer.submit(lambda: self._turn_rows(turn, final=True))

    def start_call(
        self,
        kind: str,
        call_id: str,
        turn_id: str,
        *,
        name: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        raw_input: Any = None,
        arguments: Any = None,
        tool_call_id: str | None = None,
    ) -> CallState | None:
        turn = self.turns.get(turn_id)
        if turn is None:
            return None
        call = CallState(
            kind=kind, call_id=call_id, turn_id=turn_id, thread_id=turn.thread_id,
            seq=turn.next_seq(), start_ns=time.time_ns(), start_perf=time.perf_counter(),
            name=name, model=model, provider=provider, raw_input=raw_input,
            arguments=arguments, tool_call_id=tool_call_id,
        )
        self.calls[call_id] = call
        return call

    def end_call(self, call_id: str, output: Any = None, error: BaseException | str | None = None) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        call.end_ns = time.time_ns()
        call.latency_ms = (time.perf_counter() - call.start_perf) * 1000
        call.raw_output = output
        if error is not None:
            call.error, call.error_type = _err(error)
        turn = self.turns.get(call.turn_id)
        if turn is not None:
            with turn.lock:
                turn.calls.append(call)
        self.writer.submit(lambda: self._call_rows(call))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything captured so far is written. True when it is in the store."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """End open turns as interrupted, flush, and stop the writer."""
        for tid in list(self.turns):
            self.end_turn(tid, error="capture closed before the turn ended")
        self.writer.close()

    # --- writer thread -----------------------------------------------------------------------

    def _r(self, value: Any) -> Any:
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

    def _turn_rows(self, turn: TurnState, *, final: bool) -> list[Row]:
        if not turn.user_messages:
            turn.user_messages = self._r(user_messages_from_inputs(turn.raw_inputs))
        now = _utc(turn.end_ns or turn.start_ns)
        thread_row = {"thread_id": turn.thread_id, "created_at": _utc(turn.start_ns), "updated_at": now,
                      "source": "capture"}
        if turn.user_id:
            thread_row["user_id"] = turn.user_id
        row: dict[str, Any] = {
            "id": turn.turn_id, "thread_id": turn.thread_id, "started_at": _utc(turn.start_ns),
            "input_messages": turn.user_messages, "meta": jsonable(turn.metadata),
        }
        if final:
            outputs = self._r(_output_messages(turn.raw_outputs))
            turn.output_text = next(
                (m["content"] for m in reversed(outputs) if m["role"] == "assistant"), None
            )
            row.update(ended_at=_utc(turn.end_ns or turn.start_ns), latency_ms=turn.latency_ms,
                       error=self._r(turn.error), output_messages=outputs)
            if self.spans is not None:
                versions = {c.call_id: self._versions(c) for c in turn.calls if c.kind == "llm"}
                try:
                    self.spans.emit_turn(turn, sorted(turn.calls, key=lambda c: c.seq), versions)
                except Exception:
                    self.errors += 1
                    logger.exception("loop-middleware: span emission failed")
        return [("thread", thread_row), ("turn", row)]

    def _versions(self, call: CallState) -> list[PromptVersion]:
        return versions_in_messages(call.input_messages, registry=self.registry)

    def _call_rows(self, call: CallState) -> list[Row]:
        rows: list[Row] = []
        if call.kind == "llm":
            call.input_messages = messages_list(call.raw_input)
            _fill_llm_output(call)
            # Versions from the exact text (the prompt is the host's, not user data), then redact.
            versions = self._versions(call)
            call.input_messages = self._r(call.input_messages)
            call.output_messages = self._r(call.output_messages)
            call.error = self._r(call.error)
            for v in versions:
                if v.sha256 not in self._seen_prompts:
                    rows.append(("prompt_version", {
                        **v.model_dump(), "first_seen": _utc(call.start_ns)}))
                    self._seen_prompts.add(v.sha256)
            rows.append(("llm_call", {
                "id": call.call_id, "turn_id": call.turn_id, "thread_id": call.thread_id,
                "seq": call.seq, "model": call.model, "provider": call.provider,
                "input_messages": call.input_messages, "output_messages": call.output_messages,
                "prompt_shas": [v.sha256 for v in versions],
                "input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
                "latency_ms": call.latency_ms, "finish_reason": call.finish_reason,
                "error": call.error, "started_at": _utc(call.start_ns),
            }))
        else:
            _fill_tool_output(call)
            call.arguments = self._r(jsonable(call.arguments))
            call.result, call.error = self._r(call.result), self._r(call.error)
            rows.append(("tool_call", {
                "id": call.call_id, "turn_id": call.turn_id, "thread_id": call.thread_id,
                "seq": call.seq, "name": call.name or "", "arguments": jsonable(call.arguments),
                "result": call.result, "error": call.error, "latency_ms": call.latency_ms,
                "tool_call_id": call.tool_call_id, "started_at": _utc(call.start_ns),
            }))
        return rows


def _err(error: BaseException | str) -> tuple[str, str]:
    if isinstance(error, BaseException):
        return clean_text(f"{type(error).__name__}: {error}"), type(error).__name__
    return clean_text(str(error)), "Error"


def _output_messages(outputs: Any) -> list[dict[str, Any]]:
    if outputs is None:
        return []
    if isinstance(outputs, dict) and "messages" in outputs:
        msgs = messages_list(outputs["messages"])
        # Only the reply: the trailing messages after the last user message.
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i]["role"] == "user":
                return msgs[i + 1 :]
        return msgs[-1:]
    if isinstance(outputs, dict):
        for key in ("output", "answer", "text", "result"):
            if isinstance(outputs.get(key), str):
                return [{"role": "assistant", "content": outputs[key], "name": None,
                         "tool_calls": [], "tool_call_id": None, "id": None}]
        return []
    if isinstance(outputs, str):
        return [{"role": "assistant", "content": outputs, "name": None, "tool_calls": [],
                 "tool_call_id": None, "id": None}]
    try:
        return messages_list(outputs)
    except Exception:  # noqa: BLE001
        return []


def _fill_llm_output(call: CallState) -> None:
    out = call.raw_output
    if out is None:
        return
    messages: list[Any] = []
    gen_info: dict[str, Any] = {}
    llm_output: dict[str, Any] = {}
    generations = getattr(out, "generations", None)
    if generations is not None:  # LLMResult
        llm_output = getattr(out, "llm_output", None) or {}
        for batch in generations:
            for g in batch:
                msg = getattr(g, "message", None)
                messages.append(msg if msg is not None else {"role": "assistant", "content": g.text})
                gen_info = gen_info or (g.generation_info or {})
    elif isinstance(out, list):
        messages = out
    else:
        messages = [out]
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
        usage = llm_output.get("token_usage") or llm_output.get("usage") or {}
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
    if update is not None:
        msgs = update.get("messages") if isinstance(update, dict) else None
        call.result = "\n".join(m["content"] for m in messages_list(msgs)) if msgs else repr(update)
        return
    call.result = clean_text(out) if isinstance(out, str) else repr(jsonable(out))


def new_id() -> str:
    """A new random id (hex)."""
    return uuid.uuid4().hex
