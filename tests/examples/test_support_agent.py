"""The Acme Pay example agent: factory, prompt-driven simulator behaviour, planted defects, traffic."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from examples.support_agent import (
    DEFAULT_PROMPT_DIR,
    V1_PROMPT_DIR,
    SupportSimulatorModel,
    banking77_path,
    build_agent,
    simulate,
)
from examples.support_agent.agent import DEFAULT_CONFIG, load_config, trim_to_last_turns
from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.errors import ConfigError
from loop_middleware.prompts import sha256_text

REFUND_POLICY = """
## Refund policy
- Card transactions can be refunded within 60 days when the customer was charged twice or the
  merchant refund never arrived.
- Look the transaction up with `lookup_order`, then call `request_refund(order_id, reason)`.
- Tell the customer the money is back on their card within 5-7 business days.
"""
GROUNDING = "\n- If `search_kb` finds nothing, say you could not find it in the help center; never guess.\n"
ID = "AP-10101"  # a card order in data/orders.json


def prompts_copy(tmp_path: Path, src: Path = DEFAULT_PROMPT_DIR, extra: str = "") -> Path:
    """A candidate prompt directory: a copy of ``src`` with ``extra`` appended to support.md."""
    dst = tmp_path / f"prompts-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(src, dst)
    if extra:
        p = dst / "support.md"
        p.write_text(p.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return dst


def chat(graph: Any, thread_id: str, *texts: str) -> list[dict[str, Any]]:
    """Send ``texts`` as successive user turns; each turn's reply and tool messages."""
    cfg: Any = {"configurable": {"thread_id": thread_id}}
    out = []
    for text in texts:
        msgs = graph.invoke({"messages": [("user", text)]}, cfg)["messages"]
        start = max(i for i, m in enumerate(msgs) if isinstance(m, HumanMessage))
        turn = msgs[start + 1 :]
        out.append({
            "reply": turn[-1].content,
            "tools": [tc["name"] for m in turn if isinstance(m, AIMessage) for tc in m.tool_calls],
            "results": {m.name: m.content for m in turn if isinstance(m, ToolMessage)},
            "sent": msgs,
        })
    return out


# --- the factory ---------------------------------------------------------------------------------


def test_factory_builds_a_multi_turn_graph_from_a_prompt_dir(tmp_path: Path) -> None:
    graph = build_agent(prompts_copy(tmp_path))
    assert {"agent", "tools"} <= set(graph.get_graph().nodes)
    turns = chat(graph, "t", "I am still waiting on my card?", f"It's {ID}.")
    assert "order number" in turns[0]["reply"] and turns[0]["tools"] == []
    # the second turn continues the thread: the question is remembered, the order looked up
    assert turns[1]["tools"] == ["lookup_order"]
    assert ID in turns[1]["reply"] and "status" in turns[1]["reply"]


