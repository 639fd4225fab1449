"""Callback plumbing shared by :class:`LoopCallbackHandler` and :class:`LoopMiddleware`.

:class:`RunCapture` maps LangChain runs (chat models, tools, retrievers, prompt templates,
chains) to turns of a :class:`~._recorder.Recorder`. What a *top-level* run means is left to the
subclass: the callback handler opens or continues a turn (:mod:`._turns`), the middleware's
bound capture attaches it to the turn it is running.

Every callback is guarded: an error in our code is counted and logged, never raised into the
host. Events are idempotent: a handler attached twice (``with_config(callbacks=...)`` plus the
invocation's config) sees every event twice and records it once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast
from uuid import UUID

from langchain_core.runnables.config import var_child_runnable_config
from langgraph.callbacks import GraphCallbackHandler
from langgraph.errors import GraphBubbleUp, GraphInterrupt

from ..prompts import sha256_text, version_from_metadata
from ._messages import messages_list
from ._recorder import Recorder, new_id
from ._turns import thread_id_of

__all__ = ["RunCapture", "guard", "is_control_flow", "is_interrupt"]

logger = logging.getLogger("loop_middleware.capture")

F = TypeVar("F", bound=Callable[..., Any])


def guard(fn: F) -> F:
    """Never let our own error reach the host: count it, log it, carry on."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error in %s (the host is unaffected)", fn.__name__)
            return None

    return cast(F, wrapper)


def is_interrupt(error: BaseException | None) -> bool:
    """``interrupt()`` pausing the graph: not an error."""
    return isinstance(error, GraphInterrupt)


def is_control_flow(error: BaseException | None) -> bool:
    """LangGraph control flow raised through runs (interrupts, ``Command(graph=PARENT)``)."""
    return isinstance(error, GraphBubbleUp)


def _system_templates(serialized: Mapping[str, Any] | None) -> list[str]:
    """The system message templates of a serialised ``ChatPromptTemplate``, in order."""
    out: list[str] = []
    msgs = ((serialized or {}).get("kwargs") or {}).get("messages") or []
    for m in msgs if isinstance(msgs, list) else []:
        ident = m.get("id") if isinstance(m, Mapping) else None
        if not isinstance(ident, list) or not ident or "System" not in str(ident[-1]):
            continue
        prompt = ((m.get("kwargs") or {}).get("prompt") or {}).get("kwargs") or {}
        if isinstance(prompt.get("template"), str):
            out.append(prompt["template"])
    if not out:  # a plain PromptTemplate used as the system text
        template = ((serialized or {}).get("kwargs") or {}).get("template")
        if isinstance(template, str):
            out.append(template)
    return out


