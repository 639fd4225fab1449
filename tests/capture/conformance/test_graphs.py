"""Conformance: hand-built LangGraph graphs (StateGraph, subgraphs, ``Send``, interrupts, the
functional API) and streaming, captured by the callback handler; streaming and abandoned
streams through both capture modes."""

from __future__ import annotations

import asyncio
import gc
import operator
import time
from typing import Annotated, Any

import pytest
from langchain_core.messages import AnyMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from loop_middleware import LoopCallbackHandler
from tests._fakes import reply, tool_call
from tests.capture.conformance._host import Capture, Host, HostModel, check_turn

SYSTEM = "You are the support agent of Acme. Be brief."
SYNC_ASYNC = pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])


def invoke(graph: Any, inputs: Any, cfg: Any, use_async: bool) -> Any:
    """``invoke`` or ``ainvoke`` (on a fresh event loop)."""
    return asyncio.run(graph.ainvoke(inputs, cfg)) if use_async else graph.invoke(inputs, cfg)


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def order(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: shipped"


def refund(order_id: str) -> str:
    """Refund an order (the backend is down)."""
    raise RuntimeError("refund service unavailable (HTTP 503)")


def agent_graph(model: HostModel, tools: list[Any], checkpointer: Any = None) -> Any:
    """A hand-built agent: model -> ToolNode(handle_tool_errors) -> model."""

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=checkpointer)


def test_toolnode_handle_tool_errors(sqlite_url: str) -> None:
    cap = Capture("handler", sqlite_url)
    host = Host()
    model = host.model(tool_call("refund", {"order_id": "3"}), reply("The refund service is down."))
    graph = agent_graph(model, [host.tool(refund)])
    with host.invocation("a"):
        graph.invoke({"messages": [("user", "refund order 3")]}, cap.config("tn"))
    turn = cap.threads()["tn"].turns[0]
    check_turn(turn, host, "a", user="refund order 3", reply="The refund service is down.")
    assert "HTTP 503" in (turn.tool_calls[0].error or "")


@SYNC_ASYNC
@pytest.mark.parametrize("how", ["same-handler", "new-config", "new-handler"])
def test_interrupt_in_a_node_resumed_on_the_same_thread(sqlite_url: str, how: str, use_async: bool) -> None:
    """Item 3: ``interrupt()`` in a node, resumed with ``Command(resume=...)`` by the same handler,
    the same handler in a new config, or a new handler on the same store: two requests are two
    turns; the resumed work, the interrupt and the resume value belong to the first."""
    host = Host()
    model = host.model(reply("Refund of order 7 approved."), reply("Anything else?"))

    def ask(state: State) -> dict[str, Any]:
        decision = interrupt({"approve": "refund order 7"})
        return {"messages": [model.invoke([SystemMessage(f"{SYSTEM} Decision: {decision}"),
                                           *state["messages"]])]}

    g = StateGraph(State)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    graph = g.compile(checkpointer=InMemorySaver())
    first = LoopCallbackHandler(sqlite_url)
    cfg = {"callbacks": [first], "configurable": {"thread_id": "h"}}
    with host.invocation("r"):
        out = invoke(graph, {"messages": [("user", "refund order 7 please")]}, cfg, use_async)
        assert out["__interrupt__"][0].value == {"approve": "refund order 7"}
        time.sleep(0.8)
        second = first if how != "new-handler" else LoopCallbackHandler(sqlite_url)
        cfg2 = cfg if how == "same-handler" else {"callbacks": [second], "configurable": {"thread_id": "h"}}
        invoke(graph, Command(resume="yes"), cfg2, use_async)
    with host.invocation("n"):
        invoke(graph, {"messages": [("user", "thanks")]}, cfg2, use_async)
        invoke(graph, Command(resume="n/a"), cfg2, use_async)
    assert first.flush() and second.flush()
    cap = Capture("handler", sqlite_url)
    turns = cap.threads()["h"].turns
    assert [t.user_text for t in turns] == ["refund order 7 please", "thanks"]
    check_turn(turns[0], host, "r", user="refund order 7 please", reply="Refund of order 7 approved.")
    assert turns[0].metadata["interrupts"][0]["value"] == {"approve": "refund order 7"}
    assert turns[0].metadata["resumes"] == ["yes"]
    assert turns[0].latency_ms is not None and turns[0].latency_ms < 700
    check_turn(turns[1], host, "n", user="thanks", reply="Anything else?")


