"""``LoopCallbackHandler``: a langchain-core callback handler that captures whole threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from ..privacy import Redactor
from ..prompts import PromptRegistry
from ..store import Store
from ._callbacks import RunCapture, guard
from ._recorder import Recorder
from ._turns import thread_id_of
from ._writer import BackgroundWriter

__all__ = ["LoopCallbackHandler"]

logger = logging.getLogger("loop_middleware.capture")

ABANDONED = "abandoned: the client stopped reading the stream before the turn ended"


def _resume(inputs: Any) -> tuple[bool, Any]:
    """(is a resume, the resume value) of a top-level input."""
    resume = getattr(inputs, "resume", None)
    if resume is None or not hasattr(inputs, "goto"):  # not a langgraph Command(resume=...)
        return False, None
    return True, resume


def _interrupts_in(outputs: Any) -> list[Any]:
    if isinstance(outputs, Mapping):
        found = outputs.get("__interrupt__")
        if isinstance(found, (list, tuple)):
            return list(found)
    return []


class LoopCallbackHandler(RunCapture):
    """Captures every turn of a LangChain/LangGraph agent into a :class:`Store`.

    Add it to ``config["callbacks"]``; one handler serves any number of threads, sync or async,
    in parallel. Turns and threads follow one rule (see :mod:`loop_middleware.capture._turns`
    and the README): each top-level invocation (``invoke``/``ainvoke``/``stream``/``astream``/
    ``astream_events``) is a turn with every LLM call, tool call and retriever call made inside
    it (subgraphs, ``Send`` branches, sub-agents, retries and fallbacks included), except that a
    ``Command(resume=...)`` continues the turn its interrupt paused. Turns are grouped into
    threads by ``thread_id`` (or ``session_id`` / ``conversation_id``).

    Args:
        store: A :class:`Store` or a database URL; defaults to ``$LOOP_DATABASE_URL`` or
            ``./loop.db``.
        thread_id: Thread id to use when the run's config carries none. When neither is given,
            every top-level invocation starts a new thread.
        user_id: Attach this user id to the threads it captures (or ``user_id`` in metadata).
        tracer_provider: OpenTelemetry tracer provider for the spans (the global one if None).
        emit_spans: Emit OpenTelemetry spans at all.
        capture_content: Put message text on spans (ids and sizes only when False). The store
            always keeps the full messages.
        registry: Prompt registry used to recognise prompt versions (the process-wide one).
        agent_name: ``gen_ai.agent.name`` on spans.
        writer: Share an existing background writer (advanced).
        redact: Redact private data (secrets, card numbers, emails, phones) before anything is
            stored or exported: True (default), False, or a configured
            :class:`~loop_middleware.privacy.Redactor` (with your own hook).

    The handler never raises into the host and never waits on the database: writes happen on a
    background thread. Call :meth:`flush` to wait for them (also done at interpreter exit).
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        tracer_provider: Any = None,
        emit_spans: bool = True,
        capture_content: bool = True,
        registry: PromptRegistry | None = None,
        agent_name: str = "agent",
        writer: BackgroundWriter | None = None,
        redact: bool | Redactor = True,
    ) -> None:
        super().__init__(Recorder(
            store, writer=writer, tracer_provider=tracer_provider, emit_spans=emit_spans,
            capture_content=capture_content, registry=registry, agent_name=agent_name,
            redact=redact,
        ))
        self.thread_id = thread_id
        self.user_id = user_id
        self._interrupts: dict[UUID, list[Any]] = {}

    # --- public ------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store captured threads go to."""
        return self.recorder.store

    @property
    def errors(self) -> int:
        """How many internal errors capture has swallowed (each one was logged)."""
        return self.recorder.errors + self.recorder.writer.stats.errors

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything captured so far is written. True when all of it is in the store
        (False when some of it waits in the spool for the database to come back)."""
        return self.recorder.flush(timeout)

    def close(self) -> None:
        """Flush and stop the background writer."""
        self.recorder.close()

    # --- the turn rule ----------------------------------------------------------------------

    def _root_start(self, run_id: UUID, inputs: Any, metadata: Mapping[str, Any]) -> str | None:
        thread_id = thread_id_of(metadata) or self.thread_id
        if thread_id:
            open_turn = self.recorder.open_turn(thread_id)
            if open_turn is not None and open_turn.status == "interrupted":
                is_resume, value = _resume(inputs)
                if is_resume:
                    self.forget_turn(open_turn.turn_id)
                    self.recorder.resume_turn(open_turn.turn_id, value, has_value=True)
                    return open_turn.turn_id
                # New input on an interrupted thread: that interrupt is never answered.
                self.recorder.finalize(open_turn.turn_id)
        turn_id = str(run_id)
        # No thread id in the run's metadata (LangGraph puts it there; plain chains keep
        # ``configurable.session_id`` only in their config): read it from the first nested run.
        self.recorder.start_turn(
            turn_id, thread_id or "", inputs, defer=not thread_id,
            user_id=metadata.get("user_id") or self.user_id, metadata=dict(metadata),
        )
        return turn_id

    def _root_end(self, run_id: UUID, turn_id: str, outputs: Any, error: BaseException | None) -> None:
        interrupts = self._interrupts.pop(run_id, None) or _interrupts_in(outputs)
        if error is None and interrupts:
            self.recorder.interrupt_turn(turn_id, interrupts)
        elif isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            self.recorder.end_turn(turn_id, outputs, ABANDONED, outcome="abandoned",
                                   at_last_activity=True)
        else:
            self.recorder.end_turn(turn_id, outputs, error)

    @guard
    def on_interrupt(self, event: Any) -> None:
        if event.run_id is not None and event.interrupts:
            self._interrupts.setdefault(event.run_id, []).extend(event.interrupts)