def test_factory_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prompt directory not found"):
        build_agent(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="prompt file not found"):
        build_agent(tmp_path / "empty")
    bad = tmp_path / "agent.yaml"
    bad.write_text("context_window_turns: 8\ncontex_window: 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(bad)
    bad.write_text("context_window_turns: eight\n")
    with pytest.raises(ConfigError, match="integer"):
        load_config(bad)


def test_config_is_read_from_yaml() -> None:
    cfg = load_config()
    assert cfg.context_window_turns == 8 and cfg.max_tool_retries == 2 and cfg.source == DEFAULT_CONFIG
    assert cfg.kb_dir.is_dir() and cfg.orders_file.is_file()


# --- behaviour follows the prompt text -------------------------------------------------------------


def test_refund_policy_section_changes_behaviour(tmp_path: Path) -> None:
    ask = ("I was charged twice for the same purchase, I want a refund.", "AP-20202")
    without = chat(build_agent(prompts_copy(tmp_path)), "r", *ask)
    assert "can't help with refunds" in without[0]["reply"]
    assert all("request_refund" not in t["tools"] for t in without)

    fixed = chat(build_agent(prompts_copy(tmp_path, extra=REFUND_POLICY)), "r", *ask)
    assert "order number" in fixed[0]["reply"]
    assert fixed[1]["tools"] == ["lookup_order", "request_refund"]
    assert "Refund request RF-" in fixed[1]["reply"]
    # the reply quotes the policy it was given, not a built-in text
    assert "5-7 business days" in fixed[1]["reply"]


def test_simulator_reads_the_prompt_of_each_call_not_state() -> None:
    model = SupportSimulatorModel()
    user = HumanMessage("I need a refund for AP-20202")
    with_policy = model.invoke([SystemMessage("# Bot\n" + REFUND_POLICY), user])
    without = model.invoke([SystemMessage("# Bot\n## Tone\nBe nice."), user])
    again = model.invoke([SystemMessage("# Bot\n" + REFUND_POLICY), user])
    assert [tc["name"] for tc in with_policy.tool_calls] == ["lookup_order"]
    assert without.tool_calls == [] and "can't help with refunds" in str(without.content)
    assert again.tool_calls == with_policy.tool_calls  # deterministic
    assert model._llm_type == "scripted-simulator" and model.model == "acme-support-simulator"
    assert with_policy.usage_metadata is not None
    assert with_policy.usage_metadata["input_tokens"] == (len(str(user.content)) + len("# Bot\n" + REFUND_POLICY)) // 4


def test_empty_kb_is_ungrounded_without_the_instruction_and_grounded_with_it(tmp_path: Path) -> None:
    question = "Which countries are supported for a card?"
    bare = chat(build_agent(prompts_copy(tmp_path)), "k", question)[0]
    assert bare["tools"] == ["search_kb"] and bare["results"]["search_kb"] == "No results"
    assert "couldn't find" not in bare["reply"] and len(bare["reply"]) > 40  # made up from nothing

    grounded = chat(build_agent(prompts_copy(tmp_path, extra=GROUNDING)), "k", question)[0]
    assert grounded["results"]["search_kb"] == "No results"
    assert grounded["reply"] == "I couldn't find that in our help center."


def test_kb_hit_answers_from_the_article(tmp_path: Path) -> None:
    hit = chat(build_agent(prompts_copy(tmp_path)), "h", "How do I change my PIN?")[0]
    assert hit["results"]["search_kb"].startswith("[change-pin]")
    assert "Change or reset your card PIN" in hit["reply"]


def test_context_is_cut_after_eight_turns_and_the_order_number_is_asked_again(tmp_path: Path) -> None:
    fillers = ["How do I change my PIN?", "How long does a SEPA transfer take?",
               "How do I get a virtual card?", "Can I use Apple Pay?", "How do I freeze my card?",
               "How do I exchange USD to GBP?", "How do I turn on auto top-up?", "How do I activate my card?"]
    script = ["Where is my card?", f"My order number is {ID}.", *fillers, "Has my card order shipped yet?"]
    turns = chat(build_agent(prompts_copy(tmp_path)), "long", *script)
    assert ID in turns[1]["reply"]
    assert turns[-1]["reply"] == "I can help with your card order. Could you give me your order number?"
    assert turns[-1]["tools"] == []

    wide = tmp_path / "agent.yaml"
    wide.write_text(DEFAULT_CONFIG.read_text().replace("context_window_turns: 8", "context_window_turns: 20"))
    turns = chat(build_agent(prompts_copy(tmp_path), wide), "long", *script)
    assert turns[-1]["tools"] == ["lookup_order"] and ID in turns[-1]["reply"]


def test_trim_keeps_whole_turns() -> None:
    msgs: list[Any] = []
    for i in range(10):
        msgs += [HumanMessage(f"u{i}"), AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": f"c{i}"}]),
                 ToolMessage("r", tool_call_id=f"c{i}"), AIMessage(f"a{i}")]
    kept = trim_to_last_turns(msgs, 8)
    assert kept[0].content == "u2" and len(kept) == 32
    assert trim_to_last_turns(msgs, 0) == msgs and trim_to_last_turns(msgs[:8], 8) == msgs[:8]


def test_v1_hands_over_to_a_human_v2_refuses(tmp_path: Path) -> None:
    v1 = (V1_PROMPT_DIR / "support.md").read_text()
    v2 = (DEFAULT_PROMPT_DIR / "support.md").read_text()
    assert "## Escalation" in v1 and "## Escalation" not in v2
    ask = "Can I talk to a human, please?"
    old = chat(build_agent(V1_PROMPT_DIR), "e", ask)[0]
    assert old["tools"] == ["handoff_to_human"] and "human agent" in old["reply"]
    new = chat(build_agent(DEFAULT_PROMPT_DIR), "e", ask)[0]
    assert new["tools"] == [] and "not able to transfer you" in new["reply"]


def test_failing_tool_is_retried_then_the_model_apologises(tmp_path: Path) -> None:
    turn = chat(build_agent(prompts_copy(tmp_path)), "f", "Where is my order AP-40404?")[0]
    assert turn["tools"] == ["lookup_order"] * 3  # first call + max_tool_retries (2)
    assert "try again later" in turn["reply"]


# --- traffic ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def banking77_texts() -> set[str]:
    with banking77_path().open(newline="", encoding="utf-8") as f:
        return {row["text"] for row in csv.DictReader(f)}


def test_traffic_lands_in_sqlite_through_the_real_handler(tmp_path: Path, banking77_texts: set[str]) -> None:
    db = f"sqlite:///{tmp_path / 'loop.db'}"
    handler = LoopCallbackHandler(db, emit_spans=False)
    summary = simulate(60, seed=11, prompt_dir=DEFAULT_PROMPT_DIR, callbacks=[handler])
    assert handler.flush()
    assert handler.errors == 0
    threads = {t.thread_id: t for t in Store(db).list_threads()}
    assert set(threads) == set(summary.thread_ids) and len(threads) == 60

    v2_sha = sha256_text((DEFAULT_PROMPT_DIR / "support.md").read_text(encoding="utf-8"))
    for sim in summary.threads:
        t = threads[sim.thread_id]
        assert [turn.user_text for turn in t.turns] == [u for u, _ in sim.transcript]
        assert [turn.reply_text for turn in t.turns] == [r for _, r in sim.transcript]
        assert [c.name for turn in t.turns for c in turn.tool_calls] == list(sim.tool_calls)
        assert {pv.sha256 for turn in t.turns for pv in turn.prompt_versions} == {v2_sha}
        # every customer opens with a real BANKING77 question, verbatim
        assert t.turns[0].user_text in banking77_texts
    tools = {c.name for t in threads.values() for turn in t.turns for c in turn.tool_calls}
    assert {"lookup_order", "search_kb"} <= tools
    assert sum(len(t.turns) for t in threads.values()) == summary.n_turns > 60
    # feedback was written, and it is mostly negative on failed threads
    fb = [f for t in threads.values() for f in t.feedback]
    assert len(fb) == summary.feedback_written > 0
    assert {f.label for f in fb} <= {"thumbs_up", "thumbs_down"}
    # the planted defects show up in the traffic of the current prompt
    fails = summary.failures()
    assert fails["refund_deflected"] > 0 and fails["ungrounded"] > 0


def test_same_seed_same_conversations_other_seed_others() -> None:
    a = simulate(25, seed=5)
    b = simulate(25, seed=5)
    c = simulate(25, seed=6)
    assert [t.transcript for t in a.threads] == [t.transcript for t in b.threads]
    assert [t.feedback for t in a.threads] == [t.feedback for t in b.threads]
    assert [t.transcript for t in a.threads] != [t.transcript for t in c.threads]


def test_fixed_prompt_changes_the_conversations(tmp_path: Path) -> None:
    before = simulate(100, seed=2)
    after = simulate(100, seed=2, prompt_dir=prompts_copy(tmp_path, extra=REFUND_POLICY + GROUNDING))
    assert before.failure_rate("refund_deflected", "refund") > 0.5
    assert after.failure_rate("refund_deflected") == 0
    assert after.failure_rate("ungrounded") < before.failure_rate("ungrounded") / 3
    assert after.resolved_rate > before.resolved_rate
    # same customers (same openings), different conversations
    assert [t.transcript[0][0] for t in before.threads] == [t.transcript[0][0] for t in after.threads]


def test_v1_v2_cohorts_differ_on_escalation() -> None:
    v1 = simulate(100, seed=4, prompt_dir=V1_PROMPT_DIR, thread_prefix="v1")
    v2 = simulate(100, seed=4, prompt_dir=DEFAULT_PROMPT_DIR, thread_prefix="v2")
    assert v1.failure_rate("escalation_refused") == 0
    assert v2.failure_rate("escalation_refused", "wants_human") > 0.8
    assert v1.thread_ids[0] == "v1-00000" and v2.thread_ids[0] == "v2-00000"


def test_behaviours_appear_in_traffic(banking77_texts: set[str]) -> None:
    s = simulate(200, seed=9)
    behaviours = {b.split(":")[0] for t in s.threads for b in t.behaviours}
    assert {"long_thread", "switch_language", "error_log", "temper"} <= behaviours
    long = [t for t in s.threads if "long_thread" in t.behaviours]
    assert long and max(len(t.transcript) for t in long) > 9
    assert s.failure_rate("context_loss") > 0
    logs = [u for t in s.threads if "error_log" in t.behaviours for u, _ in t.transcript if len(u) > 10_000]
    assert logs and all(3500 <= len(u) // 4 <= 4500 for u in logs)
    angry = [u for t in s.threads for u, _ in t.transcript if u.startswith(("THAT'S NOT WHAT I ASKED", "NO. THAT"))]
    assert angry
    assert all(t.transcript[0][0] in banking77_texts for t in s.threads)


def test_missing_dataset_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOP_SHARED_DIR", str(tmp_path))
    assert banking77_path() == tmp_path / "datasets" / "banking77" / "train.csv"
    with pytest.raises(ConfigError, match="BANKING77 not found"):
        simulate(1, seed=0)
