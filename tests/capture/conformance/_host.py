"""The conformance harness: what the host ran, recorded by the host itself, compared with what
lands in the store.

The host's own model (langchain-core's ``GenericFakeChatModel``, the host agent's LLM) and tools
log every call they receive, tagged with the invocation that made it (a context variable the
test sets around each ``invoke``; LangGraph carries it into nodes, threads and tasks). After the
run the store is reopened and every turn is compared with that log: user text, every LLM call
(input messages and output), every tool call in the order the model asked for them with its
result or error, the reply, the error, the prompt version of each call.
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, StructuredTool

from loop_middleware import LoopCallbackHandler, LoopMiddleware, Store, Thread, Turn
from loop_middleware.prompts import sha256_text
from tests._fakes import FakeToolModel

_INVOCATION: contextvars.ContextVar[str | None] = contextvars.ContextVar("host_invocation", default=None)

_ROLE = {"system": "system", "human": "user", "ai": "assistant", "AIMessageChunk": "assistant",
         "tool": "tool"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def simple(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """(role, text) of host messages, by the host's own reading."""
    return [(_ROLE.get(m.type, m.type), _text(m.content)) for m in messages]


@dataclass
class LLMEvent:
    invocation: str | None
    inputs: list[tuple[str, str]]
    system: list[str]
    output: AIMessage
    error: str | None = None


@dataclass
class ToolEvent:
    invocation: str | None
    name: str
    args: dict[str, Any]
    result: str | None
    error: str | None
    start: float
    end: float


@dataclass
class Host:
    """The ground truth: every model and tool call the host made."""

    llm: list[LLMEvent] = field(default_factory=list)
    tools: list[ToolEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def invocation(self, key: str) -> Iterator[None]:
        token = _INVOCATION.set(key)
        try:
            yield
        finally:
            _INVOCATION.reset(token)

    def model(self, *replies: AIMessage | Exception, name: str = "host-model") -> HostModel:
        return HostModel(messages=iter(list(replies)), host=self, model_name=name)

    def tool(self, fn: Callable[..., Any], *, name: str | None = None, delay: float = 0.0,
             **kw: Any) -> BaseTool:
        """A host tool that logs each execution (``fn`` may raise)."""
        tool_name = name or fn.__name__

        def run(**args: Any) -> Any:
            start = time.perf_counter()
            if delay:
                time.sleep(delay)
            try:
                result = fn(**args)
            except Exception as exc:
                self._tool(tool_name, args, None, f"{type(exc).__name__}: {exc}", start)
                raise
            self._tool(tool_name, args, result if isinstance(result, str) else None, None, start)
            return result

        return StructuredTool.from_function(run, name=tool_name, description=fn.__doc__ or tool_name,
                                            args_schema=_schema_of(fn), **kw)

    def _tool(self, name: str, args: dict[str, Any], result: str | None, error: str | None,
              start: float) -> None:
        with self.lock:
            self.tools.append(ToolEvent(_INVOCATION.get(), name, args, result, error, start,
                                        time.perf_counter()))

    def llm_of(self, key: str) -> list[LLMEvent]:
        return [e for e in self.llm if e.invocation == key]

    def tools_of(self, key: str) -> list[ToolEvent]:
        return [e for e in self.tools if e.invocation == key]


def _schema_of(fn: Callable[..., Any]) -> Any:
    from langchain_core.tools import tool

    return tool(fn).args_schema


class HostModel(FakeToolModel):
    """The host agent's LLM: replies from a script and logs what it was sent."""

    host: Any = None

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        nxt = next(self.messages)
        inputs = simple(messages)
        system = [t for r, t in inputs if r == "system"]
        if isinstance(nxt, Exception):
            with self.host.lock:
                self.host.llm.append(LLMEvent(_INVOCATION.get(), inputs, system, AIMessage(""),
                                              f"{type(nxt).__name__}: {nxt}"))
            raise nxt
        self.messages = iter([nxt, *self.messages])
        result = super()._generate(messages, stop, run_manager, **kwargs)
        with self.host.lock:
            self.host.llm.append(LLMEvent(_INVOCATION.get(), inputs, system,
                                          result.generations[0].message))  # type: ignore[arg-type]
        return result

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: Any = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        # Streams like a real chat model: text token by token, then the tool calls as chunks
        # with the usage (langchain-core's fake model does not stream tool calls).
        msg = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
        text = _text(msg.content)
        for tok in [t for t in re.split(r"(\s)", text) if t]:
            if run_manager:
                run_manager.on_llm_new_token(tok)
            yield ChatGenerationChunk(message=AIMessageChunk(content=tok, id=msg.id))
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", id=msg.id, chunk_position="last",
            usage_metadata=getattr(msg, "usage_metadata", None),
            tool_call_chunks=[{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"],
                               "index": i, "type": "tool_call_chunk"}
                              for i, c in enumerate(getattr(msg, "tool_calls", []) or [])]))


