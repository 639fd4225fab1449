"""Stage 4 tests: cell statistics, each root-cause hypothesis (planted vs control), ranking, ids.

The stores are hand-built support conversations (see the builder below). Every expected number
is computed in the test from the planted data, independently of the code under test (BH by hand,
Fisher from scipy on a table the test builds).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scipy.stats import fisher_exact

from loop_middleware.diagnose._diagnose import DiagnoseConfig, diagnose, diagnosis_id
from loop_middleware.diagnose._hypotheses import stem
from loop_middleware.diagnose._stats import cell_table, significant_cells
from loop_middleware.errors import ConfigError
from loop_middleware.types import (
    Diagnosis,
    Intent,
    LLMCall,
    Message,
    PromptVersion,
    Signal,
    Thread,
    ToolCall,
    Turn,
)

# --- builder -------------------------------------------------------------------------------------


def prompt(text: str, path: str = "prompts/support.md") -> PromptVersion:
    return PromptVersion(sha256=hashlib.sha256(text.encode()).hexdigest(), text=text,
                         name=path.rsplit("/", 1)[-1].split(".")[0], path=path)


SUPPORT_V1 = prompt(
    "You are the support assistant of Acme Home, an online kitchen-appliance shop.\n"
    "Be brief and friendly.\n"
    "## Order tracking\n"
    "Use the track_order tool with the order number to give the carrier and delivery date.\n"
    "## Password reset\n"
    "Send a reset link to the email on file; never ask for the old password.\n"
    "## Shipping address\n"
    "An address can be changed until the parcel ships.\n"
)

SUPPORT_WITH_REFUNDS = prompt(
    SUPPORT_V1.text
    + "## Refunds\n"
    "If an item arrived damaged or broken, or the customer was charged twice, offer a refund: the "
    "money goes back to the original payment method within 5 business days. Refunds are "
    "possible within 30 days of delivery; ask for the order number.\n"
)


def tool(name: str, args: Any, result: str | None = None, error: str | None = None) -> ToolCall:
    return ToolCall(id="", name=name, arguments=args, result=result, error=error)


@dataclass
class T:
    """One turn to build: the user's message, the tools the agent ran, its reply."""

    user: str
    reply: str = "Sure, let me help you with that."
    tools: list[ToolCall] = field(default_factory=list)
    tokens: int | None = None
    prompt: PromptVersion | None = None


def thread(tid: str, *turns: T, prompt: PromptVersion | None = SUPPORT_V1,
           at: datetime | None = None, model: str = "gpt-4o-mini") -> Thread:
    """A captured thread: per turn, the user message, tool round-trips, the final reply, and one
    LLM call tied to the prompt version that served it."""
    built = []
    for i, spec in enumerate(turns):
        pv = spec.prompt or prompt
        msgs = [Message(role="user", content=spec.user)]
        calls = []
        for k, tc in enumerate(spec.tools):
            call = tc.model_copy(update={"id": f"{tid}-t{i}-{k}", "seq": k + 1,
                                         "tool_call_id": f"call-{i}-{k}"})
            calls.append(call)
            msgs.append(Message(role="assistant", content="",
                                tool_calls=[{"id": call.tool_call_id, "name": call.name,
                                             "args": call.arguments}]))
            msgs.append(Message(role="tool", content=call.error or call.result or "",
                                tool_call_id=call.tool_call_id))
        msgs.append(Message(role="assistant", content=spec.reply))
        llm = LLMCall(id=f"{tid}-l{i}", seq=len(calls) + 1, model=model,
                      input_messages=[Message(role="system", content=pv.text if pv else ""),
                                      Message(role="user", content=spec.user)],
                      output_messages=[Message(role="assistant", content=spec.reply)],
                      prompt_versions=[pv] if pv else [], input_tokens=spec.tokens or 900)
        built.append(Turn(id=f"{tid}-{i}", thread_id=tid, index=i, messages=msgs,
                          llm_calls=[llm], tool_calls=calls))
    return Thread(thread_id=tid, turns=built, created_at=at)


def sig(th: Thread, kind: str, turn: int, quote: str | None = None) -> Signal:
    """A signal as the extract stage emits it: quote defaults to the reply (agent-side kinds) or
    the user message (user-side kinds) of the turn."""
    t = th.turns[turn]
    if quote is None:
        quote = t.reply_text if kind in {"refusal", "ungrounded", "latency_outlier"} else t.user_text
    return Signal(thread_id=th.thread_id, kind=kind, turn_index=turn, evidence=quote, confidence=0.9)


