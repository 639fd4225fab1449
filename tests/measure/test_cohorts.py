"""Stage 6 over a real store: cohorts by prompt version, keep/revert/wait, guardrails, looks,
revert proposals.

Every store here is filled by running a real LangGraph agent under ``LoopCallbackHandler``. The
host's model is a deterministic fake whose behaviour depends on the *prompt text* it is served
(it deflects refund questions unless the prompt has a refund section, and so on), so a prompt fix
changes the failure rate of the next cohort the way a real fix would. Signals and intents come
from the real ``extract(store, mode="tfidf")``; nothing measured is planted in the store.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from loop_middleware import Fix, FixKind, LoopCallbackHandler, Store, load_prompt
from loop_middleware.diagnose import diagnose
from loop_middleware.errors import ConfigError, ContractViolationError
from loop_middleware.extract import extract
from loop_middleware.measure._cohorts import (
    FixMeasurementResult,
    cohorts_for_fix,
    looks_key,
    measure_all,
    measure_fix,
    propose_revert,
    publish_revert,
    reverse_diff,
    thread_prompt_sha,
)
from loop_middleware.measure._stats import obf_alpha_spent, sequential_boundaries
from loop_middleware.patch import AllowedPaths, apply_unified_diff, make_diff, publish_fix
from loop_middleware.prompts import default_registry, sha256_text

# --- the host agent ------------------------------------------------------------------------------

BASE_PROMPT = "# Acme support\n\nYou are the support agent of Acme. Be brief and kind.\n"
REFUND_SECTION = (
    "\n## Refunds\n\nRefunds go back to the card within 5-7 business days; "
    "use the order id to file them.\n"
)
SCOPE_SECTION = "\n## Scope\n\nOnly answer questions about order tracking.\n"
NO_SHIPPING = "\n## Tone\n\nBe upbeat. Never discuss shipping details.\n"

PREFIXES = ["", "hi, ", "hello, ", "please help, ", "good morning, "]
ITEMS = ["shoes", "jacket", "lamp", "phone case", "backpack", "blender", "headphones"]
REFUND_REASONS = ["it arrived broken", "I was charged twice", "I sent it back",
                  "it is the wrong size", "I changed my mind"]
ORDER_STATUS = ["has not moved in days", "shows nothing", "says delayed",
                "stopped updating", "is stuck at the depot"]


def question(kind: str, i: int) -> str:
    """The ``i``-th simulated user question of a kind: one intent, many wordings."""
    def pick(options: list[str], slot: str) -> str:
        return options[int(_u(f"{kind}/{i}/{slot}") * len(options))]

    prefix, item = pick(PREFIXES, "prefix"), pick(ITEMS, "item")
    if kind == "refund":
        return f"{prefix}I need a refund for my {item}, {pick(REFUND_REASONS, 'why')}"
    return f"{prefix}where is my {item}? the delivery tracking {pick(ORDER_STATUS, 'status')}"


_GOLDEN = 0.6180339887498949


def _u(text: str) -> float:
    """A deterministic uniform number for ordering traffic."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def failure_probability(system: str, user: str) -> float:
    """How likely the host model deflects, given the prompt it is served: the prompt is the cause."""
    if "refund" in user.lower():
        if "## Scope" in system:
            return 0.9
        return 0.08 if "## Refunds" in system else 0.8
    if "Never discuss shipping" in system:
        return 0.75
    return 0.05


class PromptDrivenModel(BaseChatModel):
    """The host's LLM: answers or deflects depending on the system prompt's sections.

    Its "randomness" is a low-discrepancy sequence per kind of question, so a batch of ``n``
    questions served at failure probability ``p`` fails on ``round(n p)`` of them, give or take
    one: the cohorts have the rates the prompt causes, with no sampling luck in the tests.
    """

    seen: dict[str, int]

    @property
    def _llm_type(self) -> str:
        return "prompt-driven-fake"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        system = "\n".join(str(m.content) for m in messages if isinstance(m, SystemMessage))
        user = [str(m.content) for m in messages if isinstance(m, HumanMessage)][-1]
        kind = "refund" if "refund" in user.lower() else "order"
        i = self.seen.get(kind, 0)
        self.seen[kind] = i + 1
        if (0.5 + i * _GOLDEN) % 1.0 < failure_probability(system, user):
            text = "I'm sorry, I can't help with that. Please contact support."
        elif "refund" in user.lower():
            text = "Done: the refund is filed and will be on your card within 5-7 business days."
        else:
            text = "Your package left our warehouse yesterday and arrives in two days."
        msg = AIMessage(content=text, usage_metadata={"input_tokens": 20, "output_tokens": 9,
                                                      "total_tokens": 29})
        return ChatResult(generations=[ChatGeneration(message=msg)])


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_agent(prompt_text: str) -> Any:
    model = PromptDrivenModel(seen={})

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(prompt_text), *state["messages"]])]}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_edge(START, "agent")
    g.add_edge("agent", END)
    return g.compile()


