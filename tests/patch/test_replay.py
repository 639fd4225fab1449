"""The replay guardrail: a fix is tried on the real agent (built from the host's factory) before it
is proposed; a candidate that helps is kept with its numbers, one that breaks things is dropped."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from loop_middleware.patch import AllowedPaths, _edits, make_diff
from loop_middleware.patch._edits import EditContext, ProposeConfig, ProposedEdit
from loop_middleware.patch._propose import SkippedDiagnosis, propose_fixes
from loop_middleware.patch._replay import ReplayGuard, ReplayResult
from loop_middleware.types import Diagnosis, Evidence, Fix, FixKind, Message, Thread, Turn
from tests.patch.conftest import git

PROMPT = """# Shop assistant

You help customers of {company}.

## Shipping
- Standard shipping takes 3 business days.

## Tone
- Be brief.
"""
ALLOWED = AllowedPaths(["prompts/**/*.md", "agent.yaml"])


class PromptFollower(BaseChatModel):
    """A fake chat model whose behaviour depends on the prompt text it is sent (not an LLM)."""

    @property
    def _llm_type(self) -> str:
        return "prompt-follower"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        system = "\n".join(str(m.content) for m in messages if isinstance(m, SystemMessage))
        user = next(str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)).lower()
        if "refund" in user:
            reply = ("Your refund is on its way; expect it within 5 business days."
                     if "## Refund policy" in system else "I'm sorry, I can't help with refunds.")
        elif "ship" in user:
            reply = ("Standard shipping takes 3 business days."
                     if "## Shipping" in system else "I'm sorry, I can't help with that.")
        else:
            reply = "Happy to help. Have a nice day!"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


BUILDS: list[tuple[Path, Path | None]] = []


def factory(prompt_dir: Path, config_path: Path | None = None, *,
            checkpointer: BaseCheckpointSaver[Any] | None = None) -> Any:
    """The host's agent factory: the system prompt is ``prompt_dir/support.md``; the config (if
    any) must be valid YAML with ``enabled: true``."""
    BUILDS.append((Path(prompt_dir), config_path))
    system = (Path(prompt_dir) / "support.md").read_text(encoding="utf-8")
    if config_path is not None:
        settings = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        if not settings.get("enabled", False):
            raise RuntimeError("agent disabled by config")
    llm = PromptFollower()

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [llm.invoke([SystemMessage(system), *state["messages"]], config)]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_edge(START, "agent")
    return g.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())


def thread(tid: str, *exchanges: tuple[str, str]) -> Thread:
    return Thread(thread_id=tid, turns=[
        Turn(id=f"{tid}-{i}", thread_id=tid, index=i, messages=[
            Message(role="user", content=u), Message(role="assistant", content=a)])
        for i, (u, a) in enumerate(exchanges)])


REFUND_THREADS = [
    thread(f"refund-{i}", (f"I want a refund for order {i}", "I'm sorry, I can't help with refunds."),
           ("THAT IS NOT WHAT I ASKED", "I'm sorry, I can't help with that."))
    for i in range(4)
]
SHIPPING_THREADS = [
    thread(f"ship-{i}", (f"How long does shipping take to city {i}?", "Standard shipping takes 3 business days."),
           ("thanks, that's all", "Happy to help. Have a nice day!"))
    for i in range(3)
]


@pytest.fixture
def repo(tmp_path: Path, isolated_git: None) -> Path:
    root = tmp_path / "shop"
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "support.md").write_text(PROMPT)
    (root / "agent.yaml").write_text("enabled: true\ncontext_window_turns: 4\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "init")
    return root


def coverage_diagnosis() -> Diagnosis:
    return Diagnosis(
        id="dx-refund", intent_id="i-refund", intent_name="refund", signal="refusal",
        failure_mode="coverage_gap", summary="'refund' intent gets refusals: 4 sessions (57.1% of sessions)",
        sessions_affected=4, share_of_sessions=4 / 7, rate_in_intent=1.0, rate_elsewhere=0.0,
        lift=8.0, p_value=0.03, q_value=0.03, impact=4.0, confidence=1.0,
        prompt_path="prompts/support.md",
        evidence=[Evidence(thread_id=t.thread_id, turn_index=0, quote=t.turns[0].user_text)
                  for t in REFUND_THREADS],
        details={"missing_terms": ["refund"], "signals": ["frustration", "refusal"],
                 "affected_thread_ids": [t.thread_id for t in REFUND_THREADS]},
    )


def test_a_fix_that_helps_is_kept_with_the_replay_numbers(repo: Path) -> None:
    BUILDS.clear()
    fixes = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED,
                          threads=[*REFUND_THREADS, *SHIPPING_THREADS], replay=ReplayGuard(factory))
    assert len(fixes) == 1
    fix = fixes[0]
    replay = ReplayResult.model_validate(fix.details["replay"])
    assert replay.ran and replay.improved and not replay.worse
    assert (replay.evidence_threads, replay.evidence_failing_before, replay.evidence_failing_after) == (4, 4, 0)
    assert replay.counted_signals == ["refusal"]  # frustration is the user's own (replayed) words
    assert (replay.other_threads, replay.other_passing_before, replay.other_still_passing) == (3, 3, 3)
    assert ("Replay: refusal fired in 4/4 evidence threads before, 0/4 after; "
            "3/3 other threads that passed still pass.") in fix.rationale
    # Both agents built from the factory: the current files, then a temporary candidate copy.
    assert BUILDS[0][0] == repo / "prompts"
    assert BUILDS[1][0] != repo / "prompts" and not BUILDS[1][0].exists()  # cleaned up
    assert (repo / "prompts" / "support.md").read_text() == PROMPT  # the host is untouched


def test_replay_stops_at_the_failing_turn(repo: Path) -> None:
    # The evidence threads' second message reacts to the failure: it is not replayed.
    guard = ReplayGuard(factory)
    fix = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED)[0]
    seen: list[str] = []
    original = PromptFollower._generate

    def spy(self: PromptFollower, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
        seen.append(str(messages[-1].content))
        return original(self, messages, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PromptFollower, "_generate", spy)
        guard.evaluate(fix, coverage_diagnosis(), REFUND_THREADS[:1], repo)
    assert seen == ["I want a refund for order 0", "I want a refund for order 0"]


def worse_edit(d: Diagnosis, repo_dir: Path, ctx: EditContext) -> ProposedEdit:
    """A candidate that adds the refund policy but drops the Shipping section other intents need."""
    text = (repo_dir / "prompts" / "support.md").read_text()
    new = text.replace("## Shipping\n- Standard shipping takes 3 business days.\n\n", "")
    new += "\n## Refund policy\n- Refunds within 30 days.\n"
    return ProposedEdit("prompts/support.md", text, new, FixKind.PROMPT_EDIT, "Refunds", "adds refunds")


def test_a_fix_that_breaks_other_threads_is_dropped(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    skipped: list[SkippedDiagnosis] = []
    cfg = ProposeConfig(required_sections=["Tone"])  # the contract alone would let it through
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_edits.EDITS, "coverage_gap", worse_edit)
        without = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED, config=cfg)
        assert len(without) == 1  # proposed when nothing replays it
        with caplog.at_level(logging.INFO, "loop_middleware.patch"):
            fixes = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED, config=cfg,
                                  threads=[*REFUND_THREADS, *SHIPPING_THREADS],
                                  replay=ReplayGuard(factory), skipped=skipped)
    assert fixes == []
    result = skipped[0].replay
    assert result is not None and result.worse and result.improved  # helps refunds, breaks shipping
    assert result.regressions == ["ship-0", "ship-1", "ship-2"]
    assert result.regression_signals["ship-0"] == ["refusal"]
    assert "3 other thread(s) that passed now fail" in skipped[0].reason
    assert "dropped by the replay" in caplog.text


def test_a_fix_that_makes_the_target_worse_is_dropped(repo: Path) -> None:
    good = (repo / "prompts" / "support.md").read_text() + "\n## Refund policy\n- Within 30 days.\n"
    (repo / "prompts" / "support.md").write_text(good)
    bad_after = good.replace("\n## Refund policy\n- Within 30 days.\n", "\n## Refunds (old)\n- No.\n")
    fix = Fix(id="fix-x", diagnosis_id="dx-refund", kind=FixKind.PROMPT_EDIT,
              target_file="prompts/support.md", diff=make_diff("prompts/support.md", good, bad_after),
              title="t", rationale="", metric="m")
    result = ReplayGuard(factory).evaluate(fix, coverage_diagnosis(), REFUND_THREADS, repo,
                                           other_threads=SHIPPING_THREADS)
    assert result.worse and not result.improved
    assert (result.evidence_failing_before, result.evidence_failing_after) == (0, 4)
    assert "more evidence threads (0 -> 4)" in result.reason


def test_config_change_is_replayed_on_a_patched_copy(repo: Path) -> None:
    d = coverage_diagnosis().model_copy(update={"failure_mode": "context_loss", "id": "dx-ctx",
                                                "details": {"turn_threshold": 2, "signals": ["refusal"]}})
    guard = ReplayGuard(factory, config_path="agent.yaml")
    fix = propose_fixes([d], repo_dir=repo, allowed=ALLOWED, threads=REFUND_THREADS, replay=guard)[0]
    assert fix.kind == FixKind.CONFIG_CHANGE and fix.target_file == "agent.yaml"
    replay = fix.details["replay"]
    assert replay["ran"] and not replay["worse"] and not replay["improved"]  # config is irrelevant here
    # A config change that makes the agent unbuildable is worse, whatever else it does.
    broken = make_diff("agent.yaml", (repo / "agent.yaml").read_text(),
                       "enabled: false\ncontext_window_turns: 4\n")
    bad = fix.model_copy(update={"diff": broken, "id": "fix-broken"})
    result = guard.evaluate(bad, d, REFUND_THREADS, repo)
    assert result.worse and "candidate agent did not build" in result.reason
    assert "agent disabled by config" in result.reason


def test_replay_not_run_keeps_the_fix_unconfirmed(repo: Path) -> None:
    guard = ReplayGuard(factory)
    fix = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED, replay=guard)[0]
    assert fix.details["replay"]["ran"] is False
    assert "Replay: not run (no evidence threads to replay)." in fix.rationale


def test_factory_without_checkpointer_gets_the_history(repo: Path) -> None:
    def bare(prompt_dir: Path) -> Any:
        return factory(prompt_dir).builder.compile()  # no checkpointer: history resent each turn

    fix = propose_fixes([coverage_diagnosis()], repo_dir=repo, allowed=ALLOWED)[0]
    long = thread("long", ("hello", "Happy to help. Have a nice day!"),
                  ("How long does shipping take?", "Standard shipping takes 3 business days."))
    result = ReplayGuard(bare).evaluate(fix, coverage_diagnosis(), REFUND_THREADS[:2], repo,
                                        other_threads=[long])
    assert result.ran and result.improved and result.other_still_passing == 1


# --- integration: the example support agent ---------------------------------------------------------

support_agent = pytest.importorskip("examples.support_agent")


@pytest.fixture
def example_repo(tmp_path: Path, isolated_git: None) -> Path:
    """A host repository holding a copy of the example agent's prompt and harness config."""
    src = Path(support_agent.DEFAULT_PROMPT_DIR).parent
    root = tmp_path / "acme"
    shutil.copytree(src / "prompts", root / "prompts")
    shutil.copy(src / "agent.yaml", root / "agent.yaml")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "init")
    return root


