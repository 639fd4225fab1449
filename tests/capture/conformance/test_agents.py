"""Conformance: ``create_agent`` agents captured by the callback handler and by the middleware,
sync and async. Each test runs a real agent, reopens the store, and compares every turn with
what the host's own model and tools logged."""

from __future__ import annotations

import asyncio
import operator
import time
from typing import Annotated, Any

import pytest
from langchain.agents.middleware import HumanInTheLoopMiddleware, ModelRetryMiddleware
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from loop_middleware import load_prompt
from tests._fakes import reply, tool_call
from tests.capture.conformance._host import Capture, Host, check_turn, text_sha

SYSTEM = "You are the weather desk of Acme. Answer briefly."


def calls(*specs: tuple[str, dict[str, Any], str]) -> AIMessage:
    """One AI message asking for several tool calls at once."""
    return AIMessage(content="", tool_calls=[
        {"name": n, "args": a, "id": cid, "type": "tool_call"} for n, a, cid in specs])


def invoke(agent: Any, inputs: Any, cfg: dict[str, Any], use_async: bool) -> Any:
    """``invoke`` or ``ainvoke`` (on a fresh event loop)."""
    return asyncio.run(agent.ainvoke(inputs, cfg)) if use_async else agent.invoke(inputs, cfg)


SYNC_ASYNC = pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])


@pytest.fixture(params=["handler", "middleware"])
def capture(request: pytest.FixtureRequest, sqlite_url: str) -> Capture:
    return Capture(request.param, sqlite_url)


class FanState(TypedDict):
    topics: list[str]
    answers: Annotated[list[str], operator.add]


def weather(city: str) -> str:
    """Current weather of a city."""
    return f"sunny in {city}"


def forecast(city: str) -> str:
    """Tomorrow's forecast."""
    return f"rain in {city} tomorrow"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("checkpointer", [True, False], ids=["checkpointer", "no-checkpointer"])
def test_multi_turn_agent_with_tools(capture: Capture, use_async: bool, checkpointer: bool) -> None:
    """Item 1: with or without a checkpointer, every tool call of a turn is stored."""
    host = Host()
    model = host.model(
        tool_call("weather", {"city": "Paris"}, call_id="c1"), reply("Sunny in Paris."),
        tool_call("forecast", {"city": "Paris"}, call_id="c2"), reply("Rain tomorrow."),
    )
    agent = capture.agent(model, [host.tool(weather), host.tool(forecast)], system_prompt=SYSTEM,
                          checkpointer=InMemorySaver() if checkpointer else None)
    cfg = capture.config("w-1")
    history: list[Any] = []
    for key, text in (("t1", "Weather in Paris?"), ("t2", "And tomorrow?")):
        msgs = [*history, {"role": "user", "content": text}] if not checkpointer else [
            {"role": "user", "content": text}]
        with host.invocation(key):
            if use_async:
                out = asyncio.run(agent.ainvoke({"messages": msgs}, cfg))
            else:
                out = agent.invoke({"messages": msgs}, cfg)
        history = out["messages"]
    thread = capture.threads()["w-1"]
    assert len(thread.turns) == 2
    check_turn(thread.turns[0], host, "t1", user="Weather in Paris?", reply="Sunny in Paris.",
               prompt_shas=[text_sha(SYSTEM)] * 2)
    check_turn(thread.turns[1], host, "t2", user="And tomorrow?", reply="Rain tomorrow.")
    assert thread.turns[0].tool_calls[0].result == "sunny in Paris"
    assert capture.errors == 0


def test_fifty_concurrent_invocations_without_thread_id_never_mix(capture: Capture) -> None:
    """Item 2: each invocation without a thread id is its own thread; nothing is mixed."""
    host = Host()

    async def one(i: int) -> None:
        model = host.model(tool_call("weather", {"city": f"City{i}"}, call_id=f"c{i}"),
                           reply(f"Sunny in City{i}."))
        agent = capture.agent(model, [host.tool(weather, delay=0.001 * (i % 5))], system_prompt=SYSTEM)
        with host.invocation(f"i{i}"):
            await agent.ainvoke({"messages": [{"role": "user", "content": f"weather {i}?"}]},
                                capture.config())

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(main())
    threads = capture.threads()
    assert len(threads) == 50
    by_user = {t.turns[0].user_text: t for t in threads.values()}
    for i in range(50):
        t = by_user[f"weather {i}?"]
        assert len(t.turns) == 1
        check_turn(t.turns[0], host, f"i{i}", user=f"weather {i}?", reply=f"Sunny in City{i}.")