# --- the world: a host repo with a prompt file, traffic captured into a real store ---------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


@dataclass
class World:
    """A host repository, its prompt file and a store with captured traffic."""

    root: Path
    store: Store
    prompt_rel: str = "prompts/support.md"
    handler: LoopCallbackHandler | None = None
    ran: dict[str, list[str]] = field(default_factory=dict)
    """prompt sha -> thread ids served by it."""
    kind_of: dict[str, str] = field(default_factory=dict)
    """thread id -> 'refund' / 'order' (what the simulated user asked)."""
    counter: int = 0

    @property
    def prompt_path(self) -> Path:
        return self.root / self.prompt_rel

    def write_prompt(self, text: str, *, commit: str | None = None) -> str:
        self.prompt_path.parent.mkdir(parents=True, exist_ok=True)
        self.prompt_path.write_text(text, encoding="utf-8")
        if commit:
            git(self.root, "add", self.prompt_rel)
            git(self.root, "commit", "-qm", commit)
        return sha256_text(text)

    def traffic(self, refund: int, order: int, *, prompt_text: str | None = None) -> list[str]:
        """Run ``refund`` + ``order`` single-turn conversations through the agent (interleaved)."""
        text = prompt_text
        if text is None:
            text = load_prompt(self.prompt_path).text  # versions the file, as a host would
        graph = build_agent(text)
        if self.handler is None:
            self.handler = LoopCallbackHandler(self.store, emit_spans=False)
        plan = ["refund"] * refund + ["order"] * order
        plan.sort(key=lambda k: _u(f"{k}{self.counter}{len(plan)}"))  # interleave deterministically
        ids = []
        for kind in plan:
            self.counter += 1
            user = question(kind, self.counter)
            tid = f"t{self.counter:05d}"
            graph.invoke({"messages": [("user", user)]},
                         config={"callbacks": [self.handler], "configurable": {"thread_id": tid}})
            ids.append(tid)
            self.kind_of[tid] = kind
        assert self.handler.flush()
        self.ran.setdefault(sha256_text(text), []).extend(ids)
        return ids

    def extract(self, min_cluster_size: int = 25) -> None:
        # Two intents of ~40 threads each: groups under 25 threads are wordings, not intents.
        extract(self.store, mode="tfidf", min_cluster_size=min_cluster_size)

    def members(self, ids: list[str], kind: str) -> int:
        """How many of ``ids`` the store assigns to the intent of ``kind`` (independent count)."""
        intent, assignments = self.intent_of_kind(kind), self.store.load_assignments()
        return sum(1 for t in ids if assignments.get(t) == intent)

    def intent_of_kind(self, kind: str) -> str:
        """The discovered intent holding most threads of ``kind`` (the test's ground truth)."""
        assignments = self.store.load_assignments()
        votes: dict[str, int] = {}
        for tid, k in self.kind_of.items():
            a = assignments.get(tid)
            if k == kind and a is not None:
                votes[a] = votes.get(a, 0) + 1
        assert votes, f"no intent found for {kind} threads"
        return max(votes, key=lambda a: votes[a])

    def fix(self, new_text: str, *, diagnosis_id: str = "dx-test", signal: str = "refusal",
            intent_kind: str = "refund", sample_size_needed: int = 40,
            kind: FixKind = FixKind.PROMPT_EDIT, fix_id: str = "fix-1", **details: Any) -> Fix:
        old = self.prompt_path.read_text(encoding="utf-8")
        return Fix(
            id=fix_id, diagnosis_id=diagnosis_id, kind=kind, target_file=self.prompt_rel,
            diff=make_diff(self.prompt_rel, old, new_text), title="Teach the agent about refunds",
            rationale="Refund questions are deflected.", metric="refusal rate in refund",
            sample_size_needed=sample_size_needed, status="merged",
            created_at=datetime.now(UTC),
            details={"signal": signal, "intent_id": self.intent_of_kind(intent_kind), **details},
        )

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


def new_world(root: Path) -> World:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    w = World(root=root, store=Store(f"sqlite:///{root.parent / (root.name + '.db')}"))
    w.write_prompt(BASE_PROMPT, commit="prompt v1")
    return w


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = new_world(tmp_path / "host")
    yield w
    w.close()