def texts_of(th: Thread) -> list[str]:
    """Every stored text of a thread (independent of the code under test)."""
    out = []
    for turn in th.turns:
        out += [m.content for m in turn.messages if m.content and m.role != "system"]
        out += [x for c in turn.tool_calls for x in (c.result, c.error) if x]
    return out


def assert_verbatim(diagnoses: list[Diagnosis], threads: list[Thread]) -> None:
    by_id = {t.thread_id: t for t in threads}
    for d in diagnoses:
        assert 1 <= len(d.evidence) <= 5, d
        for ev in d.evidence:
            assert ev.quote and any(ev.quote in s for s in texts_of(by_id[ev.thread_id])), ev
            # ... and in the turn it points to.
            turn = by_id[ev.thread_id].turns[ev.turn_index]
            assert any(ev.quote in s for s in texts_of(Thread(thread_id="x", turns=[turn]))), ev


INTENTS = {
    "refund": Intent(id="int-refund", name="refund request", category="billing_refund",
                     keyphrases=["refund", "money back"]),
    "password": Intent(id="int-password", name="password reset", category="how_to",
                       keyphrases=["reset password"]),
    "tracking": Intent(id="int-tracking", name="order tracking", category="how_to",
                       keyphrases=["track order", "where is my order"]),
    "warranty": Intent(id="int-warranty", name="warranty question", category="how_to",
                       keyphrases=["warranty"]),
    "cancel": Intent(id="int-cancel", name="cancel subscription", category="churn_risk",
                     keyphrases=["cancel subscription"]),
}

REFUND_ASKS = [
    "I want a refund for order #{n}, the blender arrived broken.",
    "Can I get my money back? The kettle I ordered (#{n}) stopped working after two days.",
    "I was charged twice for order {n}, please refund one of the payments.",
    "How do I get a refund? The toaster from order #{n} came with a cracked lid.",
]
PASSWORD_ASKS = [
    "I forgot my password and can't log in, how do I reset it?",
    "The reset password email never arrived, can you send it again?",
    "My password stopped working after the update, I need to reset my password.",
]
TRACKING_ASKS = [
    "Where is my order #{n}? It was supposed to arrive yesterday.",
    "Can you track order {n} for me? The tracking page shows nothing.",
    "My parcel #{n} has been stuck in transit for a week, where is my order?",
]
WARRANTY_ASKS = [
    "Does the warranty on the X200 blender cover a burnt-out motor?",
    "How long is the warranty for the espresso machine I bought last year?",
    "Is accidental damage covered by the warranty on the stand mixer?",
]
CANCEL_ASKS = [
    "Please cancel my subscription to the coffee bean plan.",
    "How do I cancel subscription renewals? I don't want to be charged next month.",
    "I want to cancel my subscription, the beans are too expensive now.",
]


def ask(pool: list[str], i: int) -> str:
    return pool[i % len(pool)].format(n=40100 + i)


def plain(prefix: str, pool: list[str], n: int, start: int = 0, **kw: Any) -> list[Thread]:
    """``n`` healthy two-turn threads of one intent."""
    return [thread(f"{prefix}-{start + i:03d}",
                   T(ask(pool, start + i), "Happy to help! Here is what you need to do next."),
                   T("Great, thanks for your help!", "You're welcome, have a nice day."), **kw)
            for i in range(n)]


def assign(threads: list[Thread], intent: str) -> dict[str, str | None]:
    return {t.thread_id: INTENTS[intent].id for t in threads}


# --- cell statistics -----------------------------------------------------------------------------


