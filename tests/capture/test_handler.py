"""LoopCallbackHandler on real LangGraph graphs; assertions on what lands in the database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from loop_middleware import LoopCallbackHandler, Store, load_prompt
from tests._fakes import FakeToolModel, fake_model, reply, tool_call
from tests.conftest import reopen

SYSTEM = "You are the support agent of Acme. Be brief and kind.\n"


@tool
def order_lookup(order_id: str) -> str:
    """Look up an order by id."""
    return f"Order {order_id}: shipped on Monday"


@tool
def flaky_refund(order_id: str) -> str:
    """Request a refund (this backend is down)."""
    raise RuntimeError("refund service unavailable (HTTP 503)")


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(
    model: FakeToolModel, tools: list[Any], system: str = SYSTEM, checkpointer: Any = "memory"
) -> Any:
    """A real StateGraph agent: model node -> tools -> model, with a checkpointer."""
    from langchain_core.messages import SystemMessage

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(system), *state["messages"]])]}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=InMemorySaver() if checkpointer == "memory" else checkpointer)


def run(graph: Any, handler: LoopCallbackHandler, thread_id: str, text: str) -> dict[str, Any]:
    return graph.invoke(
        {"messages": [("user", text)]},
        config={"callbacks": [handler], "configurable": {"thread_id": thread_id}},
    )


def test_multi_turn_thread_with_tools_lands_in_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    prompt_file = tmp_path / "support.md"
    prompt_file.write_text(SYSTEM)
    pv = load_prompt(prompt_file)
    model = fake_model(
        tool_call("order_lookup", {"order_id": "A-17"}),
        reply("Your order A-17 shipped on Monday."),
        reply("You're welcome!"),
    )
    graph = build_graph(model, [order_lookup], system=pv.text)
    handler = LoopCallbackHandler(sqlite_url)
    run(graph, handler, "t-1", "Where is my order A-17?")
    run(graph, handler, "t-1", "Thanks!")
    assert handler.flush()
    handler.close()

    threads = reopen(sqlite_url).list_threads()
    assert [t.thread_id for t in threads] == ["t-1"]
    t = threads[0]
    assert [turn.index for turn in t.turns] == [0, 1]
    first, second = t.turns
    assert first.user_text == "Where is my order A-17?"
    assert first.reply_text == "Your order A-17 shipped on Monday."
    assert [c.name for c in first.tool_calls] == ["order_lookup"]
    assert first.tool_calls[0].arguments == {"order_id": "A-17"}
    assert first.tool_calls[0].result == "Order A-17: shipped on Monday"
    assert len(first.llm_calls) == 2
    call = first.llm_calls[0]
    assert call.prompt_version is not None
    assert call.prompt_version.sha256 == pv.sha256
    assert call.prompt_version.path == str(prompt_file)
    assert call.input_tokens == 20 and call.output_tokens == 5
    assert call.finish_reason == "tool_calls"
    assert call.latency_ms is not None and call.latency_ms >= 0
    # the order of events inside the turn: llm(0) -> tool(1) -> llm(2)
    assert [first.llm_calls[0].seq, first.tool_calls[0].seq, first.llm_calls[1].seq] == [0, 1, 2]
    assert [m.role for m in first.messages] == ["user", "assistant", "tool", "assistant"]
    # the second turn holds only its own user message, not the history
    assert second.user_text == "Thanks!"
    assert second.reply_text == "You're welcome!"
    assert second.tool_calls == []
    assert first.latency_ms is not None and first.ended_at is not None


def test_tool_that_raises_is_recorded_and_host_unaffected(sqlite_url: str) -> None:
    model = fake_model(tool_call("flaky_refund", {"order_id": "9"}), reply("Sorry, refunds are down."))
    graph = build_graph(model, [flaky_refund])
    handler = LoopCallbackHandler(sqlite_url)
    out = run(graph, handler, "t-err", "I want a refund for order 9")
    assert out["messages"][-1].content == "Sorry, refunds are down."
    handler.flush()
    turn = reopen(sqlite_url).get_thread("t-err").turns[0]  # type: ignore[union-attr]
    assert turn.tool_calls[0].name == "flaky_refund"
    assert "refund service unavailable" in (turn.tool_calls[0].error or "")
    assert handler.errors == 0


def test_nested_subgraph_calls_belong_to_the_parent_turn(sqlite_url: str) -> None:
    inner_model = fake_model(reply("inner summary"))

    def summarise(state: State) -> dict[str, Any]:
        return {"messages": [inner_model.invoke(state["messages"])]}

    sub = StateGraph(State)
    sub.add_node("summarise", summarise)
    sub.add_edge(START, "summarise")
    sub.add_edge("summarise", END)
    outer_model = fake_model(reply("outer answer"))

    def answer(state: State) -> dict[str, Any]:
        return {"messages": [outer_model.invoke(state["messages"])]}

    g = StateGraph(State)
    g.add_node("sub", sub.compile())
    g.add_node("answer", answer)
    g.add_edge(START, "sub")
    g.add_edge("sub", "answer")
    g.add_edge("answer", END)
    graph = g.compile(checkpointer=InMemorySaver())
    handler = LoopCallbackHandler(sqlite_url)
    run(graph, handler, "t-sub", "Summarise my account")
    handler.flush()
    threads = reopen(sqlite_url).list_threads()
    assert len(threads) == 1 and len(threads[0].turns) == 1
    turn = threads[0].turns[0]
    assert [c.output_messages[0].content for c in turn.llm_calls] == ["inner summary", "outer answer"]


def test_streaming_produces_the_same_turn(sqlite_url: str) -> None:
    graph = build_graph(fake_model(reply("streamed reply")), [order_lookup])
    handler = LoopCallbackHandler(sqlite_url)
    chunks = list(graph.stream({"messages": [("user", "hello")]},
                               config={"callbacks": [handler], "configurable": {"thread_id": "s"}},
                               stream_mode="messages"))
    assert chunks
    handler.flush()
    turn = reopen(sqlite_url).get_thread("s").turns[0]  # type: ignore[union-attr]
    assert turn.user_text == "hello"
    assert turn.reply_text == "streamed reply"


async def test_fifty_threads_concurrently_with_asyncio_no_mixing(sqlite_url: str) -> None:
    handler = LoopCallbackHandler(sqlite_url)

    async def one(i: int) -> None:
        model = fake_model(
            tool_call("order_lookup", {"order_id": f"O-{i}"}, call_id=f"c{i}"),
            reply(f"order O-{i} is on its way"),
            reply(f"bye {i}"),
        )
        graph = build_graph(model, [order_lookup])
        cfg: Any = {"callbacks": [handler], "configurable": {"thread_id": f"th-{i}"}}
        await graph.ainvoke({"messages": [("user", f"where is O-{i}?")]}, config=cfg)
        await graph.ainvoke({"messages": [("user", f"thanks {i}")]}, config=cfg)

    await asyncio.gather(*(one(i) for i in range(50)))
    assert handler.flush()
    threads = {t.thread_id: t for t in reopen(sqlite_url).list_threads()}
    assert len(threads) == 50
    for i in range(50):
        t = threads[f"th-{i}"]
        assert [turn.user_text for turn in t.turns] == [f"where is O-{i}?", f"thanks {i}"]
        assert t.turns[0].tool_calls[0].arguments == {"order_id": f"O-{i}"}
        assert t.turns[0].tool_calls[0].result == f"Order O-{i}: shipped on Monday"
        assert t.turns[0].reply_text == f"order O-{i} is on its way"
        assert t.turns[1].reply_text == f"bye {i}"


def test_huge_and_non_ascii_messages_are_stored_whole(store_url: str) -> None:
    huge = ("Log line: connection reset by peer — ERROR 0x7f\n" * 5000)[:200_000]
    texts = [huge, "我的订单在哪里？请帮我查一下 🙏", "أين طلبي؟ لم يصل بعد", "Ça ne marche pas 😡 !!!"]
    handler = LoopCallbackHandler(store_url)
    for i, text in enumerate(texts):
        graph = build_graph(fake_model(reply(f"réponse {i} — 好的 ✅")), [order_lookup])
        run(graph, handler, f"u-{i}", text)
    assert handler.flush()
    threads = {t.thread_id: t for t in reopen(store_url).list_threads()}
    for i, text in enumerate(texts):
        turn = threads[f"u-{i}"].turns[0]
        assert turn.user_text == text
        assert turn.reply_text == f"réponse {i} — 好的 ✅"
    assert len(threads["u-0"].turns[0].user_text) == 200_000


def test_locked_database_mid_run_host_keeps_working_and_nothing_is_lost(tmp_path: Path) -> None:
    """The database file is made unwritable (an exclusive lock held by another process's
    connection) in the middle of a run: the host carries on at full speed, captured turns go to
    the spool, and once the lock is released every turn is in the database exactly once."""
    import sqlite3

    db = tmp_path / "loop.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    handler = LoopCallbackHandler(store)
    handler.recorder.writer.retry_interval = 0.1
    store.engine.pool.dispose()
    graph = build_graph(fake_model(*[reply(f"answer {i}") for i in range(10)]), [order_lookup])
    run(graph, handler, "lock", "turn 0")
    assert handler.flush()

    blocker = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        from sqlalchemy import event

        @event.listens_for(store.engine, "connect")
        def short_timeout(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=50")

        store.engine.pool.dispose()
        for i in range(1, 5):
            out = run(graph, handler, "lock", f"turn {i}")
            assert out["messages"][-1].content == f"answer {i}"
        assert handler.flush(timeout=10) is False  # spooled, not yet in the database
        assert handler.recorder.writer.stats.spooled > 0
        assert handler.recorder.writer.spool_files
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    run(graph, handler, "lock", "turn 5")
    assert handler.flush(timeout=20)
    turns = reopen(url).get_thread("lock").turns  # type: ignore[union-attr]
    assert [t.user_text for t in turns] == [f"turn {i}" for i in range(6)]
    assert [t.reply_text for t in turns] == [f"answer {i}" for i in range(6)]
    assert handler.recorder.writer.spool_files == []


def test_dead_database_never_raises_into_the_host(tmp_path: Path) -> None:
    # A PostgreSQL URL where nothing listens: the host's answers are unaffected.
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none", create=False)
    handler = LoopCallbackHandler(store)
    handler.recorder.writer.spool_path = tmp_path / "spool.jsonl"
    graph = build_graph(fake_model(reply("still answering")), [order_lookup])
    out = run(graph, handler, "dead", "hello?")
    assert out["messages"][-1].content == "still answering"
    assert handler.flush(timeout=10) is False
    spooled = "".join(p.read_text() for p in handler.recorder.writer.spool_files)
    assert spooled.count("\n") >= 4  # thread, turn (start, end), llm_call rows
    assert "hello?" in spooled and "still answering" in spooled


def test_explicit_thread_id_and_new_ids(sqlite_url: str) -> None:
    graph = build_graph(fake_model(reply("one"), reply("two"), reply("three")), [order_lookup],
                        checkpointer=None)
    fixed = LoopCallbackHandler(sqlite_url, thread_id="given")
    graph.invoke({"messages": [("user", "a")]}, config={"callbacks": [fixed]})
    fixed.flush()
    anon = LoopCallbackHandler(sqlite_url)
    graph.invoke({"messages": [("user", "b")]}, config={"callbacks": [anon]})
    graph.invoke({"messages": [("user", "c")]}, config={"callbacks": [anon]})
    anon.flush()
    ids = [t.thread_id for t in reopen(sqlite_url).list_threads()]
    assert "given" in ids
    assert len(ids) == 3 and len(set(ids)) == 3


def test_model_invoked_directly_is_a_turn(sqlite_url: str) -> None:
    handler = LoopCallbackHandler(sqlite_url)
    model = fake_model(reply("direct"))
    model.invoke("hi there", config={"callbacks": [handler], "metadata": {"thread_id": "direct"}})
    handler.flush()
    turn = reopen(sqlite_url).get_thread("direct").turns[0]  # type: ignore[union-attr]
    assert turn.user_text == "hi there"
    assert turn.reply_text == "direct"
    assert len(turn.llm_calls) == 1


async def test_astream_produces_whole_turns(sqlite_url: str) -> None:
    handler = LoopCallbackHandler(sqlite_url)
    graph = build_graph(
        fake_model(tool_call("order_lookup", {"order_id": "S1"}), reply("S1 ships today")), [order_lookup]
    )
    seen = [
        chunk async for chunk in graph.astream(
            {"messages": [("user", "status of S1?")]},
            config={"callbacks": [handler], "configurable": {"thread_id": "as"}},
            stream_mode="updates",
        )
    ]
    assert len(seen) == 3  # agent, tools, agent
    assert handler.flush()
    turn = reopen(sqlite_url).get_thread("as").turns[0]  # type: ignore[union-attr]
    assert turn.user_text == "status of S1?"
    assert turn.reply_text == "S1 ships today"
    assert [c.name for c in turn.tool_calls] == ["order_lookup"]