# --- the keep scenario, shared (built once): diagnose -> fix -> two looks -> keep ---------------


@dataclass
class KeepScenario:
    world: World
    v1: str
    v2: str
    other_sha: str
    other_ids: list[str]
    fix: Fix
    first: FixMeasurementResult
    results: list[FixMeasurementResult]


def build_keep_scenario(root: Path) -> KeepScenario:
    """Capture v1 traffic, extract, diagnose, fix (v2 adds a refund section), capture v2 traffic
    in two batches with one look after each: the whole loop on a real store."""
    default_registry.clear()
    w = new_world(root)
    v1 = sha256_text(BASE_PROMPT)
    w.traffic(refund=40, order=40)
    # Another agent of the host, with its own prompt: its threads belong to no cohort of the fix.
    other_text = "You are Acme's billing assistant.\n"
    other_ids = w.traffic(refund=0, order=6, prompt_text=other_text)
    w.extract()
    store = w.store
    diagnoses = diagnose(store.list_threads(), store.load_signals(), store.load_intents(),
                         store.load_assignments())
    store.save_diagnoses(diagnoses)
    refund = w.intent_of_kind("refund")
    dx = next(d for d in diagnoses if d.intent_id == refund and d.signal in ("refusal", "abandonment"))
    assert dx.prompt_sha256 == v1
    v2_text = BASE_PROMPT + REFUND_SECTION
    opened = datetime.now(UTC)
    fix = Fix(
        id="fix-refunds", diagnosis_id=dx.id, kind=FixKind.PROMPT_EDIT, target_file=w.prompt_rel,
        diff=make_diff(w.prompt_rel, BASE_PROMPT, v2_text), title="Add a refund section",
        rationale=dx.summary, metric=f"{dx.signal} rate", sample_size_needed=40,
        status="opened", created_at=opened, pr_url="https://github.com/acme/agent/pull/7",
        details={"opened_at": opened.isoformat()},
    )
    store.save_fixes([fix])
    # The fix is merged and deployed: the next cohort is served by v2, in two batches.
    w.write_prompt(v2_text, commit="fix: refunds")
    fix = fix.model_copy(update={"status": "merged",
                                 "details": {**fix.details, "merged_at": datetime.now(UTC).isoformat()}})
    store.save_fixes([fix])
    w.traffic(refund=15, order=15)
    w.extract()
    first = measure_fix(fix, store, min_n=10)
    w.traffic(refund=25, order=25)
    w.extract()
    results = measure_all(store, min_n=10)
    return KeepScenario(w, v1, sha256_text(v2_text), sha256_text(other_text), other_ids, fix,
                        first, results)


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeepScenario]:
    scenario = build_keep_scenario(tmp_path_factory.mktemp("keep") / "host")
    yield scenario
    scenario.world.close()


def test_cohorts_are_the_threads_served_by_the_old_and_the_fixed_prompt(keep: KeepScenario) -> None:
    w = keep.world
    threads = w.store.list_threads()
    dx = next(d for d in w.store.load_diagnoses() if d.id == keep.fix.diagnosis_id)
    before, after = cohorts_for_fix(keep.fix, threads, diagnosis=dx)
    assert before.prompt_sha256 == keep.v1 and after.prompt_sha256 == keep.v2
    assert set(before.thread_ids) == set(w.ran[keep.v1]) and len(before.thread_ids) == 80
    assert set(after.thread_ids) == set(w.ran[keep.v2]) and len(after.thread_ids) == 80
    assert not set(keep.other_ids) & (set(before.thread_ids) | set(after.thread_ids))
    # Membership is by the version of the thread's first LLM call.
    by_id = {t.thread_id: t for t in threads}
    assert {thread_prompt_sha(by_id[t]) for t in keep.other_ids} == {keep.other_sha}
    assert before.start is not None and after.start is not None and before.end is not None
    assert before.end <= after.start


def test_real_improvement_is_kept_and_the_fix_status_updated(keep: KeepScenario) -> None:
    [result] = keep.results
    c = result.comparison
    assert c is not None
    assert result.decision == "keep", result.reason
    assert c.after.rate < c.before.rate and c.delta_ci[1] < 0
    w = keep.world
    assert c.before.n == w.members(w.ran[keep.v1], "refund") >= 36
    assert c.after.n == w.members(w.ran[keep.v2], "refund") >= 36
    assert result.guardrails == []
    [stored] = keep.world.store.load_fixes()
    assert stored.status == "kept"
    assert stored.details["decision"] == "keep"
    assert stored.details["measurement"]["after_n"] == c.after.n
    datetime.fromisoformat(stored.details["decided_at"])