def bh(pvals: list[float]) -> list[float]:
    """Benjamini-Hochberg by hand: q_(i) = min_{j >= i} p_(j) m / j."""
    m = len(pvals)
    order = sorted(range(m), key=lambda i: pvals[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvals[i] * m / rank)
        q[i] = running
    return q


def small_store() -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    refund = [thread(f"r{i}", T(ask(REFUND_ASKS, i), "I'm sorry, I can't help with that request."))
              for i in range(10)]
    pw = plain("p", PASSWORD_ASKS, 12)
    tr = plain("t", TRACKING_ASKS, 8)
    loose = plain("u", ["hello? anyone there"], 2)
    signals = ([sig(t, "refusal", 0) for t in refund[:6]]
               + [sig(t, "frustration", 0) for t in refund[:2]]
               + [sig(pw[0], "refusal", 0, "Happy to help!")]
               + [sig(t, "frustration", 1) for t in pw[:3]]
               + [sig(tr[0], "frustration", 0), sig(tr[0], "frustration", 1)]  # one session, twice
               + [sig(loose[0], "refusal", 0, "Happy to help!")]
               + [sig(t, "language_switch", 0) for t in refund[:5]])
    assignments = {**assign(refund, "refund"), **assign(pw, "password"), **assign(tr, "tracking"),
                   **{t.thread_id: None for t in loose}}
    return refund + pw + tr + loose, signals, assignments


def test_cell_table_counts_rates_fisher_and_bh_match_an_independent_computation() -> None:
    threads, signals, assignments = small_store()
    cells = {(c.intent_id, c.signal): c for c in cell_table(threads, signals, assignments)}
    total = len(threads)  # 32 sessions
    groups: dict[str | None, set[str]] = {}
    for t in threads:
        groups.setdefault(assignments[t.thread_id], set()).add(t.thread_id)
    expected: dict[tuple[str | None, str], tuple[int, int, int, int, float]] = {}
    for kind in ("refusal", "frustration"):
        hit = {s.thread_id for s in signals if s.kind == kind}
        for g, ids in groups.items():
            a, n_in = len(hit & ids), len(ids)
            if a == 0:
                continue
            b, n_out = len(hit - ids), total - n_in
            p = fisher_exact([[a, n_in - a], [b, n_out - b]], alternative="greater")[1]
            expected[(g, kind)] = (a, n_in, b, n_out, p)
    assert set(cells) == set(expected)  # language_switch is no failure: no cell
    keys = sorted(expected, key=str)
    qs = dict(zip(keys, bh([expected[k][4] for k in keys]), strict=True))
    for key, (a, n_in, b, n_out, p) in expected.items():
        c = cells[key]
        assert (c.sessions_affected, c.sessions_in_intent, c.affected_elsewhere,
                c.sessions_elsewhere, c.total_sessions) == (a, n_in, b, n_out, total)
        assert c.share_of_sessions == pytest.approx(a / total)
        assert c.rate_in_intent == pytest.approx(a / n_in)
        assert c.rate_elsewhere == pytest.approx(b / n_out)
        assert c.lift == pytest.approx((a / n_in) / max(b / n_out, 0.5 / n_out))
        assert c.p_value == pytest.approx(p)
        assert c.q_value == pytest.approx(qs[key])
        assert c.impact == pytest.approx(a * {"refusal": 3.0, "frustration": 2.0}[key[1]])
    # The spot checks a reader can do by eye: 6 of 10 refund sessions refused, 18.8% of 32.
    r = cells[("int-refund", "refusal")]
    assert (r.sessions_affected, r.share_of_sessions, r.affected_elsewhere) == (6, 6 / 32, 2)
    # A session with two frustration signals counts once.
    assert cells[("int-tracking", "frustration")].sessions_affected == 1
    # The unassigned threads form their own cell.
    assert cells[(None, "refusal")].sessions_affected == 1


def test_cell_table_skips_unassigned_when_configured_and_rejects_duplicates() -> None:
    threads, signals, assignments = small_store()
    cells = cell_table(threads, signals, assignments, config=DiagnoseConfig(include_unassigned=False))
    assert all(c.intent_id is not None for c in cells)
    with pytest.raises(ConfigError, match="duplicate"):
        cell_table([*threads, threads[0]], signals, assignments)
    assert cell_table([], signals, assignments) == []
    with pytest.raises(ValueError, match="alpha"):
        DiagnoseConfig(alpha=0)


def test_benjamini_hochberg_keeps_many_null_cells_from_becoming_diagnoses() -> None:
    rng = random.Random(7)
    intents = [Intent(id=f"int-{k}", name=f"topic {k}", category="other") for k in range(15)]
    threads: list[Thread] = []
    assignments: dict[str, str | None] = {}
    signals: list[Signal] = []
    kinds = ["frustration", "abandonment", "escalation", "refusal", "tool_error", "stall"]
    for k, intent in enumerate(intents):
        for i in range(20):
            th = thread(f"n{k}-{i}", T(f"I have a question about topic {k}, item {i}.",
                                       "Thanks for reaching out, here is the answer."))
            threads.append(th)
            assignments[th.thread_id] = intent.id
            # Same 10 % rate for every kind in every intent: there is nothing to find.
            signals += [sig(th, kind, 0) for kind in kinds if rng.random() < 0.10]
    cells = cell_table(threads, signals, assignments)
    assert len(cells) >= 60
    # Chance alone produces nominally "significant" cells...
    assert min(c.p_value for c in cells) < 0.05
    # ... that the false-discovery-rate control removes.
    assert significant_cells(cells) == []
    assert diagnose(threads, signals, intents, assignments) == []


def test_ranking_is_by_impact_not_raw_count() -> None:
    slow = [thread(f"s{i}", T(ask(TRACKING_ASKS, i), "Your parcel is with the carrier."))
            for i in range(14)]
    lost = [thread(f"c{i}", T(ask(CANCEL_ASKS, i), "Could you tell me the email on the account?"))
            for i in range(10)]
    rest = plain("p", PASSWORD_ASKS, 30)
    signals = ([sig(t, "latency_outlier", 0) for t in slow[:12]]  # 12 sessions x 0.5 = 6
               + [sig(t, "abandonment", 0) for t in lost[:5]])  # 5 sessions x 3 = 15
    assignments = {**assign(slow, "tracking"), **assign(lost, "cancel"), **assign(rest, "password")}
    threads = slow + lost + rest
    cells = significant_cells(cell_table(threads, signals, assignments))
    assert [(c.signal, c.sessions_affected, c.impact) for c in cells] == [
        ("abandonment", 5, 15.0), ("latency_outlier", 12, 6.0)]
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert [d.signal for d in ds] == ["abandonment", "latency_outlier"]
    assert ds[0].impact == 15.0 and ds[0].sessions_affected < ds[1].sessions_affected
    # A custom severity map reverses the impacts; the abandonment (a coverage gap: the prompt
    # says nothing about cancelling) still leads, because explained diagnoses rank before
    # unexplained ones (the slow tracking answers have no identified cause).
    cfg = DiagnoseConfig(severity={"abandonment": 1.0, "latency_outlier": 1.0})
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments, config=cfg)
    assert [(d.signal, d.failure_mode, d.impact) for d in ds] == [
        ("abandonment", "coverage_gap", 5.0), ("latency_outlier", "unexplained", 12.0)]