def example_diag(mode: str, signal: str, intent: str, threads: list[Thread], details: dict[str, Any],
                 evidence: list[Evidence] | None = None) -> Diagnosis:
    return Diagnosis(
        id=f"dx-{mode}", intent_id=f"i-{intent}", intent_name=intent, signal=signal,
        failure_mode=mode, summary=f"'{intent}' intent gets {signal}", sessions_affected=len(threads),
        share_of_sessions=0.2, rate_in_intent=0.9, rate_elsewhere=0.05, lift=18.0, p_value=1e-6,
        q_value=1e-5, impact=10.0, confidence=0.9,
        prompt_path="prompts/support.md",
        evidence=evidence or [Evidence(thread_id=t.thread_id, turn_index=0, quote=t.opening_request)
                              for t in threads],
        details={**details, "signals": [signal], "affected_thread_ids": [t.thread_id for t in threads]})


def user_thread(tid: str, *texts: str) -> Thread:
    return Thread(thread_id=tid, turns=[
        Turn(id=f"{tid}-{i}", thread_id=tid, index=i, messages=[Message(role="user", content=t)])
        for i, t in enumerate(texts)])


def test_example_agent_fixes_are_confirmed_by_replay(example_repo: Path) -> None:
    refunds = [user_thread(f"r{i}", q) for i, q in enumerate([
        "I was charged twice for the same purchase, I want a refund",
        "How do I get a refund for something I bought?",
        "I need my money back for order AP-10101",
    ])]
    kb_miss = [user_thread(f"k{i}", q) for i, q in enumerate([
        "What is the minimum age to open an account?",
        "Which countries do you support?",
    ])]
    long = [user_thread(
        "long0", "Where is my card order AP-10101?",
        *[f"How do I change my PIN? (question {i})" for i in range(9)],
        "So where is my order now?")]
    # Threads that went well in production (so they are sampled as "other threads that passed").
    passing = [thread(f"ok{i}", (q, "Here you go: it is done in the app in two steps."))
               for i, q in enumerate(["How do I change my PIN?", "How do I activate my card?",
                                      "Where is my order AP-10101?"])]
    ds = [
        example_diag("coverage_gap", "refusal", "refund", refunds, {"missing_terms": ["refund"]}),
        example_diag("ungrounded_answer", "ungrounded", "kb_miss", kb_miss, {"tool": "search_kb"}),
        example_diag("context_loss", "context_loss", "order_status", long, {"turn_threshold": 8}),
    ]
    guard = ReplayGuard(support_agent.build_agent, config_path="agent.yaml")
    skipped: list[SkippedDiagnosis] = []
    fixes = propose_fixes(ds, repo_dir=example_repo, allowed=ALLOWED,
                          threads=[*refunds, *kb_miss, *long, *passing], replay=guard, skipped=skipped)
    assert skipped == []
    by_mode = {f.details["failure_mode"]: f for f in fixes}
    assert by_mode["coverage_gap"].target_file == "prompts/support.md"
    assert "+## Refund policy" in by_mode["coverage_gap"].diff
    assert by_mode["context_loss"].target_file == "agent.yaml"
    assert "+context_window_turns: 24" in by_mode["context_loss"].diff
    for mode, n in (("coverage_gap", 3), ("ungrounded_answer", 2), ("context_loss", 1)):
        r = ReplayResult.model_validate(by_mode[mode].details["replay"])
        assert (r.evidence_failing_before, r.evidence_failing_after) == (n, 0), (mode, r)
        assert r.other_passing_before == r.other_still_passing == 3, (mode, r)
