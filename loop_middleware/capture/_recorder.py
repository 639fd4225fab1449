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
from collections import OrderedDict, deque
from typing import Any

from opentelemetry import context as otel_context

from ..privacy import Redactor
from ..prompts import PromptRegistry, default_registry
from ..store import Store
from ..types import PromptVersion
from ._messages import tool_call_ids
from ._otel import SpanEmitter
from ._rows import RowBuilder
from ._state import CallState, TurnState, err, new_id
from ._writer import BackgroundWriter

__all__ = ["CallState", "Recorder", "TurnState", "new_id"]

logger = logging.getLogger("loop_middleware.capture")

_PROVISIONAL_TTL_S = 60.0
"""How long a turn that failed provisionally (an error escaped, but an outer retry may go on)
stays continuable in memory before it is forgotten (its row is already written)."""


_MAX_OPEN_TURNS = 10_000
_IDLE_S = 600.0


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
        """Errors inside capture (host side), counted and logged, never raised into the host."""
        self._open_by_thread: dict[str, str] = {}  # thread id -> its interrupted/open turn
        self._provisional: deque[str] = deque()
        self._recent: OrderedDict[str, TurnState] = OrderedDict()
        self._lock = threading.Lock()
        self.rows = RowBuilder(self.registry, self.redactor, self.spans, self)  # writer thread only

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
            self.writer.submit(self.rows.turn_record(turn, final=False))
        return turn

    def set_thread(self, turn: TurnState, thread_id: str) -> None:
        """Give a deferred turn its thread id and write its start."""
        if turn.thread_pending:
            turn.thread_id, turn.thread_pending = thread_id, False
            self.writer.submit(self.rows.turn_record(turn, final=False))

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
        self.writer.submit(self.rows.turn_record(turn, final=True, definitive=False))

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
                turn.error, turn.error_type = err(error)
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
        self.writer.submit(self.rows.turn_record(turn, final=True, definitive=not provisional))

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
        if len(self.turns) > _MAX_OPEN_TURNS:
            # Memory stays bounded when invocations stop without ever ending (abandoned, no
            # thread to notice it): the oldest idle ones end as unfinished, at their last activity.
            idle_before = time.perf_counter() - _IDLE_S
            busy = {c.turn.turn_id for c in list(self.calls.values())}
            for tid, turn in list(self.turns.items())[: len(self.turns) - _MAX_OPEN_TURNS // 2]:
                if tid not in busy and turn.last_perf < idle_before and turn.status == "running":
                    self.end_turn(tid, None, "ended without a reply: the invocation stopped and "
                                  "never came back", outcome="unfinished", at_last_activity=True)

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
        self.writer.submit(self.rows.turn_record(turn, final=True, definitive=True))

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
            call.error, call.error_type = err(error)
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
        self.writer.submit(lambda: self.rows.call_rows(call))

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

_SHARED_LOCK = threading.Lock()
_SHARED_INTERRUPTED: dict[tuple[str, str], tuple[Recorder, str]] = {}
"""(store URL, thread id) -> the recorder holding that thread's interrupted turn."""


def _forget_shared(recorder: Recorder, turn: TurnState) -> None:
    with _SHARED_LOCK:
        key = (recorder.store.url, turn.thread_id)
        if _SHARED_INTERRUPTED.get(key) == (recorder, turn.turn_id):
            del _SHARED_INTERRUPTED[key]



