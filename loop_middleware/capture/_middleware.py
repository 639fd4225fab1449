"""``LoopMiddleware``: capture inside a langchain 1.x ``create_agent`` agent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langgraph.config import get_config

from ..privacy import Redactor
from ..prompts import PromptRegistry
from ..store import Store
from ._recorder import Recorder, new_id
from ._writer import BackgroundWriter

__all__ = ["LoopMiddleware"]

logger = logging.getLogger("loop_middleware.capture")


def _config() -> dict[str, Any]:
    try:
        return dict(get_config())
    except RuntimeError:  # outside a runnable context
        return {}


class LoopMiddleware(AgentMiddleware):  # type: ignore[type-arg,unused-ignore]
    """Captures every turn of a ``create_agent`` agent: the user's message, each model call (with
    its system prompt's version, tokens, latency, finish reason) and each tool call.

    ``create_agent(model, tools, system_prompt=..., middleware=[LoopMiddleware(store)])``.

    Args: as for :class:`~loop_middleware.LoopCallbackHandler` (``store``, ``thread_id``,
    ``user_id``, ``tracer_provider``, ``emit_spans``, ``capture_content``, ``registry``,
    ``agent_name``, ``writer``).

    Turns are keyed by the run's LangGraph ``thread_id``; without one, each invocation is its own
    thread. Capture never changes the agent's state or results and never raises into the agent.
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
        super().__init__()
        self.recorder = Recorder(
            store, writer=writer, tracer_provider=tracer_provider, emit_spans=emit_spans,
            capture_content=capture_content, registry=registry, agent_name=agent_name,
            redact=redact,
        )
        self.thread_id = thread_id
        self.user_id = user_id
        self._open: dict[str, str] = {}  # key -> open turn id
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "LoopMiddleware"

    @property
    def store(self) -> Store:
        """The store captured threads go to."""
        return self.recorder.store

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything captured so far is written (True when all is in the store)."""
        return self.recorder.flush(timeout)

    def close(self) -> None:
        """Flush and stop the background writer."""
        self.recorder.close()

    # --- keys ----------------------------------------------------------------------------------

    def _key(self, config: dict[str, Any]) -> tuple[str, str | None]:
        conf = config.get("configurable") or {}
        meta = config.get("metadata") or {}
        tid = conf.get("thread_id") or meta.get("thread_id") or self.thread_id
        if tid:
            return f"t:{tid}", str(tid)
        # No thread id: one open turn per OS thread (each invocation is its own thread).
        return f"anon:{threading.get_ident()}", None

    def _turn(self, config: dict[str, Any]) -> str | None:
        key, _ = self._key(config)
        return self._open.get(key)

    # --- hooks ---------------------------------------------------------------------------------

    def _before(self, state: Any) -> None:
        try:
            config = _config()
            key, tid = self._key(config)
            with self._lock:
                stale = self._open.pop(key, None)
            if stale:
                # The previous invocation died before after_agent: close it as interrupted.
                self.recorder.end_turn(stale, error="turn ended without a reply (interrupted or failed)")
            turn_id = new_id()
            meta = config.get("metadata") or {}
            self.recorder.start_turn(
                turn_id, tid or new_id(), {"messages": (state or {}).get("messages", [])},
                user_id=meta.get("user_id") or self.user_id, metadata=meta,
            )
            with self._lock:
                self._open[key] = turn_id
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error in before_agent (the host is unaffected)")

    def _after(self, state: Any) -> None:
        try:
            key, _ = self._key(_config())
            with self._lock:
                turn_id = self._open.pop(key, None)
            if turn_id:
                self.recorder.end_turn(turn_id, {"messages": (state or {}).get("messages", [])})
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error in after_agent (the host is unaffected)")

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._before(state)
        return None

    async def abefore_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._before(state)
        return None

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._after(state)
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._after(state)
        return None

    # --- model calls ---------------------------------------------------------------------------

    def _model_start(self, request: ModelRequest) -> str | None:
        try:
            turn_id = self._turn(_config())
            if turn_id is None:
                return None
            call_id = new_id()
            model = request.model
            ident = getattr(model, "_get_ls_params", None)
            params: dict[str, Any] = {}
            if callable(ident):
                try:
                    params = dict(ident())
                except Exception:  # noqa: BLE001
                    params = {}
            messages = ([request.system_message] if request.system_message else []) + list(request.messages)
            self.recorder.start_call(
                "llm", call_id, turn_id,
                model=params.get("ls_model_name") or getattr(model, "model_name", None)
                or getattr(model, "model", None) or type(model).__name__,
                provider=params.get("ls_provider"), raw_input=messages,
            )
            return call_id
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error before a model call")
            return None

    def _model_end(self, call_id: str | None, response: Any, error: BaseException | None = None) -> None:
        if call_id is None:
            return
        try:
            result = getattr(response, "result", None) if response is not None else None
            if result is None and response is not None and not isinstance(response, ModelResponse):
                result = [response]  # an AIMessage returned directly
            self.recorder.end_call(call_id, result, error)
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error after a model call")

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> Any:
        call_id = self._model_start(request)
        try:
            response = handler(request)
        except BaseException as exc:
            self._model_end(call_id, None, exc)
            raise
        self._model_end(call_id, response)
        return response

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        call_id = self._model_start(request)
        try:
            response = await handler(request)
        except BaseException as exc:
            self._model_end(call_id, None, exc)
            raise
        self._model_end(call_id, response)
        return response

    # --- tool calls ----------------------------------------------------------------------------

    def _tool_start(self, request: Any) -> str | None:
        try:
            runtime = getattr(request, "runtime", None)
            config = dict(getattr(runtime, "config", None) or {}) or _config()
            turn_id = self._turn(config)
            if turn_id is None:
                return None
            call = request.tool_call
            call_id = new_id()
            self.recorder.start_call(
                "tool", call_id, turn_id, name=call.get("name"), arguments=call.get("args"),
                tool_call_id=call.get("id"),
            )
            return call_id
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error before a tool call")
            return None

    def _tool_end(self, call_id: str | None, result: Any, error: BaseException | None = None) -> None:
        if call_id is None:
            return
        try:
            self.recorder.end_call(call_id, result, error)
        except Exception:
            self.recorder.errors += 1
            logger.exception("loop-middleware: capture error after a tool call")

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call_id = self._tool_start(request)
        try:
            result = handler(request)
        except BaseException as exc:
            self._tool_end(call_id, None, exc)
            raise
        self._tool_end(call_id, result)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        call_id = self._tool_start(request)
        try:
            result = await handler(request)
        except BaseException as exc:
            self._tool_end(call_id, None, exc)
            raise
        self._tool_end(call_id, result)
        return result