class RunCapture(GraphCallbackHandler):
    """Maps runs to turns and records LLM calls, tool calls and rendered prompts."""

    raise_error = False
    # Sync handler kept on the event loop in async runs: callbacks stay in order and cheap.
    run_inline = True

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self._turn_of: dict[UUID, str] = {}
        self._runs_of: dict[str, list[UUID]] = {}
        self._roots: dict[UUID, str] = {}
        self._prompts: dict[UUID, tuple[Mapping[str, Any] | None, list[str]]] = {}

    # --- subclass policy --------------------------------------------------------------------

    def _root_start(self, run_id: UUID, inputs: Any, metadata: Mapping[str, Any]) -> str | None:
        """The turn a run with no known parent belongs to (None: do not capture it)."""
        raise NotImplementedError

    def _root_end(self, run_id: UUID, turn_id: str, outputs: Any, error: BaseException | None) -> None:
        """A top-level run ended."""

    def _resolve_thread(self, turn: Any) -> None:
        """A deferred turn's first nested run started: its thread id is in the run's config."""
        config = var_child_runnable_config.get() or {}
        thread_id = thread_id_of(config.get("configurable"), config.get("metadata"))
        self.recorder.set_thread(turn, thread_id or new_id())

    def _skip_tool(self, tool_call_id: str | None) -> bool:
        """A tool run recorded elsewhere (the middleware records the tool it wraps)."""
        return False

    # --- bookkeeping ------------------------------------------------------------------------

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, inputs: Any,
               metadata: Mapping[str, Any] | None) -> str | None:
        known = self._turn_of.get(run_id)
        if known is not None:  # the same event twice: one handler attached twice
            return None
        if parent_run_id is not None:
            turn_id = self._turn_of.get(parent_run_id)
            if turn_id is not None:
                self._turn_of[run_id] = turn_id
                self._runs_of.setdefault(turn_id, []).append(run_id)
                turn = self.recorder.turns.get(turn_id)
                if turn is not None and turn.thread_pending:
                    self._resolve_thread(turn)
                return turn_id
        turn_id = self._root_start(run_id, inputs, metadata or {})
        if turn_id is not None:
            self._turn_of[run_id] = turn_id
            self._runs_of.setdefault(turn_id, []).append(run_id)
            self._roots[run_id] = turn_id
        return turn_id

    def _exit(self, run_id: UUID, outputs: Any = None, error: BaseException | None = None) -> None:
        turn_id = self._roots.pop(run_id, None)
        if turn_id is None:
            return
        for rid in self._runs_of.pop(turn_id, []):
            self._turn_of.pop(rid, None)
        self._root_end(run_id, turn_id, outputs, error)

    def forget_turn(self, turn_id: str) -> None:
        """Drop the runs of ``turn_id`` (it continues under new runs, e.g. after a resume)."""
        for rid in self._runs_of.pop(turn_id, []):
            self._turn_of.pop(rid, None)
            self._roots.pop(rid, None)

    # --- chains, prompt templates -----------------------------------------------------------

    @guard
    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        turn_id = self._enter(run_id, parent_run_id, inputs, metadata)
        if turn_id is not None and kwargs.get("run_type") == "prompt":
            self._prompts[run_id] = (metadata, _system_templates(serialized))

    @guard
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        prompt = self._prompts.pop(run_id, None)
        if prompt is not None:
            self._rendered(run_id, outputs, *prompt)
        self._exit(run_id, outputs)

    @guard
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._prompts.pop(run_id, None)
        self._exit(run_id, None, error)

    def _rendered(self, run_id: UUID, value: Any, metadata: Mapping[str, Any] | None,
                  templates: list[str]) -> None:
        turn_id = self._turn_of.get(run_id)
        if turn_id is None:
            return
        to_messages = getattr(value, "to_messages", None)
        msgs = to_messages() if callable(to_messages) else []
        turn = self.recorder.turns.get(turn_id)
        if turn is not None and turn.fallback_user is None and msgs:
            turn.fallback_user = msgs
        systems = [m for m in messages_list(msgs) if m["role"] == "system"]
        if not systems and hasattr(value, "to_string") and templates:
            systems = [{"content": value.to_string()}]
        for i, m in enumerate(systems):
            template = templates[i] if i < len(templates) else None
            version = version_from_metadata(metadata, template, registry=self.recorder.registry)
            self.recorder.note_prompt(turn_id, m["content"], version,
                                      sha256_text(template) if template else None)

    # --- LLM calls --------------------------------------------------------------------------

    @guard
    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: list[list[Any]], *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        self._llm_start(serialized, messages, run_id, parent_run_id, metadata, invocation_params,
                        kwargs)

    @guard
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
        turn_id = self._enter(run_id, parent_run_id, {"messages": messages}, meta)
        if turn_id is None:
            return
        model = (
            meta.get("ls_model_name") or params.get("model") or params.get("model_name")
            or (serialized or {}).get("name") or kwargs.get("name")
        )
        self.on_llm_recorded()
        self.recorder.start_call(
            "llm", str(run_id), turn_id, model=model, provider=meta.get("ls_provider"),
            raw_input=messages,
        )

    def on_llm_recorded(self) -> None:
        """Hook: an LLM call was recorded through callbacks."""

    @guard
    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), response)
        self._exit(run_id, _final_messages(response))

    @guard
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), None, error)
        self._exit(run_id, None, error)

    # --- tools and retrievers ---------------------------------------------------------------

    @guard
    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        turn_id = self._enter(run_id, parent_run_id, None, metadata)
        tool_call_id = kwargs.get("tool_call_id")
        if turn_id is None or self._skip_tool(tool_call_id):
            return
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        self.recorder.start_call(
            "tool", str(run_id), turn_id, name=name,
            arguments=inputs if inputs is not None else input_str, tool_call_id=tool_call_id,
        )

    @guard
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), output)
        self._exit(run_id, None)

    @guard
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if is_interrupt(error):
            # The tool paused for a human; it runs again from the start on resume.
            self.recorder.discard_call(str(run_id))
        else:
            self.recorder.end_call(str(run_id), None, None if is_control_flow(error) else error)
        self._exit(run_id, None, error)

    @guard
    def on_retriever_start(
        self, serialized: dict[str, Any] | None, query: str, *, run_id: UUID,
        parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        turn_id = self._enter(run_id, parent_run_id, query, metadata)
        if turn_id is None:
            return
        name = kwargs.get("name") or (serialized or {}).get("name") or "retriever"
        self.recorder.start_call("tool", str(run_id), turn_id, name=name,
                                 arguments={"query": query})

    @guard
    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), list(documents))
        self._exit(run_id, None)

    @guard
    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.recorder.end_call(str(run_id), None, error)
        self._exit(run_id, None, error)


def _final_messages(response: Any) -> Any:
    gens = getattr(response, "generations", None)
    if not gens:
        return None
    return {"messages": [getattr(g, "message", None) or g.text for batch in gens for g in batch]}