# --- (a) coverage gap ----------------------------------------------------------------------------


def refund_store(pv: PromptVersion) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    refund = []
    for i in range(16):
        refused = i < 10
        refund.append(thread(
            f"refund-{i:02d}",
            T(ask(REFUND_ASKS, i),
              "I'm sorry, but I can't help with that request." if refused
              else "I have issued a refund; the money goes back to your card within 5 days."),
            T("That's not acceptable, I want to talk to a real person." if refused
              else "Perfect, thank you!", "I understand. Is there anything else?"),
            prompt=pv))
    pw = plain("pw", PASSWORD_ASKS, 20, prompt=pv)
    tr = plain("tr", TRACKING_ASKS, 20, prompt=pv)
    signals = ([sig(t, "refusal", 0) for t in refund[:10]]
               + [sig(t, "escalation", 1) for t in refund[:7]]
               + [sig(tr[3], "refusal", 0, "Happy to help!")])
    assignments = {**assign(refund, "refund"), **assign(pw, "password"), **assign(tr, "tracking")}
    return refund + pw + tr, signals, assignments


def test_coverage_gap_names_missing_terms_the_prompt_file_and_the_share() -> None:
    threads, signals, assignments = refund_store(SUPPORT_V1)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    gaps = [d for d in ds if d.failure_mode == "coverage_gap"]
    assert len(gaps) == 1
    d = gaps[0]
    # refusal (10 x 3) and escalation (7 x 3) share the cause: one diagnosis, refusal primary.
    assert d.intent_id == "int-refund" and d.signal == "refusal"
    assert d.details["signals"] == ["escalation", "refusal"]
    assert d.sessions_affected == 10  # the 7 escalated sessions are among the 10 refused
    assert d.share_of_sessions == pytest.approx(10 / 56)
    assert d.rate_in_intent == pytest.approx(10 / 16)
    assert d.rate_elsewhere == pytest.approx(1 / 40)
    assert d.impact == pytest.approx(10 * 3.0)
    assert d.p_value == pytest.approx(fisher_exact([[10, 6], [1, 39]], alternative="greater")[1])
    assert d.prompt_sha256 == SUPPORT_V1.sha256 and d.prompt_path == "prompts/support.md"
    assert {"refund", "money back"} <= set(d.details["missing_terms"])
    assert f"prompts/support.md @ {SUPPORT_V1.sha256[:12]}" in d.summary
    assert "'refund'" in d.summary and "'money back'" in d.summary
    assert "10 sessions (17.9% of sessions)" in d.summary
    assert any("refund" in e.quote.lower() or "money back" in e.quote.lower() for e in d.evidence)
    assert_verbatim(ds, threads)


def test_coverage_gap_does_not_fire_when_the_prompt_covers_the_intent() -> None:
    threads, signals, assignments = refund_store(SUPPORT_WITH_REFUNDS)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    refund = [d for d in ds if d.intent_id == "int-refund"]
    assert refund, "the refund cell is still significant"
    assert all(d.failure_mode != "coverage_gap" for d in ds)
    assert refund[0].failure_mode == "unexplained" and refund[0].confidence == 0.0
    assert "cause not identified" in refund[0].summary
    assert_verbatim(ds, threads)


