"""``LoopMiddleware``: capture inside a langchain 1.x ``create_agent`` agent.

How it stays exact without a callback handler in the caller's config:

* **Which invocation?** ``before_agent`` opens the turn and writes its id into a private,
  untracked state key (``loop_turn``: never checkpointed, never in the agent's input or
  output). Model and tool calls read it from the request's state, so concurrent invocations
  (with or without a ``thread_id``, on one event loop or many threads) can never mix.
* **What was sent?** Around each model or tool call the middleware binds a small callback
  handler through langchain-core's configure hook, for that call only: the chat model's own
  callbacks then record the exact messages it received (after every other middleware changed
  the request, e.g. ``@dynamic_prompt``), and sub-agents, chains and tools run inside a tool are
  recorded into the same turn.
* **Turn boundaries** follow the same rule as the callback handler (:mod:`._turns`); a resume
  continues the turn its interrupt paused (found by ``thread_id``, since the untracked key does
  not survive the interrupt).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired
from uuid import UUID

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import SystemMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.tracers.context import register_configure_hook
from langgraph.channels.untracked_value import UntrackedValue
from langgraph.config import get_config

from ..privacy import Redactor
from ..prompts import PromptRegistry
from ..store import Store
from ..types import SELF_REPORT_TOOL
from ._callbacks import RunCapture, is_control_flow, is_interrupt
from ._recorder import Recorder, TurnState, new_id
from ._turns import thread_id_of
from ._writer import BackgroundWriter

__all__ = ["LoopMiddleware"]

logger = logging.getLogger("loop_middleware.capture")

_STATE_KEY = "loop_turn"
UNFINISHED = ("ended without a reply: the invocation stopped before the agent finished "
              "(the client abandoned it, or it failed or paused outside the agent)")


class LoopState(AgentState):  # type: ignore[type-arg,unused-ignore]
    """The agent state plus the middleware's private, untracked turn marker."""

    loop_turn: NotRequired[Annotated[str | None, UntrackedValue, PrivateStateAttr]]


@dataclass(frozen=True)
class _Binding:
    recorder: Recorder
    turn_id: str


_BINDING: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "loop_middleware_binding", default=None)
"""The turn a model or tool call of ours is running in (nested agents join it)."""
_HOOK: contextvars.ContextVar[_BoundCapture | None] = contextvars.ContextVar(
    "loop_middleware_hook", default=None)
"""The callback handler langchain-core adds to every run started while it is set."""
_hook_lock = threading.Lock()
_hook_registered = False


def _register_hook() -> None:
    # Once per process, on first use (never on import). The hook does nothing while the
    # variable is unset, i.e. outside our own model and tool calls.
    global _hook_registered
    with _hook_lock:
        if not _hook_registered:
            register_configure_hook(_HOOK, inheritable=True)
            _hook_registered = True


class _BoundCapture(RunCapture):
    """Records the runs of one model or tool call of the agent into a known turn."""

    def __init__(self, recorder: Recorder, turn_id: str, skip_tool_call_id: str | None = None) -> None:
        super().__init__(recorder)
        self.turn_id = turn_id
        self.skip_tool_call_id = skip_tool_call_id
        self.llm_calls = 0

    def _root_start(self, run_id: UUID, inputs: Any, metadata: Any) -> str | None:
        return self.turn_id

    def _skip_tool(self, tool_call_id: str | None) -> bool:
        return tool_call_id is not None and tool_call_id == self.skip_tool_call_id

    def on_llm_recorded(self) -> None:
        self.llm_calls += 1


def _config() -> dict[str, Any]:
    try:
        return dict(get_config())
    except RuntimeError:  # outside a runnable context
        return {}


SELF_REPORT_INSTRUCTION = (
    f"If you are stuck, a tool keeps failing, or you cannot do what the user asked, call the "
    f"`{SELF_REPORT_TOOL}` tool with a short reason (the user does not see it), then answer the "
    f"user as well as you can."
)
"""The line :class:`LoopMiddleware` adds to the system prompt when ``report_problems=True``."""


def _report_tool() -> BaseTool:
    @tool(SELF_REPORT_TOOL)
    def report_problem(reason: str) -> str:
        """Report to the developers that you are stuck, a tool keeps failing, or you cannot do
        what the user asked. The user does not see this. Give a short, specific reason."""
        return "Reported to the developers. Now answer the user as well as you can."

    return report_problem