@SYNC_ASYNC
def test_parallel_tool_calls_stored_in_message_order(capture: Capture, use_async: bool) -> None:
    """Item 6: parallel tools finish in any order; they are stored in the message's order, with
    their real start and end times."""
    host = Host()
    model = host.model(
        calls(("weather", {"city": "A"}, "ca"), ("weather", {"city": "B"}, "cb"),
              ("weather", {"city": "C"}, "cc")),
        reply("A, B and C are sunny."),
    )
    slow = {"A": 0.12, "B": 0.06, "C": 0.0}

    def timed_weather(city: str) -> str:
        """Weather of a city (slower for A)."""
        time.sleep(slow[city])
        return f"sunny in {city}"

    agent = capture.agent(model, [host.tool(timed_weather, name="weather")], system_prompt=SYSTEM)
    with host.invocation("p"):
        invoke(agent, {"messages": [{"role": "user", "content": "A, B, C?"}]}, capture.config("par"), use_async)
    turn = capture.threads()["par"].turns[0]
    check_turn(turn, host, "p", user="A, B, C?", reply="A, B and C are sunny.")
    assert [c.tool_call_id for c in turn.tool_calls] == ["ca", "cb", "cc"]
    lat = {c.arguments["city"]: c.latency_ms for c in turn.tool_calls}
    assert lat["A"] > 100 and lat["C"] < lat["A"]


def test_tool_errors_handled_by_the_agent(capture: Capture) -> None:
    """A tool that raises a ToolException the agent handles: the call has the error, the turn
    goes on to its reply and is not itself an error."""
    host = Host()

    def cancel(order_id: str) -> str:
        """Cancel an order."""
        raise ToolException(f"order {order_id} already shipped")

    model = host.model(tool_call("cancel", {"order_id": "55"}), reply("Sorry, it already shipped."))
    agent = capture.agent(model, [host.tool(cancel, handle_tool_error=True)], system_prompt=SYSTEM)
    with host.invocation("e"):
        agent.invoke({"messages": [{"role": "user", "content": "cancel 55"}]}, capture.config("te"))
    turn = capture.threads()["te"].turns[0]
    check_turn(turn, host, "e", user="cancel 55", reply="Sorry, it already shipped.")
    assert "already shipped" in (turn.tool_calls[0].error or "")


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_tool_raising_out_of_the_agent_marks_the_turn(capture: Capture, use_async: bool) -> None:
    """Item 7: an exception that escapes the agent marks its turn with the error, and the turn's
    latency ends when it failed, not when the next turn starts."""
    host = Host()

    def explode(order_id: str) -> str:
        """Look up an order (its backend is down)."""
        raise RuntimeError("orders backend down")

    model = host.model(tool_call("explode", {"order_id": "9"}), reply("Hello again."))
    agent = capture.agent(model, [host.tool(explode)], system_prompt=SYSTEM,
                          checkpointer=InMemorySaver())
    cfg = capture.config("boom")
    with host.invocation("x"), pytest.raises(RuntimeError, match="orders backend down"):
        if use_async:
            asyncio.run(agent.ainvoke({"messages": [{"role": "user", "content": "order 9?"}]}, cfg))
        else:
            agent.invoke({"messages": [{"role": "user", "content": "order 9?"}]}, cfg)
    time.sleep(1.5)
    agent2 = capture.agent(host.model(reply("Hello again.")), [], system_prompt=SYSTEM)
    with host.invocation("y"):
        agent2.invoke({"messages": [{"role": "user", "content": "hello"}]}, cfg)
    turns = capture.threads()["boom"].turns
    assert [t.user_text for t in turns] == ["order 9?", "hello"]
    check_turn(turns[0], host, "x", user="order 9?", reply=None, error="orders backend down")
    assert turns[0].latency_ms is not None and turns[0].latency_ms < 1000
    assert turns[0].ended_at is not None and turns[1].started_at is not None
    assert (turns[1].started_at - turns[0].ended_at).total_seconds() > 1.0
    check_turn(turns[1], host, "y", user="hello", reply="Hello again.")


