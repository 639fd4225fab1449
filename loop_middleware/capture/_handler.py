"""``LoopCallbackHandler``: a langchain-core callback handler that captures whole threads."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from ..privacy import Redactor
from ..prompts import PromptRegistry
from ..store import Store
from ._recorder import Recorder, new_id
from ._writer import BackgroundWriter

__all__ = ["LoopCallbackHandler"]

logger = logging.getLogger("loop_middleware.capture")

F = TypeVar("F", bound=Callable[..., Any])


def _guard(fn: F) -> F:
    """Never let our own error reach the host: count it, log it, carry on."""

    @functools.wraps(fn)
    def wrapper(self: LoopCallbackHandler, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error in %s (the host is unaffected)", fn.__name__)
            return None

    return cast(F, wrapper)


class LoopCallbackHandler(BaseCallbackHandler):
    """Captures every turn of a LangChain/LangGraph agent into a :class:`Store`.

    Add it to ``config["callbacks"]``; one handler serves any number of threads, sync or async,
    in parallel. A *turn* is one top-level invocation (``graph.invoke``/``ainvoke``/``stream``)
    with every LLM call and tool call made inside it, subgraphs included; turns are grouped into
    *threads* by LangGraph's ``thread_id``.

    Args:
        store: A :class:`Store` or a database URL; defaults to ``$LOOP_DATABASE_URL`` or
            ``./loop.db``.
        thread_id: Thread id to use when the run's config carries none. When neither is given,
            every top-level invocation starts a new thread.
        user_id: Attach this user id to the threads it captures.
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

    raise_error = False
    # Sync handler kept on the event loop in async runs: callbacks stay in order and cheap.
    run_inline = True

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
        super().__init__()
        self.recorder = Recorder(
            store, writer=writer, tracer_provider=tracer_provider, emit_spans=emit_spans,
            capture_content=capture_content, registry=registry, agent_name=agent_name,
            redact=redact,
        )
        self.thread_id = thread_id
        self.user_id = user_id
        self._turn_of: dict[UUID, str] = {}
        self._runs_of: dict[str, list[UUID]] = {}

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

    # --- run bookkeeping ---------------------------------------------------------------------

    def _enter(
        self, run_id: UUID, parent_run_id: UUID | None, inputs: Any, metadata: dict[str, Any] | None
    ) -> tuple[str, bool]:
        """Map a run to its turn; a run with no known parent opens a new turn."""
        if parent_run_id is not None and parent_run_id in self._turn_of:
            turn_id = self._turn_of[parent_run_id]
            self._turn_of[run_id] = turn_id
            self._runs_of.setdefault(turn_id, []).append(run_id)
            return turn_id, False
        turn_id = str(run_id)
        meta = metadata or {}
        thread_id = str(meta.get("thread_id") or self.thread_id or new_id())
        user_id = meta.get("user_id") or self.user_id
        self._turn_of[run_id] = turn_id
        self._runs_of[turn_id] = [run_id]
        self.recorder.start_turn(turn_id, thread_id, inputs, user_id=user_id, metadata=meta)
        return turn_id, True

    def _exit_root(self, run_id: UUID, outputs: Any = None, error: BaseException | None = None) -> None:
        turn_id = str(run_id)
        if turn_id not in self._runs_of:
            return
        for rid in self._runs_of.pop(turn_id, []):
            self._turn_of.pop(rid, None)
        self.recorder.end_turn(turn_id, outputs, error)

    # --- chains (graphs, nodes) ----------------------------------------------------------------

    @_guard
    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id, inputs, metadata)

    @_guard
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit_root(run_id, outputs)

    @_guard
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit_root(run_id, None, error)

    # --- LLM calls -----------------------------------------------------------------------------

    @_guard
    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: list[list[Any]], *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        self._llm_start(serialized, messages, run_id, parent_run_id, metadata, invocation_params, kwargs)

    @_guard
    def on_llm_start(
        self, serialized: dict[str, Any] | None, prompts: list[str], *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        msgs = [{"role": "user", "content": p} for p in prompts]
        self._llm_start(serialized, msgs, run_id, parent_run_id, metadata, invocation_params, kwargs)

    def _llm_start(
        self, serialized: dict[str, Any] | None, messages: Any, run_id: UUID,
        parent_run_id: UUID | None, metadata: dict[str, Any] | None,
        invocation_params: dict[str, Any] | None, kwargs: dict[str, Any],
    ) -> None:
        meta = metadata or {}
        params = invocation_params or kwargs.get("invocation_params") or {}
        turn_id, _root = self._enter(run_id, parent_run_id, {"messages": messages}, meta)
        model = (
            meta.get("ls_model_name") or params.get("model") or params.get("model_name")
            or (serialized or {}).get("name") or kwargs.get("name")
        )
        self.recorder.start_call(
            "llm", str(run_id), turn_id, model=model, provider=meta.get("ls_provider"),
            raw_input=messages,
        )

    @_guard
    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), response)
        self._exit_root(run_id, _final_messages(response))

    @_guard
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), None, error)
        self._exit_root(run_id, None, error)

    # --- tools ---------------------------------------------------------------------------------

    @_guard
    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        turn_id, _root = self._enter(run_id, parent_run_id, None, metadata)
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        self.recorder.start_call(
            "tool", str(run_id), turn_id, name=name,
            arguments=inputs if inputs is not None else input_str,
            tool_call_id=kwargs.get("tool_call_id"),
        )

    @_guard
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), output)
        self._exit_root(run_id, None)

    @_guard
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), None, error)
        self._exit_root(run_id, None, error)


def _final_messages(response: Any) -> Any:
    gens = getattr(response, "generations", None)
    if not gens:
        return None
    return {"messages": [getattr(g, "message", None) or g.text for batch in gens for g in batch]}