# --- (b) regression ------------------------------------------------------------------------------

SUPPORT_V2 = prompt(SUPPORT_V1.text.replace(
    "Use the track_order tool with the order number to give the carrier and delivery date.\n",
    "Tracking questions are handled by the logistics team.\n"))


def regression_store(escalated_on_v1: int, escalated_on_v2: int
                     ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    threads: list[Thread] = []
    signals: list[Signal] = []
    assignments: dict[str, str | None] = {}
    for i in range(30):
        pv = SUPPORT_V1 if i < 15 else SUPPORT_V2
        on_new = i >= 15
        escalated = (i - 15 < escalated_on_v2) if on_new else (i < escalated_on_v1)
        th = thread(f"trk-{i:02d}",
                    T(ask(TRACKING_ASKS, i),
                      "Let me check that for you." if not escalated
                      else "Tracking questions are handled by our logistics team."),
                    T("Can I just speak to a human agent please?" if escalated else "Thanks!",
                      "Of course, transferring you now." if escalated else "Anytime!"),
                    prompt=pv, at=t0 + timedelta(hours=i))
        threads.append(th)
        assignments[th.thread_id] = INTENTS["tracking"].id
        if escalated:
            signals.append(sig(th, "escalation", 1))
    for i in range(40):
        pv = SUPPORT_V1 if i < 20 else SUPPORT_V2
        th = plain("pw", PASSWORD_ASKS, 1, start=i, prompt=pv, at=t0 + timedelta(hours=i))[0]
        threads.append(th)
        assignments[th.thread_id] = INTENTS["password"].id
        if i in (4, 30):
            signals.append(sig(th, "escalation", 1))
    return threads, signals, assignments


def test_regression_fires_on_the_version_change_and_reports_the_diff() -> None:
    threads, signals, assignments = regression_store(escalated_on_v1=1, escalated_on_v2=9)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    regs = [d for d in ds if d.failure_mode == "regression"]
    assert len(regs) == 1
    d = regs[0]
    assert d.intent_id == "int-tracking" and d.signal == "escalation"
    assert d.prompt_sha256 == SUPPORT_V2.sha256  # the fix target is the new version
    det = d.details
    assert (det["old_sha256"], det["new_sha256"]) == (SUPPORT_V1.sha256, SUPPORT_V2.sha256)
    assert (det["old_affected"], det["old_sessions"], det["new_affected"], det["new_sessions"]) == (
        1, 15, 9, 15)
    assert det["p_value"] == pytest.approx(
        fisher_exact([[9, 6], [1, 14]], alternative="greater")[1])
    assert "-Use the track_order tool" in det["diff"]
    assert "+Tracking questions are handled by the logistics team." in det["diff"]
    assert "from 6.7% to 60%" in d.summary and d.sessions_affected == 10
    # Evidence comes from sessions served by the new version.
    new_ids = {t.thread_id for t in threads[15:30]}
    assert d.evidence and all(e.thread_id in new_ids for e in d.evidence)
    assert_verbatim(ds, threads)


def test_regression_does_not_fire_when_the_rate_is_flat_across_versions() -> None:
    threads, signals, assignments = regression_store(escalated_on_v1=5, escalated_on_v2=5)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-tracking" for d in ds)
    assert all(d.failure_mode != "regression" for d in ds)


def test_regression_diff_is_truncated() -> None:
    threads, signals, assignments = regression_store(escalated_on_v1=1, escalated_on_v2=9)
    cfg = DiagnoseConfig(max_diff_chars=120)
    d = next(d for d in diagnose(threads, signals, list(INTENTS.values()), assignments, config=cfg)
             if d.failure_mode == "regression")
    assert d.details["diff"].endswith("... (diff truncated)\n")
    assert len(d.details["diff"]) <= 120 + len("\n... (diff truncated)\n")


# --- (c) tool failure ----------------------------------------------------------------------------


def tool_store(errors_in_affected: bool, errors_in_unaffected: bool
               ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    timeout = "TimeoutError: order service did not respond within 10s"
    ok = '{"order": "40100", "status": "in transit", "carrier": "DHL", "eta": "2026-03-04"}'
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(20):
        affected = i < 10
        fails = errors_in_affected if affected else errors_in_unaffected
        call = tool("lookup_order", {"order_id": str(40100 + i)},
                    error=timeout if fails else None, result=None if fails else ok)
        th = thread(f"ord-{i:02d}",
                    T(ask(TRACKING_ASKS, i), tools=[call],
                      reply="I'm having trouble pulling up your order right now." if fails
                      else "Your parcel is in transit with DHL and should arrive on March 4."),
                    T("This is ridiculous, I've asked twice already and still no answer!" if affected
                      else "Great, thanks!", "I'm sorry about that."))
        threads.append(th)
        if affected:
            signals.append(sig(th, "frustration", 1))
    others = plain("pw", PASSWORD_ASKS, 40)
    signals.append(sig(others[0], "frustration", 1))
    assignments = {**assign(threads, "tracking"), **assign(others, "password")}
    return threads + others, signals, assignments


def test_tool_failure_names_the_tool_and_its_error_rate() -> None:
    threads, signals, assignments = tool_store(errors_in_affected=True, errors_in_unaffected=False)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    d = next(d for d in ds if d.failure_mode == "tool_failure")
    assert d.intent_id == "int-tracking" and d.signal == "frustration"
    assert d.details["tool"] == "lookup_order"
    assert (d.details["calls"], d.details["failures"], d.details["errors"]) == (20, 10, 10)
    assert d.details["error_rate"] == 0.5
    assert d.details["support"] == 1.0 and d.details["baseline"] == 0.0
    assert "`lookup_order`" in d.summary and "10 of 10 affected sessions" in d.summary
    assert "50% of its 20 calls fail" in d.summary
    assert any("TimeoutError" in e.quote for e in d.evidence)
    assert_verbatim(ds, threads)


@pytest.mark.parametrize(("in_affected", "in_unaffected"), [(False, False), (True, True)])
def test_tool_failure_needs_errors_concentrated_in_the_failing_sessions(
        in_affected: bool, in_unaffected: bool) -> None:
    # No errors at all, or errors in every session of the intent: the tool explains nothing.
    threads, signals, assignments = tool_store(in_affected, in_unaffected)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-tracking" for d in ds)
    assert all(d.failure_mode != "tool_failure" for d in ds)


# --- (d) ungrounded answer -----------------------------------------------------------------------


def warranty_store(empty_search: bool) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    doc = '[{"title": "Warranty terms", "text": "Appliances carry a 2-year limited warranty."}]'
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(16):
        affected = i < 8
        empty = affected and empty_search
        th = thread(f"wty-{i:02d}",
                    T(ask(WARRANTY_ASKS, i),
                      tools=[tool("search_kb", {"query": ask(WARRANTY_ASKS, i)[:40]},
                                  result="No results found" if empty else doc)],
                      reply="Yes, your appliance has a 5-year warranty that covers the motor and "
                            "all accidental damage." if affected
                      else "All our appliances carry a 2-year limited warranty."),
                    T("ok thanks", "You're welcome!"))
        threads.append(th)
        if affected:
            # With an empty search the extract stage flags the answer as ungrounded; without,
            # the user still thumbs it down (the answer is wrong for another reason).
            signals.append(sig(th, "ungrounded" if empty_search else "negative_feedback", 0))
    others = plain("tr", TRACKING_ASKS, 40)
    assignments = {**assign(threads, "warranty"), **assign(others, "tracking")}
    return threads + others, signals, assignments


def test_ungrounded_answer_fires_when_search_was_empty_and_the_agent_answered() -> None:
    threads, signals, assignments = warranty_store(empty_search=True)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    d = next(d for d in ds if d.failure_mode == "ungrounded_answer")
    assert d.intent_id == "int-warranty" and d.signal == "ungrounded"
    assert d.details["tool"] == "search_kb" and d.details["tools"] == {"search_kb": 8}
    assert d.sessions_affected == 8 and d.share_of_sessions == pytest.approx(8 / 56)
    assert "`search_kb` returned nothing (8 of 8 affected sessions" in d.summary
    assert any("5-year warranty" in e.quote for e in d.evidence)
    # The empty search is the ungrounded answer's cause, not a "tool failure".
    assert all(x.failure_mode != "tool_failure" for x in ds)
    assert_verbatim(ds, threads)


def test_ungrounded_answer_does_not_fire_when_search_found_documents() -> None:
    threads, signals, assignments = warranty_store(empty_search=False)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-warranty" for d in ds)
    assert all(d.failure_mode != "ungrounded_answer" for d in ds)


# --- (e) context loss ----------------------------------------------------------------------------

CHAT = ["Hi, I need help with my account settings.", "I changed my email to dana@example.com.",
        "Now I want to change the delivery address too.", "It's 12 Baker Street, London.",
        "Also switch my newsletter preference off.", "And update the phone number to 555-0142.",
        "Can you confirm everything?", "Did you save the new email?", "What about the address?",
        "Ok, anything else I need to do?"]


def long_store(fail_turns: list[int], tokens: dict[int, int] | None = None
               ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(20):
        f = fail_turns[i] if i < len(fail_turns) else None
        turns = []
        for k, text in enumerate(CHAT):
            reply = ("Sorry, could you give me your email address again?" if k == f
                     else "Done, I have updated that for you.")
            turns.append(T(text, reply, tokens=(tokens or {}).get(k) if f is not None else None))
        th = thread(f"acct-{i:02d}", *turns)
        threads.append(th)
        if f is not None:
            signals.append(sig(th, "context_loss", f, "could you give me your email address again?"))
    others = plain("pw", PASSWORD_ASKS, 40)
    signals.append(sig(others[1], "context_loss", 1, "You're welcome, have a nice day."))
    assignments = {**assign(threads, "password"), **assign(others, "tracking")}
    return threads + others, signals, assignments


def test_context_loss_finds_the_turn_knee() -> None:
    threads, signals, assignments = long_store([7, 8, 9, 7, 8, 9, 7, 8, 9, 7])
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    d = next(d for d in ds if d.failure_mode == "context_loss")
    assert d.intent_id == "int-password" and d.signal == "context_loss"
    det = d.details
    assert det["turn_threshold"] == 7 and det["unit"] == "turn"
    # Turns from index 7 on: 10 failing turns; the 10 healthy threads add 3 turns each, the
    # failing ones (7 - 7 + 1) + (8 - 7 + 1) + ... = 4 x 1 + 3 x 2 + 3 x 3 = 19 turns.
    assert (det["late_failures"], det["late_units"]) == (10, 30 + 19)
    assert (det["early_failures"], det["early_units"]) == (0, 20 * 7)
    assert "failures concentrate after 7 turns" in d.summary
    assert_verbatim(ds, threads)


def test_context_loss_near_the_token_limit() -> None:
    # Failures at turn 2 of 10, but every failing call is at 110k of gpt-4o-mini's 128k.
    threads, signals, assignments = long_store([2] * 10, tokens={2: 110_000})
    d = next(d for d in diagnose(threads, signals, list(INTENTS.values()), assignments)
             if d.failure_mode == "context_loss")
    assert d.details["max_input_tokens"] == 110_000 and d.details["context_budget"] == 128_000
    assert d.details["near_limit_support"] == 1.0 and "turn_threshold" not in d.details
    assert "near the context limit (10 of 10 affected sessions" in d.summary


def test_context_loss_does_not_fire_when_failures_are_spread_over_turns() -> None:
    threads, signals, assignments = long_store([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-password" for d in ds)
    assert all(d.failure_mode != "context_loss" for d in ds)


# --- (f) loop stall ------------------------------------------------------------------------------


def stall_store(same_args: bool) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    sub = '{"plan": "coffee beans monthly", "status": "active", "renews": "2026-04-01"}'
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(16):
        affected = i < 8
        n_calls = 4 if affected else 1
        calls = [tool("get_subscription",
                      {"customer_id": "C-1001"} if same_args else {"customer_id": "C-1001", "page": k},
                      result=sub) for k in range(n_calls)]
        th = thread(f"sub-{i:02d}",
                    T(ask(CANCEL_ASKS, i), tools=calls,
                      reply="Let me check your subscription details once more."),
                    T("Hello?? I just want to cancel." if affected else "Thanks, done.",
                      "One moment please."))
        threads.append(th)
        if affected:
            signals.append(sig(th, "abandonment", 1))
    others = plain("tr", TRACKING_ASKS, 40)
    signals.append(sig(others[5], "abandonment", 1))
    assignments = {**assign(threads, "cancel"), **assign(others, "tracking")}
    return threads + others, signals, assignments


def test_loop_stall_fires_on_repeated_identical_tool_calls() -> None:
    threads, signals, assignments = stall_store(same_args=True)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    d = next(d for d in ds if d.failure_mode == "loop_stall")
    assert d.intent_id == "int-cancel" and d.signal == "abandonment"
    assert d.details["tool"] == "get_subscription"
    assert d.details["arguments"] == {"customer_id": "C-1001"}
    assert "`get_subscription` is called up to 4x with the same arguments" in d.summary
    assert "8 of 8 affected sessions" in d.summary
    assert_verbatim(ds, threads)


def test_loop_stall_does_not_fire_when_arguments_differ() -> None:
    threads, signals, assignments = stall_store(same_args=False)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-cancel" for d in ds)
    assert all(d.failure_mode != "loop_stall" for d in ds)


def test_loop_stall_also_uses_stall_signals() -> None:
    threads, signals, assignments = stall_store(same_args=False)
    cancel = [t for t in threads if t.thread_id.startswith("sub-")][:8]
    extra = [sig(t, "stall", 1, "Hello?? I just want to cancel.") for t in cancel]
    d = next(d for d in diagnose(threads, signals + extra, list(INTENTS.values()), assignments)
             if d.failure_mode == "loop_stall")
    # The stall signal names the mode, so it is the diagnosis' primary signal (what a fix is
    # measured on); the abandonment it explains is merged in.
    assert d.signal == "stall" and d.details["signals"] == ["abandonment", "stall"]
    assert "the conversation stalls (8 of 8 affected sessions)" in d.summary


# --- ids, determinism, stemming ------------------------------------------------------------------


def test_ids_are_stable_across_runs_and_input_order() -> None:
    threads, signals, assignments = refund_store(SUPPORT_V1)
    t2, s2, a2 = refund_store(SUPPORT_V1)
    rng = random.Random(3)
    rng.shuffle(s2)
    first = diagnose(threads, signals, list(INTENTS.values()), assignments)
    second = diagnose(t2, s2, list(reversed(INTENTS.values())), a2)
    assert first and [d.model_dump() for d in first] == [d.model_dump() for d in second]
    d = next(d for d in first if d.failure_mode == "coverage_gap")
    assert d.id == diagnosis_id("int-refund", "refusal", "coverage_gap", SUPPORT_V1.sha256)
    # A different prompt version is a different fix target: a different id.
    assert diagnosis_id("int-refund", "refusal", "coverage_gap", SUPPORT_WITH_REFUNDS.sha256) != d.id


def test_stemmer_conflates_inflections() -> None:
    assert {stem(w) for w in ("refund", "refunds", "refunded", "refunding")} == {"refund"}
    assert {stem(w) for w in ("charge", "charges", "charged", "charging")} == {"charg"}
    assert stem("cancelled") == stem("cancel") and stem("policies") == stem("policy")
    assert stem("address") == stem("addresses") and stem("bus") == "bus"


def variable_length_store(abandon_long_only: bool
                          ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    """Account threads of 2 to 10 turns; half are abandoned (the signal sits on the last turn)."""
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(40):
        length = 2 + i % 9 if not abandon_long_only else (9 + i % 2 if i < 20 else 2 + i % 4)
        th = thread(f"var-{i:02d}", *[T(CHAT[k], "Done, I have updated that for you.")
                                      for k in range(length)])
        threads.append(th)
        abandoned = (i < 20) if abandon_long_only else (i % 2 == 0)
        if abandoned:
            signals.append(sig(th, "abandonment", length - 1))
    others = plain("tr", TRACKING_ASKS, 40)
    signals.append(sig(others[2], "abandonment", 1))
    assignments = {**assign(threads, "password"), **assign(others, "tracking")}
    return threads + others, signals, assignments


def test_context_loss_compares_threads_for_end_of_thread_signals() -> None:
    # Abandonment is on the last turn by construction: threads ending late must not look like
    # "failures concentrate late" unless long threads really are abandoned more.
    threads, signals, assignments = variable_length_store(abandon_long_only=False)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.intent_id == "int-password" for d in ds)
    assert all(d.failure_mode != "context_loss" for d in ds)
    threads, signals, assignments = variable_length_store(abandon_long_only=True)
    d = next(d for d in diagnose(threads, signals, list(INTENTS.values()), assignments)
             if d.failure_mode == "context_loss")
    assert d.details["unit"] == "thread"
    # Short threads end at turn index 1-4, the abandoned long ones at 8-9: every N from 5 to 8
    # splits them perfectly, and the earliest such knee is reported.
    assert d.details["turn_threshold"] == 5
    assert (d.details["late_failures"], d.details["late_units"]) == (20, 20)
    assert (d.details["early_failures"], d.details["early_units"]) == (0, 20)


def test_stall_signals_placed_by_a_turn_count_rule_are_not_a_turn_knee() -> None:
    # The stall detector fires at turn max_turns of every long thread: late by construction.
    threads, _, assignments = long_store([])
    long = [t for t in threads if t.thread_id.startswith("acct-")]
    signals = [sig(t, "stall", 8) for t in long[:15]]
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert any(d.signal == "stall" for d in ds)
    assert all(d.failure_mode != "context_loss" for d in ds)


def test_non_verbatim_signal_evidence_is_replaced_by_a_quote_from_the_thread() -> None:
    threads, signals, assignments = refund_store(SUPPORT_WITH_REFUNDS)
    # A sloppy detector paraphrased its evidence: it must not reach a diagnosis.
    signals = [s.model_copy(update={"evidence": "user was refused a refund (paraphrase)"})
               if s.kind == "refusal" else s for s in signals]
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    d = next(d for d in ds if d.intent_id == "int-refund")
    assert all("paraphrase" not in e.quote for e in d.evidence)
    assert_verbatim(ds, threads)
    assert all(d.model_dump_json() for d in ds)  # details serialise for reports