@SYNC_ASYNC
def test_human_in_the_loop_tool_interrupt_resumes_the_same_turn(capture: Capture, use_async: bool) -> None:
    """Item 3: a tool that calls interrupt(), resumed with Command(resume=...): the request is one
    turn (plus the next request's), the interrupt and the resume value are on it, and its latency
    excludes the human's wait."""
    host = Host()

    def refund(order_id: str) -> str:
        """Refund an order (asks a human first)."""
        answer = interrupt({"approve_refund": order_id})
        return f"refund of {order_id}: {answer}"

    model = host.model(tool_call("refund", {"order_id": "7"}), reply("Refund approved."),
                       reply("You're welcome."))
    agent = capture.agent(model, [host.tool(refund)], system_prompt=SYSTEM,
                          checkpointer=InMemorySaver())
    cfg = capture.config("hitl")
    with host.invocation("r"):
        out = invoke(agent, {"messages": [{"role": "user", "content": "refund order 7"}]}, cfg, use_async)
        assert out["__interrupt__"][0].value == {"approve_refund": "7"}
        time.sleep(1.0)  # the human takes their time
        invoke(agent, Command(resume="approved"), cfg, use_async)
    with host.invocation("s"):
        invoke(agent, {"messages": [{"role": "user", "content": "thanks"}]}, cfg, use_async)
    turns = capture.threads()["hitl"].turns
    assert [t.user_text for t in turns] == ["refund order 7", "thanks"]
    check_turn(turns[0], host, "r", user="refund order 7", reply="Refund approved.")
    assert turns[0].tool_calls[0].result == "refund of 7: approved"
    assert turns[0].metadata["interrupts"][0]["value"] == {"approve_refund": "7"}
    assert turns[0].latency_ms is not None and turns[0].latency_ms < 900
    check_turn(turns[1], host, "s", user="thanks", reply="You're welcome.")


@SYNC_ASYNC
def test_human_in_the_loop_middleware_approval(capture: Capture, use_async: bool) -> None:
    """Item 3 with langchain's HumanInTheLoopMiddleware (it interrupts after the model)."""
    host = Host()
    model = host.model(tool_call("weather", {"city": "Oslo"}), reply("Oslo is sunny."),
                       reply("Bye!"))
    agent = capture.agent(model, [host.tool(weather)], system_prompt=SYSTEM,
                          checkpointer=InMemorySaver(),
                          middleware=[HumanInTheLoopMiddleware(interrupt_on={"weather": True})])
    cfg = capture.config("hitl-mw")
    with host.invocation("a"):
        out = invoke(agent, {"messages": [{"role": "user", "content": "Oslo weather?"}]}, cfg, use_async)
        assert "__interrupt__" in out
        time.sleep(1.0)
        invoke(agent, Command(resume={"decisions": [{"type": "approve"}]}), cfg, use_async)
    with host.invocation("b"):
        invoke(agent, {"messages": [{"role": "user", "content": "bye"}]}, cfg, use_async)
    turns = capture.threads()["hitl-mw"].turns
    assert [t.user_text for t in turns] == ["Oslo weather?", "bye"]
    check_turn(turns[0], host, "a", user="Oslo weather?", reply="Oslo is sunny.")
    assert turns[0].latency_ms is not None and turns[0].latency_ms < 900
    if capture.mode == "handler":  # the middleware cannot see another middleware's interrupt
        assert turns[0].metadata["resumes"] == [{"decisions": [{"type": "approve"}]}]
    check_turn(turns[1], host, "b", user="bye", reply="Bye!")


