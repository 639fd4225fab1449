"""What capture holds in memory while a turn or a call is in flight."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..types import PromptVersion
from ._messages import clean_text

__all__ = ["CallState", "TurnState", "err", "new_id", "utc"]


def utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


@dataclass
class CallState:
    """One LLM or tool call in flight (raw references until finalised on the writer thread)."""

    kind: str  # "llm" | "tool"
    call_id: str
    turn: TurnState
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
    # filled on the writer thread
    input_messages: list[dict[str, Any]] = field(default_factory=list)
    output_messages: list[dict[str, Any]] = field(default_factory=list)
    versions: list[PromptVersion] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    result: str | None = None

    @property
    def turn_id(self) -> str:
        return self.turn.turn_id

    @property
    def thread_id(self) -> str:
        return self.turn.thread_id


@dataclass
class TurnState:
    """One turn in flight (possibly paused by an interrupt)."""

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
    user_messages: list[dict[str, Any]] | None = None
    output_text: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Active time: the turn's latency counts working segments, not a human's wait on an
    # interrupt.
    active_ms: float = 0.0
    seg_perf: float | None = None
    last_ns: int = 0
    last_perf: float = 0.0
    status: str = "running"  # running | interrupted | failed | ended
    interrupts: list[Any] = field(default_factory=list)
    resumes: list[Any] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=dict)
    """Sequence numbers reserved for announced tool calls (tool_call id -> seq), so parallel
    tools are stored in the order of the message that asked for them."""
    explicit: dict[str, PromptVersion] = field(default_factory=dict)
    """Hash of a rendered system text -> the version of the template that rendered it."""
    rendered: set[str] = field(default_factory=set)
    """Hashes of the template texts rendered in this turn (resolve ties between prompts)."""
    failed_at: float = 0.0
    outcome: str | None = None
    running_tools: set[str] = field(default_factory=set)
    """tool_call ids of tool calls in flight: a tool run seen twice (by the middleware that wraps
    it and by the callbacks of an enclosing call) is recorded once."""
    fallback_user: Any = None
    """When the input names no user message (a chain fed several variables), the first
    rendered prompt's or LLM call's messages: their trailing user messages are the request."""
    thread_pending: bool = False
    """The thread id is read from the first nested run's config (chains without LangGraph
    carry ``configurable.session_id`` there only); the start row waits for it."""
    user_keys: set[str] = field(default_factory=set)
    """Keys (id, else text) of the user messages that opened the turn (middleware: a later
    invocation bringing none of them is a resume of this turn)."""
    resumed_late: bool = False
    """The middleware saw this turn resume (it learns of it at the next call)."""
    """How a turn ended when not with a reply or an error: ``interrupted`` (never resumed) or
    ``abandoned`` (the client stopped reading the stream)."""

    def next_seq(self) -> int:
        with self.lock:
            s = self.seq
            self.seq += 1
            return s

    def touch(self) -> None:
        self.last_ns, self.last_perf = time.time_ns(), time.perf_counter()

    def working_ms(self, until: float | None = None) -> float:
        if self.seg_perf is None:
            return self.active_ms
        return self.active_ms + ((until or time.perf_counter()) - self.seg_perf) * 1000



def err(error: BaseException | str) -> tuple[str, str]:
    if isinstance(error, BaseException):
        return clean_text(f"{type(error).__name__}: {error}"), type(error).__name__
    return clean_text(str(error)), "Error"



def new_id() -> str:
    """A new random id (hex)."""
    return uuid.uuid4().hex
