"""``LoopMiddleware``: capture inside a langchain 1.x ``create_agent`` agent.

How it stays exact without a callback handler in the caller's config:

* **Which invocation?** The first model call of an invocation opens the turn (or continues the
  thread's interrupted one) and returns, with the model's response, an update of a private,
  untracked state key (``loop_turn``: never checkpointed, never in the agent's input or
  output). Later model and tool calls read it from the request's state, so concurrent
  invocations (with or without a ``thread_id``, on one event loop or many threads) can never
  mix. No ``before_agent``/``after_agent`` hooks: each would add a graph step (about 1.3 ms per
  turn measured on a small agent) to the host; the turn ends at the agent's final reply.
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

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
)
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import SystemMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.tracers.context import register_configure_hook
from langgraph.channels.untracked_value import UntrackedValue
from langgraph.config import get_config
from langgraph.types import Command

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

    def _locate(self, state: Any) -> tuple[str | None, bool]:
        """(the turn a model or tool call belongs to, whether the state must learn its marker).

        The private marker in the state names it; a call of a sub-agent run inside one of our
        calls joins that call's turn; otherwise this is the first call of an invocation: it
        continues the thread's open turn when it brings no new user message (a resume after an
        interrupt, rule 2 of :mod:`._turns`), else it starts a new turn (rule 1).
        """
        marker = state.get(_STATE_KEY) if isinstance(state, dict) else None
        if marker:
            turn_id = str(marker)[2:]
            if turn_id in self.recorder.turns:
                return turn_id, False
            recent = self.recorder.reopen(turn_id)
            return (recent.turn_id if recent is not None else None), False
        binding = _BINDING.get()
        if binding is not None and binding.recorder is self.recorder:
            return binding.turn_id, False
        config = _config()
        thread_id = self._thread_of(config)
        messages = (state or {}).get("messages", []) if isinstance(state, dict) else []
        new_users = _trailing_user_keys(messages)
        open_turn = self.recorder.open_turn(thread_id) if thread_id else None
        if open_turn is not None:
            if not new_users or new_users[-1] in open_turn.user_keys:
                # The same request going on in a new invocation: a resume.
                if open_turn.status == "interrupted" or not open_turn.resumed_late:
                    # Only the first call after a resume cuts the working time at the last
                    # activity (the human's wait is not latency).
                    open_turn.resumed_late = True
                    self.recorder.resume_turn(open_turn.turn_id)
                return open_turn.turn_id, True
            self._close_stale(open_turn)
        meta = config.get("metadata") or {}
        turn = self.recorder.start_turn(
            new_id(), thread_id or new_id(), {"messages": messages},
            user_id=meta.get("user_id") or self.user_id, metadata=meta,
        )
        turn.user_keys = set(new_users)
        if thread_id:
            self.recorder.mark_open(turn)
        return turn.turn_id, True

    def _close_stale(self, stale: TurnState) -> None:
        """A new request on a thread whose last turn is still open."""
        if stale.status in ("failed", "interrupted"):
            # Failed (the error escaped), or interrupted and never resumed: as written.
            self.recorder.finalize(stale.turn_id)
        elif not self.recorder.in_flight(stale):
            # Abandoned by the client, or paused outside our view and never resumed.
            self.recorder.end_turn(stale.turn_id, None, UNFINISHED, outcome="unfinished",
                                   at_last_activity=True)

    def _replied(self, turn_id: str | None, request: ModelRequest, response: Any, own: bool) -> None:
        """The model answered without asking for tools: the agent's reply ends the turn (it
        stays open for a moment in case the agent goes on, e.g. another middleware jumps back)."""
        if turn_id is None or not own:
            return
        try:
            result = getattr(response, "result", None)
            msgs = list(result) if isinstance(result, list) else [response]
            final = next((m for m in reversed(msgs) if getattr(m, "type", None) == "ai"), None)
            if final is None or getattr(final, "tool_calls", None):
                return
            self.recorder.end_turn(turn_id, {"messages": [*request.messages, *msgs]}, replied=True)
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("ending a turn at the reply")

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

    def _model_result(self, turn_id: str | None, marker: bool, own: bool, response: Any) -> Any:
        if not marker or turn_id is None:
            return response
        turn = self.recorder.turns.get(turn_id)
        if turn is not None:
            turn.resumed_late = False
        # Tell the rest of this invocation which turn it is (private, untracked state key).
        update: Command[Any] = Command(update={_STATE_KEY: f"{'t' if own else 'n'}:{turn_id}"})
        if isinstance(response, ExtendedModelResponse):
            return response  # another middleware's command: ours waits for the next call
        model_response = response if isinstance(response, ModelResponse) else ModelResponse(
            result=[response], structured_response=None)
        return ExtendedModelResponse(model_response=model_response, command=update)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> Any:
        turn_id, marker, own = self._safe_turn(request.state)
        request = self._prepare(request)
        with self._bound(turn_id) as capture:
            try:
                response = handler(request)
            except BaseException as exc:
                self._fallback_llm(turn_id, capture, request, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._fallback_llm(turn_id, capture, request, response, None)
        self._replied(turn_id, request, response, own)
        return self._model_result(turn_id, marker, own, response)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        turn_id, marker, own = self._safe_turn(request.state)
        request = self._prepare(request)
        with self._bound(turn_id) as capture:
            try:
                response = await handler(request)
            except BaseException as exc:
                self._fallback_llm(turn_id, capture, request, None, exc)
                self._escaped(turn_id, exc)
                raise
        self._fallback_llm(turn_id, capture, request, response, None)
        self._replied(turn_id, request, response, own)
        return self._model_result(turn_id, marker, own, response)

    def _safe_turn(self, state: Any) -> tuple[str | None, bool, bool]:
        """(turn id, whether the state needs its marker, whether the turn is this agent's own
        rather than an enclosing one's)."""
        try:
            turn_id, marker = self._locate(state)
            mark = state.get(_STATE_KEY) if isinstance(state, dict) else None
            binding = _BINDING.get()
            nested = (str(mark).startswith("n:") if mark else
                      binding is not None and binding.recorder is self.recorder)
            return turn_id, marker, not nested
        except Exception:  # noqa: BLE001 - counted and logged by _failed
            self._failed("finding the turn of a call")
            return None, False, False

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
        turn_id = self._safe_turn(getattr(request, "state", None))[0]
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
        turn_id = self._safe_turn(getattr(request, "state", None))[0]
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


def _trailing_user_keys(messages: Any) -> list[str]:
    """Keys (id, else text) of the trailing user messages of a state: the request it carries."""
    keys: list[str] = []
    for m in reversed(list(messages or [])):
        if getattr(m, "type", None) != "human":
            break
        keys.append(f"id:{m.id}" if getattr(m, "id", None) else f"text:{m.content}")
    return keys[::-1]


def _tool_call_id(request: Any) -> str | None:
    try:
        cid = request.tool_call.get("id")
        return str(cid) if cid else None
    except Exception:  # noqa: BLE001
        return None