def test_looks_are_persisted_and_alpha_spending_applies_on_the_second_look(
    keep: KeepScenario,
) -> None:
    first, [second] = keep.first, keep.results
    assert first.new_look and second.new_look
    assert first.comparison is not None and second.comparison is not None
    history = keep.world.store.get_meta(looks_key(keep.fix.id))
    fractions = [lk["t"] for lk in history["looks"]]
    assert len(fractions) == 2 and fractions[0] < fractions[1] <= 1.0
    assert history["planned_n"] == 40
    assert [lk["after_n"] for lk in history["looks"]] == [first.comparison.after.n,
                                                         second.comparison.after.n]
    assert first.comparison.after.n < second.comparison.after.n
    assert second.looks == fractions and second.comparison.look_index == 2
    # The second look's boundary accounts for the alpha spent on the first: it is the exact
    # group-sequential boundary of the recorded schedule, stricter than a lone test at t2.
    bound = sequential_boundaries(fractions)[-1]
    lone = sequential_boundaries([fractions[1]])[-1]
    assert bound > lone
    assert second.comparison.nominal_alpha < 0.05
    assert second.comparison.alpha_spent == pytest.approx(obf_alpha_spent(fractions[1]))
    # Looking again without new threads re-evaluates the last look; nothing is recorded.
    again = measure_fix(keep.fix.model_copy(update={"status": "kept"}), keep.world.store, min_n=10)
    assert not again.new_look and again.looks == fractions
    assert keep.world.store.get_meta(looks_key(keep.fix.id)) == history


def test_regression_is_reverted_and_a_revert_branch_applies(world: World) -> None:
    w = world
    good = BASE_PROMPT + REFUND_SECTION
    w.write_prompt(good, commit="prompt with refunds")
    w.traffic(refund=40, order=40)
    harmful = good + SCOPE_SECTION
    w.extract()
    fix = w.fix(harmful, fix_id="fix-scope", diagnosis_id="dx-scope")
    w.write_prompt(harmful, commit="fix: scope the agent")  # merged on main
    w.traffic(refund=40, order=40)
    w.extract()
    result = measure_fix(fix, w.store, min_n=10)
    assert result.comparison is not None
    assert result.decision == "revert", result.reason
    assert result.comparison.delta_ci[0] > 0  # worse with confidence

    allowed = AllowedPaths(["prompts/*.md"])
    revert = propose_revert(fix, result, repo_dir=w.root, allowed=allowed)
    assert revert.kind is FixKind.REVERT and revert.details["reverts_fix_id"] == fix.id
    assert revert.metric == fix.metric and revert.expected_direction == "decrease"
    assert apply_unified_diff(harmful, revert.diff) == good
    assert "revert" in revert.rationale and "CI" in revert.rationale
    # A plain publish refuses: the revert removes the section the fix added.
    with pytest.raises(ContractViolationError):
        publish_fix(revert, repo_dir=w.root, allowed=allowed)
    published = publish_revert(revert, repo_dir=w.root, allowed=allowed)
    assert git(w.root, "rev-parse", "--verify", f"refs/heads/{published.branch}")
    # The patch applies to the current main, and its branch holds the previous prompt.
    git(w.root, "apply", "--check", str(published.patch_path))
    assert git(w.root, "show", f"{published.branch}:{w.prompt_rel}") == good.rstrip("\n")
    assert git(w.root, "branch", "--show-current") == "main"
    assert w.prompt_path.read_text() == harmful  # the host checkout is untouched


def test_underpowered_cohorts_wait_and_say_how_many_threads_are_needed(world: World) -> None:
    w = world
    w.traffic(refund=12, order=12)
    w.extract(min_cluster_size=8)
    better = BASE_PROMPT + REFUND_SECTION
    fix = w.fix(better, sample_size_needed=12)
    w.write_prompt(better)
    w.traffic(refund=3, order=3)
    w.extract(min_cluster_size=8)
    result = measure_fix(fix, w.store, min_n=10)
    assert result.decision == "wait"
    assert result.threads_needed is not None and result.threads_needed > 0
    assert not result.new_look  # too small to be a look: the plan's looks are not used up
    assert w.store.get_meta(looks_key(fix.id)) is None