@SYNC_ASYNC
def test_subgraph_and_send_fan_out_are_one_turn(sqlite_url: str, use_async: bool) -> None:
    """Item 4 (handler): a subgraph node and a ``Send`` fan-out to parallel workers, each with its
    own LLM call: one top-level invocation is one turn with every call and the graph's reply."""
    host = Host()
    workers = {t: host.model(reply(f"notes on {t}"), name=f"worker-{t}") for t in ("a", "b", "c")}
    summary = host.model(reply("summary of a, b, c"))
    final = host.model(reply("Here is your report."))

    class Fan(TypedDict):
        messages: Annotated[list[AnyMessage], add_messages]
        notes: Annotated[list[str], operator.add]

    def work(state: dict[str, Any]) -> dict[str, Any]:
        return {"notes": [workers[state["topic"]].invoke(f"research {state['topic']}").content]}

    def summarise(state: Fan) -> dict[str, Any]:
        return {"messages": [summary.invoke("; ".join(sorted(state["notes"])))]}

    sub = StateGraph(Fan)
    sub.add_node("summarise", summarise)
    sub.add_edge(START, "summarise")
    sub.add_edge("summarise", END)

    def answer(state: Fan) -> dict[str, Any]:
        return {"messages": [final.invoke(state["messages"])]}

    g = StateGraph(Fan)
    g.add_node("work", work)
    g.add_node("sub", sub.compile())
    g.add_node("answer", answer)
    g.add_conditional_edges(START, lambda s: [Send("work", {"topic": t}) for t in ("a", "b", "c")])
    g.add_edge("work", "sub")
    g.add_edge("sub", "answer")
    g.add_edge("answer", END)
    graph = g.compile(checkpointer=InMemorySaver())
    cap = Capture("handler", sqlite_url)
    with host.invocation("f"):
        invoke(graph, {"messages": [("user", "report on a, b, c")], "notes": []}, cap.config("fan"), use_async)
    threads = cap.threads()
    assert list(threads) == ["fan"] and len(threads["fan"].turns) == 1
    turn = threads["fan"].turns[0]
    assert turn.user_text == "report on a, b, c"
    assert len(turn.llm_calls) == 5
    assert sorted(c.output_messages[-1].content for c in turn.llm_calls) == sorted(
        e.output.content for e in host.llm_of("f"))  # type: ignore[misc]
    assert turn.reply_text == "Here is your report."
    assert turn.error is None


def test_handler_attached_twice_records_each_turn_once(sqlite_url: str) -> None:
    """Item 9: ``with_config(callbacks=[h])`` plus ``h`` in the invocation's config."""
    host = Host()
    handler = LoopCallbackHandler(sqlite_url)
    model = host.model(tool_call("order", {"order_id": "1"}), reply("It shipped."), reply("Bye."))
    graph = agent_graph(model, [host.tool(order)], checkpointer=InMemorySaver()).with_config(
        callbacks=[handler])
    cfg = {"callbacks": [handler], "configurable": {"thread_id": "dup"}}
    with host.invocation("a"):
        graph.invoke({"messages": [("user", "order 1?")]}, cfg)
    with host.invocation("b"):
        graph.invoke({"messages": [("user", "bye")]}, cfg)
    assert handler.flush()
    turns = Capture("handler", sqlite_url).threads()["dup"].turns
    assert len(turns) == 2
    check_turn(turns[0], host, "a", user="order 1?", reply="It shipped.")
    check_turn(turns[1], host, "b", user="bye", reply="Bye.")