# --- running the host under capture -----------------------------------------------------------


@dataclass
class Capture:
    """One way of capturing: the callback handler in the config, or the agent middleware."""

    mode: str  # "handler" | "middleware"
    url: str
    report_problems: bool = False
    _handler: LoopCallbackHandler | None = None
    _middleware: LoopMiddleware | None = None

    def __post_init__(self) -> None:
        if self.mode == "handler":
            self._handler = LoopCallbackHandler(self.url)
        else:
            self._middleware = LoopMiddleware(self.url, report_problems=self.report_problems)

    @property
    def errors(self) -> int:
        if self._handler is not None:
            return self._handler.errors
        assert self._middleware is not None
        return self._middleware.errors

    def agent(self, model: Any, tools: Sequence[Any], *, middleware: Sequence[Any] = (),
              first: bool = True, **kw: Any) -> Any:
        """A ``create_agent`` agent; with the middleware first (outermost) or last."""
        mws = list(middleware)
        if self._middleware is not None:
            mws = [self._middleware, *mws] if first else [*mws, self._middleware]
        return create_agent(model, list(tools), middleware=mws, **kw)

    def config(self, thread_id: str | None = None, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(extra)
        if thread_id is not None:
            cfg.setdefault("configurable", {})["thread_id"] = thread_id
        if self._handler is not None:
            cfg["callbacks"] = [self._handler, *cfg.get("callbacks", [])]
        return cfg

    def flush(self) -> None:
        target = self._handler or self._middleware
        assert target is not None and target.flush(), "capture did not flush"

    def threads(self) -> dict[str, Thread]:
        """Flush, then reopen the store: what is on disk, not in our memory."""
        self.flush()
        return {t.thread_id: t for t in Store(self.url).list_threads()}


# --- comparing ---------------------------------------------------------------------------------


def stored(messages: Sequence[Any]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def expected_tool_order(llm: Sequence[LLMEvent]) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls in the order the model's messages asked for them."""
    return [(c["name"], c["args"]) for e in llm for c in e.output.tool_calls]


def check_turn(
    turn: Turn,
    host: Host,
    key: str,
    *,
    user: str,
    reply: str | None,
    error: str | None = None,
    prompt_shas: Sequence[str | None] | None = None,
    exclude_tools: Sequence[str] = (),
) -> None:
    """Assert that ``turn`` is exactly what invocation ``key`` of the host ran."""
    llm = host.llm_of(key)
    assert turn.user_text == user, (turn.user_text, user)
    # Every LLM call, in order, with what it was sent and what it answered.
    assert len(turn.llm_calls) == len(llm), (
        f"{key}: {len(turn.llm_calls)} LLM calls stored, host made {len(llm)}")
    for call, ev in zip(turn.llm_calls, llm, strict=True):
        assert stored(call.input_messages) == ev.inputs, (key, stored(call.input_messages), ev.inputs)
        if ev.error:
            assert call.error and ev.error.split(":")[0] in call.error, (call.error, ev.error)
            continue
        assert call.error is None, call.error
        out = call.output_messages[-1]
        assert out.content == _text(ev.output.content)
        assert [(c["name"], c["args"]) for c in out.tool_calls] == [
            (c["name"], c["args"]) for c in ev.output.tool_calls]
    # Every tool call in the model's order, with its result or error.
    # (A call the model announced but the host never ran, e.g. the client abandoned the turn
    # first, is not expected; the host's tools log every call they ran.)
    ran = {(t.name, repr(sorted(t.args.items()))): t for t in host.tools_of(key)}

    def key_of(name: str, args: Any) -> tuple[str, str]:
        return name, repr(sorted((args or {}).items()))

    want = [t for t in expected_tool_order(llm) if t[0] not in exclude_tools and key_of(*t) in ran]
    got = [c for c in turn.tool_calls if c.name not in exclude_tools]
    assert [(c.name, c.arguments) for c in got] == want, (key, [(c.name, c.arguments) for c in got], want)
    for c in got:
        t = ran[key_of(c.name, c.arguments)]
        if t.error is not None:
            assert c.error is not None and t.error.split(":", 1)[1].strip() in c.error, (c.error, t.error)
        else:
            assert c.error is None, c.error
            assert c.result == t.result, (c.result, t.result)
    assert turn.reply_text == (reply or ""), (turn.reply_text, reply)
    if error is None:
        assert turn.error is None, turn.error
    else:
        assert turn.error is not None and error in turn.error, (turn.error, error)
    if prompt_shas is not None:
        got_shas = [c.prompt_version.sha256 if c.prompt_version else None for c in turn.llm_calls]
        assert got_shas == list(prompt_shas), (got_shas, list(prompt_shas))


def text_sha(text: str) -> str:
    return sha256_text(text)
