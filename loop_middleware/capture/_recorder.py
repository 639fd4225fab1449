"""The capture core shared by the callback handler and the agent middleware.

The host-side methods (``start_*`` / ``end_*`` / ``interrupt_turn`` / ``resume_turn``) only take
timestamps and keep references to the host's objects; every conversion (messages to dicts,
prompt matching, redaction, span attributes) runs later on the writer thread. State is keyed by
run/turn ids, never by "current" globals, so parallel invocations in one process cannot mix.
The turn rule itself is documented in :mod:`._turns`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
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
    llm_output,
    message_dict,
    messages_list,
    output_messages,
    text_of,
    tool_call_ids,
    user_messages_from_inputs,
    user_text_inputs,
)
from ._otel import SpanEmitter
from ._turns import ThreadMemory
from ._writer import BackgroundWriter, Row

__all__ = ["CallState", "Recorder", "TurnState"]

logger = logging.getLogger("loop_middleware.capture")

_PROVISIONAL_TTL_S = 60.0
"""How long a turn that failed provisionally (an error escaped, but an outer retry may go on)
stays continuable in memory before it is forgotten (its row is already written)."""


def _utc(ns: int) -> datetime:
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
        self._open_by_thread: dict[str, str] = {}  # thread id -> its interrupted/open turn
        self._provisional: deque[str] = deque()
        self._recent: OrderedDict[str, TurnState] = OrderedDict()
        self._lock = threading.Lock()
        self._seen_prompts: set[str] = set()
        self._redacted: dict[str, str] = {}  # writer thread only
        self._threads = ThreadMemory()  # writer thread only

    # --- host side: turns --------------------------------------------------------------------

    def start_turn(
        self,
        turn_id: str,
        thread_id: str,
        inputs: Any,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        defer: bool = False,
    ) -> TurnState:
        """Open a new turn (rule 1 of :mod:`._turns`). ``defer``: its thread id is not known
        yet (see :meth:`set_thread`); nothing is written until it is."""
        self._sweep()
        now = time.perf_counter()
        turn = TurnState(
            turn_id=turn_id, thread_id=thread_id, start_ns=time.time_ns(),
            start_perf=now, raw_inputs=inputs, user_id=user_id,
            metadata={k: metadata[k] for k in _META_KEEP if metadata and k in metadata},
            otel_context=otel_context.get_current() if self.spans else None,
            seg_perf=now,
        )
        turn.last_ns, turn.last_perf = turn.start_ns, now
        turn.thread_pending = defer
        self.turns[turn_id] = turn
        if not defer:
            self.writer.submit(self._turn_record(turn, final=False))
        return turn

    def set_thread(self, turn: TurnState, thread_id: str) -> None:
        """Give a deferred turn its thread id and write its start."""
        if turn.thread_pending:
            turn.thread_id, turn.thread_pending = thread_id, False
            self.writer.submit(self._turn_record(turn, final=False))

    def open_turn(self, thread_id: str) -> TurnState | None:
        """The turn of ``thread_id`` left open by an interrupt (or still running), if any.

        An interrupted turn recorded by another handler of the same store in this process (a
        new handler per request is common) is adopted, so its resume continues it here."""
        turn_id = self._open_by_thread.get(thread_id)
        turn = self.turns.get(turn_id) if turn_id else None
        if turn is not None:
            return turn
        with _SHARED_LOCK:
            owner = _SHARED_INTERRUPTED.get((self.store.url, thread_id))
            if owner is None or owner[0] is self:
                return None
            other, tid = owner
            turn = other.turns.pop(tid, None)
            del _SHARED_INTERRUPTED[(self.store.url, thread_id)]
        if turn is None or turn.status != "interrupted":
            return None
        with other._lock:
            if other._open_by_thread.get(thread_id) == tid:
                del other._open_by_thread[thread_id]
        self.turns[turn.turn_id] = turn
        self.mark_open(turn)
        return turn

    def mark_open(self, turn: TurnState) -> None:
        """Remember ``turn`` as its thread's open turn (the one a resume continues)."""
        with self._lock:
            self._open_by_thread[turn.thread_id] = turn.turn_id
        if turn.status == "interrupted":
            with _SHARED_LOCK:
                _SHARED_INTERRUPTED[(self.store.url, turn.thread_id)] = (self, turn.turn_id)

    def interrupt_turn(self, turn_id: str, interrupts: list[Any] | tuple[Any, ...] = ()) -> None:
        """Pause a turn on an interrupt: its row is written as interrupted now (nothing is lost
        if it is never resumed) and it stays open for the resume (rule 2)."""
        turn = self.turns.get(turn_id)
        if turn is None:
            return
        with turn.lock:
            for i in interrupts:
                if not any(i is j for j in turn.interrupts):
                    turn.interrupts.append(i)
            if turn.status == "interrupted":
                return
            now = time.perf_counter()
            turn.active_ms = turn.working_ms(now)
            turn.seg_perf = None
            turn.status = "interrupted"
            turn.end_ns, turn.latency_ms = time.time_ns(), turn.active_ms
        self.mark_open(turn)
        self.writer.submit(self._turn_record(turn, final=True, definitive=False))

    def resume_turn(self, turn_id: str, value: Any = None, *, has_value: bool = False) -> TurnState | None:
        """Continue an interrupted turn (rule 2). A turn found running (the middleware learns
        of a resume only when the next call arrives) closes its working segment at its last
        activity, so the human's wait is not counted as latency."""
        turn = self.turns.get(turn_id)
        if turn is None:
            return None
        with turn.lock:
            now = time.perf_counter()
            if turn.status != "interrupted" and turn.seg_perf is not None:
                turn.active_ms = turn.working_ms(max(turn.last_perf, turn.seg_perf))
            turn.seg_perf = now
            turn.status = "running"
            turn.error = turn.error_type = None
            if has_value:
                turn.resumes.append(value)
        return turn

    def end_turn(
        self, turn_id: str, outputs: Any = None, error: BaseException | str | None = None,
        *, provisional: bool = False, at_last_activity: bool = False, outcome: str | None = None,
        replied: bool = False,
    ) -> None:
        """End a turn with its outputs or error (rule 4).

        ``provisional``: an error escaped the agent, but an outer retry may still continue the
        turn; the row is written now and the turn stays continuable for a while.
        ``at_last_activity``: the turn was abandoned; it ended when it last did something.
        ``replied``: the middleware saw the agent's final reply; the turn is kept a while in case
        the invocation goes on after all (:meth:`reopen`).
        """
        turn = self.turns.get(turn_id) if provisional else self.turns.pop(turn_id, None)
        if turn is None:
            return
        if turn.thread_pending:
            self.set_thread(turn, new_id())
        if not provisional:
            with self._lock:
                if self._open_by_thread.get(turn.thread_id) == turn_id:
                    del self._open_by_thread[turn.thread_id]
            _forget_shared(self, turn)
        with turn.lock:
            until = max(turn.last_perf, turn.seg_perf or 0.0) if at_last_activity else None
            turn.end_ns = turn.last_ns if at_last_activity else time.time_ns()
            turn.latency_ms = turn.working_ms(until)
            if outputs is not None or not provisional:
                turn.raw_outputs = outputs
            if error is not None:
                turn.error, turn.error_type = _err(error)
            turn.outcome = outcome or turn.outcome
            turn.status = "failed" if provisional else "ended"
            if provisional:
                turn.failed_at = time.monotonic()
        if provisional:
            self._provisional.append(turn_id)
        if replied:
            self._recent[turn_id] = turn
            while len(self._recent) > 1024:
                self._recent.popitem(last=False)
        self.writer.submit(self._turn_record(turn, final=True, definitive=not provisional))

    def _sweep(self) -> None:
        """Forget provisionally failed turns nobody continued (their rows are written)."""
        limit = time.monotonic() - _PROVISIONAL_TTL_S
        while self._provisional:
            tid = self._provisional[0]
            turn = self.turns.get(tid)
            if turn is not None and turn.status == "failed" and turn.failed_at > limit:
                break
            self._provisional.popleft()
            if turn is not None and turn.status == "failed":
                self.finalize(tid)

    def reopen(self, turn_id: str) -> TurnState | None:
        """Continue a turn ended at its reply when its invocation goes on after all."""
        turn = self._recent.pop(turn_id, None)
        if turn is None:
            return None
        with turn.lock:
            turn.active_ms = turn.latency_ms or turn.active_ms
            turn.seg_perf, turn.status = time.perf_counter(), "running"
        self.turns[turn_id] = turn
        return turn

    def finalize(self, turn_id: str) -> None:
        """Close a turn that failed provisionally or stays interrupted, as it was last written
        (its end, latency and error are kept; its spans are emitted now)."""
        turn = self.turns.pop(turn_id, None)
        if turn is None:
            return
        with self._lock:
            if self._open_by_thread.get(turn.thread_id) == turn_id:
                del self._open_by_thread[turn.thread_id]
        _forget_shared(self, turn)
        if turn.status == "interrupted":
            turn.outcome = "interrupted"
        turn.status = "ended"
        self.writer.submit(self._turn_record(turn, final=True, definitive=True))

    # --- host side: calls --------------------------------------------------------------------

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
        """Record the start of an LLM or tool call; a repeated start of the same call (a handler
        attached twice) is ignored."""
        turn = self.turns.get(turn_id)
        if turn is None or call_id in self.calls:
            return None
        if turn.status == "failed":  # an outer retry continues a provisionally failed turn
            self.resume_turn(turn_id)
        with turn.lock:
            if kind == "tool" and tool_call_id:
                if tool_call_id in turn.running_tools:
                    return None
                turn.running_tools.add(tool_call_id)
            seq = turn.reserved.pop(tool_call_id, None) if tool_call_id else None
            if seq is None:
                seq = turn.seq
                turn.seq += 1
        if kind == "llm" and turn.fallback_user is None:
            turn.fallback_user = raw_input
        call = CallState(
            kind=kind, call_id=call_id, turn=turn, seq=seq, start_ns=time.time_ns(),
            start_perf=time.perf_counter(), name=name, model=model, provider=provider,
            raw_input=raw_input, arguments=arguments, tool_call_id=tool_call_id,
        )
        self.calls[call_id] = call
        return call

    def end_call(self, call_id: str, output: Any = None, error: BaseException | str | None = None) -> None:
        """Record the end of a call (once)."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        call.end_ns = time.time_ns()
        call.latency_ms = (time.perf_counter() - call.start_perf) * 1000
        call.raw_output = output
        if error is not None:
            call.error, call.error_type = _err(error)
        turn = call.turn
        with turn.lock:
            turn.calls.append(call)
            if call.tool_call_id:
                turn.running_tools.discard(call.tool_call_id)
            if call.kind == "llm" and output is not None:
                # Tools run in parallel start in any order: their places are the message's.
                for tcid in tool_call_ids(output):
                    if tcid not in turn.reserved:
                        turn.reserved[tcid] = turn.seq
                        turn.seq += 1
        turn.touch()
        self.writer.submit(lambda: self._call_rows(call))

    def in_flight(self, turn: TurnState) -> bool:
        """True while one of ``turn``'s calls is running."""
        return any(c.turn is turn for c in list(self.calls.values()))

    def discard_call(self, call_id: str) -> None:
        """Forget a call that did not happen as a call (a tool paused by ``interrupt()``: it
        runs again from the start on resume)."""
        call = self.calls.pop(call_id, None)
        if call is not None and call.tool_call_id:
            with call.turn.lock:
                call.turn.running_tools.discard(call.tool_call_id)

    def note_prompt(self, turn_id: str, rendered_text: str, version: PromptVersion | None,
                    template_sha: str | None) -> None:
        """A prompt template rendered ``rendered_text`` in this turn (explicitly ``version``)."""
        from ..prompts import sha256_text

        turn = self.turns.get(turn_id)
        if turn is None:
            return
        with turn.lock:
            if version is not None:
                turn.explicit[sha256_text(rendered_text)] = version
            if template_sha:
                turn.rendered.add(template_sha)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything captured so far is written. True when it is in the store."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """End open turns as interrupted, flush, and stop the writer."""
        for tid, turn in list(self.turns.items()):
            if turn.status in ("failed", "interrupted"):
                self.finalize(tid)
            else:
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

    def _turn_record(self, turn: TurnState, *, final: bool, definitive: bool = True) -> Any:
        # Snapshot what the host may change next (a resume reopens the turn) at submit time.
        snap = {
            "end_ns": turn.end_ns,
            "latency_ms": turn.latency_ms,
            "error": turn.error, "status": turn.status, "outputs": turn.raw_outputs,
            "interrupts": list(turn.interrupts), "resumes": list(turn.resumes),
            "outcome": "interrupted" if turn.status == "interrupted" else turn.outcome,
        }
        return lambda: self._turn_rows(turn, snap, final=final, definitive=definitive)

    def _turn_rows(self, turn: TurnState, snap: dict[str, Any], *, final: bool,
                   definitive: bool) -> list[Row]:
        if turn.user_messages is None or (final and not turn.user_messages and turn.fallback_user):
            found = user_text_inputs(turn.raw_inputs)
            if not found and final and turn.fallback_user is not None:
                found = user_messages_from_inputs({"messages": turn.fallback_user})
            if found or turn.user_messages is None:
                turn.user_messages = self._r(self._threads.new_user_messages(turn.thread_id, found))
        end_ns = snap["end_ns"] or turn.start_ns
        thread_row = {"thread_id": turn.thread_id, "created_at": _utc(turn.start_ns),
                      "updated_at": _utc(end_ns if final else turn.start_ns), "source": "capture"}
        if turn.user_id:
            thread_row["user_id"] = turn.user_id
        meta = dict(turn.metadata)
        if snap["interrupts"] or snap["resumes"]:
            meta["interrupts"] = [_interrupt_dict(i) for i in snap["interrupts"]]
            meta["resumes"] = [jsonable(v) for v in snap["resumes"]]
        if snap["outcome"]:
            meta["outcome"] = snap["outcome"]
        row: dict[str, Any] = {
            "id": turn.turn_id, "thread_id": turn.thread_id, "started_at": _utc(turn.start_ns),
            "input_messages": turn.user_messages, "meta": self._r(jsonable(meta)),
        }
        if final:
            outputs = self._r(output_messages(snap["outputs"]))
            turn.output_text = next(
                (m["content"] for m in reversed(outputs) if m["role"] == "assistant"), None
            )
            row.update(ended_at=_utc(end_ns), latency_ms=snap["latency_ms"],
                       error=self._r(snap["error"]), output_messages=outputs)
            if definitive and self.spans is not None:
                with turn.lock:
                    calls = sorted(turn.calls, key=lambda c: c.seq)
                try:
                    self.spans.emit_turn(turn, calls, {c.call_id: c.versions for c in calls})
                except Exception:
                    self.errors += 1
                    logger.exception("loop-middleware: span emission failed")
        return [("thread", thread_row), ("turn", row)]

    def _call_rows(self, call: CallState) -> list[Row]:
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
            call.input_messages = self._r(call.input_messages)
            call.output_messages = self._r(call.output_messages)
            call.error = self._r(call.error)
            for v in call.versions:
                if v.sha256 not in self._seen_prompts:
                    rows.append(("prompt_version", {
                        **v.model_dump(), "first_seen": _utc(call.start_ns)}))
                    self._seen_prompts.add(v.sha256)
            rows.append(("llm_call", {
                "id": call.call_id, "turn_id": call.turn_id, "thread_id": call.thread_id,
                "seq": call.seq, "model": call.model, "provider": call.provider,
                "input_messages": call.input_messages, "output_messages": call.output_messages,
                "prompt_shas": [v.sha256 for v in call.versions],
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


_SHARED_LOCK = threading.Lock()
_SHARED_INTERRUPTED: dict[tuple[str, str], tuple[Recorder, str]] = {}
"""(store URL, thread id) -> the recorder holding that thread's interrupted turn."""


def _forget_shared(recorder: Recorder, turn: TurnState) -> None:
    with _SHARED_LOCK:
        key = (recorder.store.url, turn.thread_id)
        if _SHARED_INTERRUPTED.get(key) == (recorder, turn.turn_id):
            del _SHARED_INTERRUPTED[key]


def _interrupt_dict(i: Any) -> dict[str, Any]:
    value = getattr(i, "value", i)
    out: dict[str, Any] = {"value": jsonable(value)}
    if getattr(i, "id", None):
        out["id"] = str(i.id)
    return out


def _err(error: BaseException | str) -> tuple[str, str]:
    if isinstance(error, BaseException):
        return clean_text(f"{type(error).__name__}: {error}"), type(error).__name__
    return clean_text(str(error)), "Error"


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


def new_id() -> str:
    """A new random id (hex)."""
    return uuid.uuid4().hex