@SYNC_ASYNC
def test_sub_agents_fanned_out_from_a_tool_are_one_turn(capture: Capture, use_async: bool) -> None:
    """Item 4: a tool fans out to two sub-agents (Send); one top-level invocation is one turn
    with all six LLM calls, and the turn ends with the graph's reply."""
    host = Host()

    def research(topic: str) -> str:
        """Look a topic up."""
        return f"notes on {topic}"

    def sub_agent(topic: str) -> Any:
        m = host.model(tool_call("research", {"topic": topic}, call_id=f"r-{topic}"),
                       reply(f"summary of {topic}"))
        return capture.agent(m, [host.tool(research)], system_prompt="You research one topic.")

    agents = {t: sub_agent(t) for t in ("alpha", "beta")}

    def work(state: dict[str, Any]) -> dict[str, Any]:
        out = agents[state["topic"]].invoke({"messages": [{"role": "user", "content": state["topic"]}]})
        return {"answers": [out["messages"][-1].content]}

    g = StateGraph(FanState)
    g.add_node("work", work)
    g.add_conditional_edges(START, lambda s: [Send("work", {"topic": t}) for t in s["topics"]])
    g.add_edge("work", END)
    fan = g.compile()

    def study(topics: str) -> str:
        """Research several comma-separated topics in parallel."""
        out = fan.invoke({"topics": topics.split(","), "answers": []})
        return " | ".join(sorted(out["answers"]))

    model = host.model(tool_call("study", {"topics": "alpha,beta"}), reply("Both are covered."))
    agent = capture.agent(model, [host.tool(study)], system_prompt=SYSTEM)
    with host.invocation("f"):
        invoke(agent, {"messages": [{"role": "user", "content": "study alpha and beta"}]},
                     capture.config("fan"), use_async)
    threads = capture.threads()
    assert list(threads) == ["fan"]
    turns = threads["fan"].turns
    assert len(turns) == 1
    turn = turns[0]
    assert len(turn.llm_calls) == 6
    assert turn.reply_text == "Both are covered."
    assert turn.error is None
    outer = [c for c in turn.tool_calls if c.name == "study"]
    assert outer and outer[0].result == "summary of alpha | summary of beta"
    assert sorted(c.arguments["topic"] for c in turn.tool_calls if c.name == "research") == ["alpha", "beta"]
    assert sorted(c.output_messages[-1].content for c in turn.llm_calls) == sorted(
        [_text_of(e.output) for e in host.llm_of("f")])


def _text_of(m: AIMessage) -> str:
    return m.content if isinstance(m.content, str) else ""