@pytest.fixture(params=["handler", "middleware"])
def capture(request: pytest.FixtureRequest, sqlite_url: str) -> Capture:
    return Capture(request.param, sqlite_url)


def _agent(capture: Capture, host: Host, *replies: Any, checkpointer: Any = None) -> Any:
    if capture.mode == "handler":
        return agent_graph(host.model(*replies), [host.tool(order)], checkpointer=checkpointer)
    return capture.agent(host.model(*replies), [host.tool(order)], system_prompt=SYSTEM,
                         checkpointer=checkpointer)


def test_abandoned_stream_does_not_leak_into_the_next_turn(capture: Capture) -> None:
    """Item 8: the client stops reading a stream after the first chunk; the next turn's user text
    is its own message only, and the abandoned turn says it was abandoned."""
    host = Host()
    agent = _agent(capture, host, tool_call("order", {"order_id": "5"}), reply("Order 5 shipped."),
                   reply("Hello!"), checkpointer=InMemorySaver())
    cfg = capture.config("ab")
    with host.invocation("a"):
        it = agent.stream({"messages": [{"role": "user", "content": "where is order 5?"}]}, cfg,
                          stream_mode="updates")
        next(it)
        del it
        gc.collect()
    with host.invocation("b"):
        agent.invoke({"messages": [{"role": "user", "content": "hello"}]}, cfg)
    turns = capture.threads()["ab"].turns
    assert [t.user_text for t in turns] == ["where is order 5?", "hello"]
    assert turns[0].error is not None
    # The handler sees the stream closed; the middleware learns it when the next turn starts.
    assert turns[0].metadata.get("outcome") == ("abandoned" if capture.mode == "handler" else "unfinished")
    check_turn(turns[0], host, "a", user="where is order 5?", reply=None, error=turns[0].error)
    last = host.llm_of("b")[-1].output
    check_turn(turns[1], host, "b", user="hello", reply=str(last.content))


def test_stream_updates_and_messages(capture: Capture) -> None:
    host = Host()
    agent = _agent(capture, host, tool_call("order", {"order_id": "2"}), reply("Order 2 shipped."))
    with host.invocation("s"):
        chunks = list(agent.stream({"messages": [{"role": "user", "content": "order 2?"}]},
                                   capture.config("st"), stream_mode=["updates", "messages"]))
    assert {mode for mode, _ in chunks} == {"updates", "messages"}
    turn = capture.threads()["st"].turns[0]
    check_turn(turn, host, "s", user="order 2?", reply="Order 2 shipped.")


def test_astream_events_v2(capture: Capture) -> None:
    host = Host()
    agent = _agent(capture, host, tool_call("order", {"order_id": "4"}), reply("Order 4 shipped."))

    async def run() -> list[Any]:
        with host.invocation("e"):
            return [ev async for ev in agent.astream_events(
                {"messages": [{"role": "user", "content": "order 4?"}]}, capture.config("ev"),
                version="v2")]

    events = asyncio.run(run())
    assert any(e["event"] == "on_chat_model_stream" for e in events)
    turn = capture.threads()["ev"].turns[0]
    check_turn(turn, host, "e", user="order 4?", reply="Order 4 shipped.")


@SYNC_ASYNC
def test_functional_api_entrypoint_and_tasks(sqlite_url: str, use_async: bool) -> None:
    host = Host()
    drafter = host.model(reply("draft: your order shipped"))
    polisher = host.model(reply("Your order has shipped."))

    @task
    def draft(question: str) -> str:
        return str(drafter.invoke(question).content)

    @task
    def polish(text: str) -> str:
        return str(polisher.invoke(text).content)

    @entrypoint(checkpointer=InMemorySaver())
    def workflow(question: str) -> str:
        return polish(draft(question).result()).result()

    cap = Capture("handler", sqlite_url)
    with host.invocation("w"):
        assert invoke(workflow, "where is my order?", cap.config("fn"), use_async) == "Your order has shipped."
    turn = cap.threads()["fn"].turns[0]
    check_turn(turn, host, "w", user="where is my order?", reply="Your order has shipped.")
