"""Conformance across processes: a host process runs agents under capture and exits without
flushing (capture flushes at interpreter exit); a fresh process reopens the store and compares
it with what the host logged (its own model and tools), as a user reproducing a bug would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loop_middleware import Store

HOST_SCRIPT = textwrap.dedent('''
    import json, sys
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command, interrupt
    from loop_middleware import LoopCallbackHandler
    from tests._fakes import reply, tool_call
    from tests.capture.conformance._host import Capture, Host
    from tests.capture.conformance.test_agents import calls

    url, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    host = Host()
    cap = Capture(mode, url)

    def weather(city: str) -> str:
        """Weather of a city."""
        return f"sunny in {city}"

    def approve(amount: str) -> str:
        """Approve a payment (asks a human)."""
        return f"approved {amount}: {interrupt({'amount': amount})}"

    model = host.model(
        calls(("weather", {"city": "A"}, "a"), ("weather", {"city": "B"}, "b")), reply("A and B: sunny."),
        tool_call("approve", {"amount": "30"}, call_id="p"), reply("Payment approved."))
    agent = cap.agent(model, [host.tool(weather), host.tool(approve)], system_prompt="You help.",
                      checkpointer=InMemorySaver())
    cfg = cap.config("fresh")
    with host.invocation("t1"):
        agent.invoke({"messages": [{"role": "user", "content": "weather A and B"}]}, cfg)
    with host.invocation("t2"):
        agent.invoke({"messages": [{"role": "user", "content": "pay 30"}]}, cfg)
        agent.invoke(Command(resume="yes"), cfg)
    log = {key: {"llm": [[e.inputs, e.output.content, [(c["name"], c["args"]) for c in e.output.tool_calls]]
                         for e in host.llm_of(key)],
                 "tools": [[t.name, t.args, t.result] for t in host.tools_of(key)]}
           for key in ("t1", "t2")}
    open(out, "w").write(json.dumps(log))
    # no flush, no close: capture flushes at interpreter exit
''')


@pytest.mark.parametrize("mode", ["handler", "middleware"])
def test_what_a_host_process_ran_is_what_a_fresh_process_reads(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    log_file = tmp_path / "host.json"
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", HOST_SCRIPT, url, mode, str(log_file)], cwd=root, env=env,
                   check=True, timeout=120)
    log = json.loads(log_file.read_text())
    thread = Store(url).get_thread("fresh")
    assert thread is not None
    assert [t.user_text for t in thread.turns] == ["weather A and B", "pay 30"]
    for turn, key in zip(thread.turns, ("t1", "t2"), strict=True):
        want = log[key]
        assert [[[m.role, m.content] for m in c.input_messages] for c in turn.llm_calls] == [
            e[0] for e in want["llm"]]
        assert [c.output_messages[-1].content for c in turn.llm_calls] == [e[1] for e in want["llm"]]
        announced = [tuple(t) for e in want["llm"] for t in e[2]]
        assert [(c.name, c.arguments) for c in turn.tool_calls] == [(n, a) for n, a in announced]
        results = {(t[0], json.dumps(t[1], sort_keys=True)): t[2] for t in want["tools"]}
        for c in turn.tool_calls:
            assert c.result == results[(c.name, json.dumps(c.arguments, sort_keys=True))]
    assert thread.turns[0].reply_text == "A and B: sunny."
    assert thread.turns[1].reply_text == "Payment approved."
    assert thread.turns[1].metadata["interrupts"][0]["value"] == {"amount": "30"}
    assert all(t.error is None for t in thread.turns)