def test_tool_returning_command(capture: Capture) -> None:
    """A tool that returns a ``Command`` updating the state: its message is the result."""
    host = Host()

    @tool
    def remember_cmd(fact: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:  # type: ignore[type-arg]
        """Remember a fact (updates the agent state)."""
        host._tool("remember_cmd", {"fact": fact}, f"noted: {fact}", None, time.perf_counter())
        return Command(update={"messages": [ToolMessage(f"noted: {fact}", tool_call_id=tool_call_id)]})

    model = host.model(tool_call("remember_cmd", {"fact": "likes tea"}), reply("I'll remember."))
    agent = capture.agent(model, [remember_cmd], system_prompt=SYSTEM)
    with host.invocation("c"):
        agent.invoke({"messages": [{"role": "user", "content": "I like tea"}]}, capture.config("cmd"))
    turn = capture.threads()["cmd"].turns[0]
    check_turn(turn, host, "c", user="I like tea", reply="I'll remember.")
    assert turn.tool_calls[0].result == "noted: likes tea"


def test_model_retry_middleware(capture: Capture) -> None:
    """ModelRetryMiddleware: the failed attempt and the retry are both LLM calls of the turn;
    the turn itself succeeds."""
    host = Host()
    model = host.model(TimeoutError("upstream timeout"), reply("Recovered answer."))
    retry = ModelRetryMiddleware(max_retries=2, initial_delay=0.01, jitter=False)
    agent = capture.agent(model, [], system_prompt=SYSTEM, middleware=[retry])
    with host.invocation("m"):
        agent.invoke({"messages": [{"role": "user", "content": "hi"}]}, capture.config("retry"))
    turn = capture.threads()["retry"].turns[0]
    check_turn(turn, host, "m", user="hi", reply="Recovered answer.")
    assert turn.llm_calls[0].error and "upstream timeout" in turn.llm_calls[0].error


def test_dynamic_prompt_middleware_gets_the_version_of_what_was_sent(capture: Capture, tmp_path: Any) -> None:
    """Item 5: a system prompt set by ``@dynamic_prompt`` middleware is versioned by the text the
    model actually received (the registered prompt it renders), wherever the middleware sits."""
    from langchain.agents.middleware import dynamic_prompt

    f = tmp_path / "night.md"
    f.write_text("You are the night-shift desk of Acme. Keep answers under two sentences.\n")
    night = load_prompt(f)

    @dynamic_prompt
    def pick(request: Any) -> str:
        return night.text

    host = Host()
    model = host.model(reply("Night answer."))
    agent = capture.agent(model, [], system_prompt="placeholder day prompt", middleware=[pick])
    with host.invocation("d"):
        agent.invoke({"messages": [{"role": "user", "content": "hello"}]}, capture.config("dyn"))
    turn = capture.threads()["dyn"].turns[0]
    check_turn(turn, host, "d", user="hello", reply="Night answer.", prompt_shas=[night.sha256])
    pv = turn.llm_calls[0].prompt_version
    assert pv is not None and pv.path == str(f)


def test_self_reported_problem_is_a_signal(sqlite_url: str) -> None:
    """``report_problems=True``: the agent gets a report tool and one line of prompt; its report
    is a tool call of the turn and an extracted ``self_report`` signal."""
    from loop_middleware.extract import detect_signals
    from loop_middleware.types import SELF_REPORT_TOOL

    capture = Capture("middleware", sqlite_url, report_problems=True)
    host = Host()
    model = host.model(tool_call(SELF_REPORT_TOOL, {"reason": "no tool can change a delivery address"}),
                       reply("I can't change the address, sorry."))
    agent = capture.agent(model, [host.tool(weather)], system_prompt=SYSTEM)
    with host.invocation("s"):
        agent.invoke({"messages": [{"role": "user", "content": "change my address"}]},
                     capture.config("self"))
    thread = capture.threads()["self"]
    turn = thread.turns[0]
    check_turn(turn, host, "s", user="change my address", reply="I can't change the address, sorry.",
               exclude_tools=[SELF_REPORT_TOOL])
    assert "report_problem" in turn.llm_calls[0].input_messages[0].content
    assert turn.tool_calls[0].name == SELF_REPORT_TOOL
    sigs = [s for s in detect_signals([thread]) if s.kind == "self_report"]
    assert len(sigs) == 1 and sigs[0].turn_index == 0
    assert "delivery address" in sigs[0].evidence


def test_summarization_middleware(capture: Capture) -> None:
    """SummarizationMiddleware: the agent's model call is stored with the summarised history it
    was sent. The summary call itself is made by another middleware's node: the handler records
    it; the middleware, which only sees its own agent's calls, does not."""
    from langchain.agents.middleware import SummarizationMiddleware

    host = Host()
    summariser = host.model(reply("Summary: the user asked about Paris twice."), name="summariser")
    model = host.model(reply("Sunny."), reply("Still sunny."), reply("Yes, sunny."))
    summarize = SummarizationMiddleware(model=summariser, trigger=("messages", 4), keep=("messages", 2))
    agent = capture.agent(model, [], system_prompt=SYSTEM, middleware=[summarize],
                          checkpointer=InMemorySaver())
    cfg = capture.config("sum")
    for key, text in (("a", "Paris?"), ("b", "Paris again?"), ("c", "And now?")):
        with host.invocation(key):
            agent.invoke({"messages": [{"role": "user", "content": text}]}, cfg)
    turns = capture.threads()["sum"].turns
    assert [t.user_text for t in turns] == ["Paris?", "Paris again?", "And now?"]
    summary_calls = [e for e in host.llm_of("c") if e.output.content.startswith("Summary")]
    assert len(summary_calls) == 1
    stored_summary = [c for c in turns[2].llm_calls if c.output_messages[-1].content.startswith("Summary")]
    assert len(stored_summary) == (1 if capture.mode == "handler" else 0)
    agent_call = next(c for c in turns[2].llm_calls if c.output_messages[-1].content == "Yes, sunny.")
    assert any("Summary: the user asked about Paris twice." in m.content for m in agent_call.input_messages)
    assert turns[2].reply_text == "Yes, sunny."