def test_guardrail_flags_a_fix_that_helps_its_intent_but_hurts_another(world: World) -> None:
    w = world
    w.traffic(refund=40, order=40)
    w.extract()
    mixed = BASE_PROMPT + REFUND_SECTION + NO_SHIPPING
    fix = w.fix(mixed)
    w.write_prompt(mixed)
    w.traffic(refund=40, order=40)
    w.extract()
    result = measure_fix(fix, w.store, min_n=10)
    assert result.comparison is not None and result.comparison.decision == "keep"
    order = w.intent_of_kind("order")
    assert [f.intent for f in result.guardrails] == [order]
    assert result.decision == "revert" and "guardrail" in result.reason
    assert result.guardrails[0].delta > 0.05


def test_a_fix_for_a_cause_spanning_intents_is_measured_on_all_of_them(world: World) -> None:
    # The same traffic as the guardrail test, but the fix's diagnosis was merged across both
    # intents (one root cause): both are its target, so neither is a guardrail, and the cohort
    # rates are pooled over both intents.
    w = world
    w.traffic(refund=40, order=40)
    w.extract()
    mixed = BASE_PROMPT + REFUND_SECTION + NO_SHIPPING
    refund, order = w.intent_of_kind("refund"), w.intent_of_kind("order")
    fix = w.fix(mixed, intent_ids=[refund, order])
    w.write_prompt(mixed)
    w.traffic(refund=40, order=40)
    w.extract()
    result = measure_fix(fix, w.store, min_n=10)
    assert result.guardrails == []
    assert result.intent_id == refund and result.intent_name and "+1 more" in result.intent_name
    assert result.comparison is not None
    (rb, ra), (ob, oa) = result.per_intent[refund], result.per_intent[order]
    assert result.comparison.before.n == rb[1] + ob[1] and result.comparison.after.n == ra[1] + oa[1]
    assert result.comparison.before.x == rb[0] + ob[0]
    assert result.comparison.after.x == ra[0] + oa[0]


def test_config_change_is_measured_on_time_bounded_cohorts_and_mix_adjusted(world: World) -> None:
    """A config change (no prompt hash moves) that changes nothing, while traffic shifts to the
    easy intent: the naive overall rate 'improves', the mix-adjusted one does not."""
    w = world
    w.traffic(refund=40, order=20)
    merged_at = datetime.now(UTC)
    w.traffic(refund=10, order=60)
    w.extract()
    fix = w.fix(BASE_PROMPT, kind=FixKind.CONFIG_CHANGE, merged_at=merged_at.isoformat())
    fix = fix.model_copy(update={"target_file": "agent.yaml", "diff": "", "title": "Raise timeout"})
    before, after = cohorts_for_fix(fix, w.store.list_threads())
    assert before.prompt_sha256 is None and after.prompt_sha256 is None
    assert len(before.thread_ids) == 60 and len(after.thread_ids) == 70
    assert set(w.ran[sha256_text(BASE_PROMPT)][:60]) == set(before.thread_ids)
    result = measure_fix(fix, w.store, min_n=10)
    assert result.overall_before is not None and result.overall_after is not None
    naive = result.overall_after - result.overall_before
    assert naive < -0.25  # the mix shift alone
    assert result.mix_adjusted is not None
    assert abs(result.mix_adjusted.delta) < abs(naive) / 2
    assert result.decision == "wait"
    # Without a merge time a config change has no cohorts.
    with pytest.raises(ConfigError, match="merged_at"):
        cohorts_for_fix(fix.model_copy(update={"details": {}}), w.store.list_threads())


def test_measure_fix_accepts_in_memory_data_and_needs_a_signal(world: World) -> None:
    w = world
    w.traffic(refund=20, order=20)
    w.extract()
    better = BASE_PROMPT + REFUND_SECTION
    fix = w.fix(better)
    w.write_prompt(better)
    w.traffic(refund=20, order=20)
    w.extract()
    s = w.store
    data = (s.list_threads(), s.load_signals(), s.load_assignments(), s.load_intents())
    result = measure_fix(fix, data, min_n=10)
    assert result.comparison is not None and result.decision == "keep"
    assert result.per_intent[w.intent_of_kind("refund")][1][1] == w.members(
        w.ran[sha256_text(better)], "refund")
    assert s.get_meta(looks_key(fix.id)) is None  # no store, no history
    with pytest.raises(ConfigError, match="signal"):
        measure_fix(fix.model_copy(update={"details": {}}), data)


def test_reverse_diff_round_trips_with_missing_final_newline() -> None:
    before = "a\nb\nc"
    after = "a\nB\nc\nd"
    diff = make_diff("p.md", before, after)
    assert apply_unified_diff(after, reverse_diff(diff)) == before