class LoopMiddleware(AgentMiddleware):  # type: ignore[type-arg,unused-ignore]
    """Captures every turn of a ``create_agent`` agent: the user's message, each model call (with
    the exact messages sent, its system prompt's version, tokens, latency, finish reason), each
    tool call (in the order the model asked for them), and what nested sub-agents did.

    ``create_agent(model, tools, system_prompt=..., middleware=[LoopMiddleware(store)])``.

    Args:
        store, thread_id, user_id, tracer_provider, emit_spans, capture_content, registry,
            agent_name, writer, redact: as for :class:`~loop_middleware.LoopCallbackHandler`.
        report_problems: Give the agent a ``report_problem(reason)`` tool and one line of system
            prompt asking it to report when it is stuck, a tool keeps failing, or it cannot do
            what was asked. Reports are captured as tool calls on their turn and extracted as
            ``self_report`` signals, a failure source no offline detector can see. Off by
            default (it changes the prompt the model sees).

    Turns follow the rule of :mod:`loop_middleware.capture._turns`; without a ``thread_id`` each
    invocation is its own thread. Capture never changes the agent's visible state or results
    and never raises into the agent.
    """

    state_schema = LoopState

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
        report_problems: bool = False,
    ) -> None:
        super().__init__()
        self.recorder = Recorder(
            store, writer=writer, tracer_provider=tracer_provider, emit_spans=emit_spans,
            capture_content=capture_content, registry=registry, agent_name=agent_name,
            redact=redact,
        )
        self.thread_id = thread_id
        self.user_id = user_id
        self.report_problems = report_problems
        self.tools = [_report_tool()] if report_problems else []
        _register_hook()

    @property
    def name(self) -> str:
        return "LoopMiddleware"

    @property
    def store(self) -> Store:
        """The store captured threads go to."""
        return self.recorder.store

    @property
    def errors(self) -> int:
        """How many internal errors capture has swallowed (each one was logged)."""
        return self.recorder.errors + self.recorder.writer.stats.errors

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything captured so far is written (True when all is in the store)."""
        return self.recorder.flush(timeout)

    def close(self) -> None:
        """Flush and stop the background writer."""
        self.recorder.close()

    def _failed(self, where: str) -> None:
        self.recorder.errors += 1
        logger.exception("loop-middleware: capture error %s (the host is unaffected)", where)

    # --- turns ---------------------------------------------------------------------------------

    def _thread_of(self, config: dict[str, Any]) -> str | None:
        return thread_id_of(config.get("configurable"), config.get("metadata")) or self.thread_id

    def _before(self, state: Any) -> dict[str, Any] | None:
        try:
            binding = _BINDING.get()
            if binding is not None and binding.recorder is self.recorder:
                # A sub-agent run inside one of our model or tool calls: part of that turn.
                return {_STATE_KEY: f"n:{binding.turn_id}"}
            config = _config()
            thread_id = self._thread_of(config)
            if thread_id:
                stale = self.recorder.open_turn(thread_id)
                if stale is not None and stale.status in ("failed", "interrupted"):
                    # Failed (the error escaped) or interrupted and never resumed: as written.
                    self.recorder.finalize(stale.turn_id)
                elif stale is not None and not self.recorder.in_flight(stale):
                    # A new invocation on a thread whose last turn never reached after_agent:
                    # abandoned by the client, or paused outside our view and not resumed.
                    self.recorder.end_turn(stale.turn_id, None, UNFINISHED, outcome="unfinished",
                                           at_last_activity=True)
            meta = config.get("metadata") or {}
            turn = self.recorder.start_turn(
                new_id(), thread_id or new_id(), {"messages": (state or {}).get("messages", [])},
                user_id=meta.get("user_id") or self.user_id, metadata=meta,
            )
            if thread_id:
                self.recorder.mark_open(turn)
            return {_STATE_KEY: f"t:{turn.turn_id}"}
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("in before_agent")
            return None

    def _after(self, state: Any) -> None:
        try:
            marker = (state or {}).get(_STATE_KEY) or ""
            if marker.startswith("n:"):
                return
            turn = self.recorder.turns.get(marker[2:]) if marker else self._resumed(_config())
            if turn is not None:
                self.recorder.end_turn(turn.turn_id, {"messages": (state or {}).get("messages", [])})
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("in after_agent")

    def _resumed(self, config: dict[str, Any]) -> TurnState | None:
        """The open turn of this invocation's thread: the untracked marker is gone after an
        interrupt, so a call without it continues the thread's interrupted turn (rule 2)."""
        thread_id = self._thread_of(config)
        turn = self.recorder.open_turn(thread_id) if thread_id else None
        if turn is not None and (turn.status == "interrupted" or not turn.resumed_late):
            # Only the first call after a resume cuts the working time at the last activity.
            turn.resumed_late = True
            self.recorder.resume_turn(turn.turn_id)
        return turn

    def _turn_for(self, state: Any, config: dict[str, Any] | None = None) -> str | None:
        marker = (state or {}).get(_STATE_KEY) if isinstance(state, dict) else None
        if marker:
            return str(marker)[2:]
        binding = _BINDING.get()
        if binding is not None and binding.recorder is self.recorder:
            return binding.turn_id
        turn = self._resumed(config if config is not None else _config())
        return turn.turn_id if turn is not None else None

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._before(state)

    async def abefore_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._before(state)

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._after(state)
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._after(state)
        return None

    # --- binding a call to its turn ------------------------------------------------------------

    @contextmanager
    def _bound(self, turn_id: str | None, skip_tool_call_id: str | None = None) -> Iterator[_BoundCapture | None]:
        if turn_id is None:
            yield None
            return
        capture = _BoundCapture(self.recorder, turn_id, skip_tool_call_id)
        t1 = _BINDING.set(_Binding(self.recorder, turn_id))
        t2 = _HOOK.set(capture)
        try:
            yield capture
        finally:
            _HOOK.reset(t2)
            _BINDING.reset(t1)

    def _escaped(self, turn_id: str | None, exc: BaseException) -> None:
        """An exception left one of our calls: an interrupt pauses the turn; anything else ends
        it provisionally (an outer retry may still continue it)."""
        if turn_id is None:
            return
        try:
            if is_interrupt(exc):
                self.recorder.interrupt_turn(turn_id, list(exc.args[0]) if exc.args else [])
            elif not is_control_flow(exc):
                self.recorder.end_turn(turn_id, None, exc, provisional=True)
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("recording an escaped exception")

    # --- model calls ---------------------------------------------------------------------------

    def _prepare(self, request: ModelRequest) -> ModelRequest:
        if not self.report_problems:
            return request
        try:
            text = request.system_message.text if request.system_message is not None else ""
            if SELF_REPORT_INSTRUCTION in text:
                return request
            joined = f"{text}\n\n{SELF_REPORT_INSTRUCTION}" if text else SELF_REPORT_INSTRUCTION
            return request.override(system_message=SystemMessage(joined))
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("adding the self-report instruction")
            return request

    def _fallback_llm(self, turn_id: str | None, capture: _BoundCapture | None, request: ModelRequest,
                      response: Any, error: BaseException | None) -> None:
        """Record a model call from the request when the model fired no callbacks."""
        if turn_id is None or capture is None or capture.llm_calls:
            return
        try:
            call_id = new_id()
            messages = ([request.system_message] if request.system_message else []) + list(request.messages)
            self.recorder.start_call("llm", call_id, turn_id, model=type(request.model).__name__,
                                     raw_input=messages)
            result = getattr(response, "result", None) if response is not None else None
            if result is None and response is not None and not isinstance(response, ModelResponse):
                result = [response]
            self.recorder.end_call(call_id, result, error)
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("after a model call")

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> Any:
        turn_id = self._safe_turn(request.state)
        request = self._prepare(request)
        with self._bound(turn_id) as capture:
            try:
                response = handler(request)
            except BaseException as exc:
                self._fallback_llm(turn_id, capture, request, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._fallback_llm(turn_id, capture, request, response, None)
        return response

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        turn_id = self._safe_turn(request.state)
        request = self._prepare(request)
        with self._bound(turn_id) as capture:
            try:
                response = await handler(request)
            except BaseException as exc:
                self._fallback_llm(turn_id, capture, request, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._fallback_llm(turn_id, capture, request, response, None)
        return response

    def _safe_turn(self, state: Any) -> str | None:
        try:
            return self._turn_for(state)
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("finding the turn of a call")
            return None

    # --- tool calls ----------------------------------------------------------------------------

    def _tool_start(self, request: Any, turn_id: str | None) -> str | None:
        if turn_id is None:
            return None
        try:
            call = request.tool_call
            call_id = new_id()
            started = self.recorder.start_call(
                "tool", call_id, turn_id, name=call.get("name"), arguments=call.get("args"),
                tool_call_id=call.get("id"),
            )
            return call_id if started is not None else None
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("before a tool call")
            return None

    def _tool_end(self, call_id: str | None, result: Any, error: BaseException | None = None) -> None:
        if call_id is None:
            return
        try:
            if is_interrupt(error):
                self.recorder.discard_call(call_id)  # it runs again from the start on resume
            else:
                self.recorder.end_call(call_id, result, None if is_control_flow(error) else error)
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("after a tool call")

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        turn_id = self._safe_turn(getattr(request, "state", None))
        call_id = self._tool_start(request, turn_id)
        with self._bound(turn_id, _tool_call_id(request)):
            try:
                result = handler(request)
            except BaseException as exc:
                self._tool_end(call_id, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._tool_end(call_id, result)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        turn_id = self._safe_turn(getattr(request, "state", None))
        call_id = self._tool_start(request, turn_id)
        with self._bound(turn_id, _tool_call_id(request)):
            try:
                result = await handler(request)
            except BaseException as exc:
                self._tool_end(call_id, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._tool_end(call_id, result)
        return result


def _tool_call_id(request: Any) -> str | None:
    try:
        cid = request.tool_call.get("id")
        return str(cid) if cid else None
    except Exception:  # noqa: BLE001
        return None
