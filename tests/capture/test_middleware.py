"""LoopMiddleware inside a real langchain ``create_agent`` agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.tools import ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver

from loop_middleware import LoopMiddleware, load_prompt
from tests._fakes import fake_model, reply, tool_call
from tests.conftest import reopen


@tool
def kb_search(query: str) -> str:
    """Search the knowledge base."""
    return "" if "refund" in query else f"KB: how to {query}"


@tool
def cancel_order(order_id: str) -> str:
    """Cancel an order."""
    raise ToolException(f"order {order_id} already shipped")


cancel_order.handle_tool_error = True  # the tool reports its error to the model


def test_create_agent_turns_tools_and_prompt_version(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    f = tmp_path / "prompts" / "support.md"
    f.write_text("# Support\nYou help Acme customers.\n")
    system = load_prompt(f)
    mw = LoopMiddleware(sqlite_url)
    agent = create_agent(
        fake_model(
            tool_call("kb_search", {"query": "reset password"}),
            reply("Go to Settings > Security."),
            tool_call("cancel_order", {"order_id": "55"}, call_id="c2"),
            reply("That order already shipped, sorry."),
        ),
        [kb_search, cancel_order],
        system_prompt=system.text,
        middleware=[mw],
        checkpointer=InMemorySaver(),
    )
    cfg = {"configurable": {"thread_id": "mw-1"}}
    agent.invoke({"messages": [{"role": "user", "content": "How do I reset my password?"}]}, cfg)
    agent.invoke({"messages": [{"role": "user", "content": "Cancel order 55"}]}, cfg)
    assert mw.flush()

    t = reopen(sqlite_url).get_thread("mw-1")
    assert t is not None and len(t.turns) == 2
    first, second = t.turns
    assert first.user_text == "How do I reset my password?"
    assert first.reply_text == "Go to Settings > Security."
    assert first.tool_calls[0].name == "kb_search"
    assert first.tool_calls[0].result == "KB: how to reset password"
    assert all(c.prompt_version and c.prompt_version.sha256 == system.sha256 for c in first.llm_calls)
    assert first.llm_calls[0].input_messages[0].role == "system"
    assert first.llm_calls[0].input_tokens == 20
    assert second.user_text == "Cancel order 55"
    assert "already shipped" in (second.tool_calls[0].error or "")
    assert second.reply_text == "That order already shipped, sorry."
    assert mw.recorder.errors == 0


async def test_create_agent_async_parallel_threads(sqlite_url: str) -> None:
    mw = LoopMiddleware(sqlite_url)

    async def one(i: int) -> None:
        agent = create_agent(
            fake_model(tool_call("kb_search", {"query": f"topic {i}"}), reply(f"answer {i}")),
            [kb_search], system_prompt="You are helpful.", middleware=[mw],
            checkpointer=InMemorySaver(),
        )
        await agent.ainvoke({"messages": [{"role": "user", "content": f"question {i}"}]},
                            {"configurable": {"thread_id": f"a-{i}"}})

    await asyncio.gather(*(one(i) for i in range(20)))
    assert mw.flush()
    threads = {t.thread_id: t for t in reopen(sqlite_url).list_threads()}
    assert len(threads) == 20
    for i in range(20):
        turn = threads[f"a-{i}"].turns[0]
        assert turn.user_text == f"question {i}"
        assert turn.reply_text == f"answer {i}"
        assert turn.tool_calls[0].arguments == {"query": f"topic {i}"}
