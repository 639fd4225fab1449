"""Stage 4 tests: one diagnosis per root cause.

Opening-turn reactions are not failures of the conversation, consequences join the cause they
follow, regressions are tested in every cell (not only cells that stand out against other
intents), context loss needs a history, coverage gaps ignore tool identifiers and need an agent
that had nothing to go on, and a root cause's repeats rank after new root causes.

The stores reuse the hand-built conversations of ``test_diagnose``; expected numbers are computed
here from the planted data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import fisher_exact

from loop_middleware.diagnose._diagnose import DiagnoseConfig, diagnose
from loop_middleware.types import Signal, Thread

from .test_diagnose import (
    CANCEL_ASKS,
    INTENTS,
    PASSWORD_ASKS,
    REFUND_ASKS,
    SUPPORT_V1,
    SUPPORT_V2,
    TRACKING_ASKS,
    WARRANTY_ASKS,
    T,
    ask,
    assert_verbatim,
    assign,
    plain,
    prompt,
    sig,
    thread,
    tool,
)

REFUSAL = "I'm sorry, but I can't help with that request."


def refused_refunds(n: int, refused: int, *, prompt_text: str | None = None,
                    tools: bool = False) -> tuple[list[Thread], list[Signal]]:
    """Refund threads: the first ``refused`` are refused (turn 0), then the user gets frustrated
    (turn 1) and leaves (turn 2, abandonment)."""
    pv = prompt(prompt_text) if prompt_text else SUPPORT_V1
    threads: list[Thread] = []
    signals: list[Signal] = []
    doc = '{"order": "40100", "status": "delivered"}'
    for i in range(n):
        bad = i < refused
        th = thread(f"rf-{i:02d}",
                    T(ask(REFUND_ASKS, i), REFUSAL if bad else "Done: the refund is on its way.",
                      tools=[tool("lookup_order", {"order_id": str(40100 + i)}, result=doc)] if tools else []),
                    T("THAT'S NOT WHAT I ASKED. I want my money back." if bad else "Thanks!",
                      "I understand your frustration." if bad else "You're welcome!"),
                    T("Forget it." if bad else "Bye", "Goodbye."), prompt=pv)
        threads.append(th)
        if bad:
            signals += [sig(th, "refusal", 0), sig(th, "frustration", 1), sig(th, "abandonment", 2)]
    return threads, signals


def test_consequences_join_the_cause_they_follow_and_no_knee_right_after_the_first_answer() -> None:
    refund, signals = refused_refunds(16, 12)
    others = plain("pw", PASSWORD_ASKS, 30) + plain("tr", TRACKING_ASKS, 30)
    signals.append(sig(others[0], "frustration", 1))
    assignments = {**assign(refund, "refund"), **assign(others[:30], "password"),
                   **assign(others[30:], "tracking")}
    threads = refund + others
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    refund_ds = [d for d in ds if d.intent_id == "int-refund"]
    # Refused at turn 0, frustrated at turn 1, gone at turn 2: one cause (the prompt has no
    # refund guidance), not a "context loss after 1 turn" and not three diagnoses.
    assert len(refund_ds) == 1
    d = refund_ds[0]
    assert d.failure_mode == "coverage_gap" and d.signal == "refusal"
    assert d.details["signals"] == ["abandonment", "frustration", "refusal"]
    assert d.details["by_signal"]["frustration"]["follows"] == "refusal"
    assert d.details["by_signal"]["frustration"]["preceded_share"] == 1.0
    assert d.sessions_affected == 12 and d.impact == pytest.approx(12 * 3.0)
    assert all(x.failure_mode != "context_loss" for x in ds)
    assert_verbatim(ds, threads)


def test_signals_raised_by_the_opening_message_are_not_failures() -> None:
    # "Close my account" / an angry opener fire escalation and frustration on turn 0, before the
    # agent said anything; the agent then answers from the help center and the user thanks it.
    doc = '[{"title": "Cancel your plan", "text": "Open Settings > Plan > Cancel."}]'
    cancel = [thread(f"cx-{i:02d}",
                     T(ask(CANCEL_ASKS, i) + " I am sick of this, let me talk to a person.",
                       "Open Settings > Plan > Cancel to stop the renewals.",
                       tools=[tool("search_kb", {"query": "cancel"}, result=doc)]),
                     T("Thanks!", "You're welcome!"))
              for i in range(12)]
    others = plain("pw", PASSWORD_ASKS, 40)
    signals = ([sig(t, "escalation", 0) for t in cancel] + [sig(t, "frustration", 0) for t in cancel[:8]]
               + [sig(others[1], "escalation", 1)])
    assignments = {**assign(cancel, "cancel"), **assign(others, "password")}
    assert diagnose(cancel + others, signals, list(INTENTS.values()), assignments) == []
    # The same signals one turn later (after the agent's answer) are failures again.
    later = [Signal(thread_id=s.thread_id, kind=s.kind, turn_index=1, evidence="Thanks!", confidence=0.9)
             for s in signals if s.thread_id.startswith("cx-")]
    ds = diagnose(cancel + others, later, list(INTENTS.values()), assignments)
    assert [d.intent_id for d in ds] == ["int-cancel"]
    # ... but the help center gave the agent the answer: not a coverage gap of the prompt.
    assert ds[0].failure_mode != "coverage_gap"


def test_regression_is_found_in_a_cell_that_does_not_stand_out_against_other_intents() -> None:
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    # Refund threads are frustrated everywhere (a coverage gap): 12 of 16.
    refund, signals = refused_refunds(16, 12)
    # Tracking: 0 of 14 frustrated on v1, 9 of 16 on v2 -- a jump, but 9/30 = 30% is below the
    # refund intent's 75%, so tracking's frustration is no significant cell on its own.
    tracking = []
    for i in range(30):
        on_new = i >= 14
        bad = on_new and i - 14 < 9
        th = thread(f"trk-{i:02d}", T(ask(TRACKING_ASKS, i), "Tracking is handled by logistics."
                                      if bad else "It arrives tomorrow."),
                    T("THAT DOESN'T ANSWER MY QUESTION." if bad else "Thanks!", "Sorry about that."),
                    prompt=SUPPORT_V2 if on_new else SUPPORT_V1, at=t0 + timedelta(hours=i))
        tracking.append(th)
        if bad:
            signals.append(sig(th, "frustration", 1))
    others = plain("pw", PASSWORD_ASKS, 30)
    assignments = {**assign(refund, "refund"), **assign(tracking, "tracking"), **assign(others, "password")}
    threads = refund + tracking + others
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    reg = next(d for d in ds if d.failure_mode == "regression")
    assert reg.intent_id == "int-tracking" and reg.signal == "frustration"
    det = reg.details
    assert (det["old_sessions"], det["old_affected"], det["new_sessions"], det["new_affected"]) == (14, 0, 16, 9)
    assert det["p_value"] == pytest.approx(fisher_exact([[9, 7], [0, 14]], alternative="greater")[1])
    assert reg.q_value == det["q_value"] and reg.q_value <= 0.05
    # The change added 9 - 16 x 0/14 = 9 sessions; the impact counts those at frustration's 2.0.
    assert det["excess_sessions"] == 9 and reg.impact == pytest.approx(9 * 2.0)
    assert "-Use the track_order tool" in det["diff"]
    # The refund coverage gap (flat across versions: all refund threads are on v1) stays.
    assert any(d.intent_id == "int-refund" and d.failure_mode == "coverage_gap" for d in ds)
    assert_verbatim(ds, threads)


def test_coverage_gap_ignores_tool_identifiers_and_needs_an_uninformed_agent() -> None:
    tools_only = (SUPPORT_V1.text + "## Tools\n- `request_refund(order_id, reason)`: opens a ticket.\n"
                  "- issue_money_back(order_id)\n")
    others = plain("pw", PASSWORD_ASKS, 30)
    for text, informed, gap in ((tools_only, False, True), (SUPPORT_V1.text, True, False)):
        refund, signals = refused_refunds(16, 12, prompt_text=text, tools=informed)
        assignments = {**assign(refund, "refund"), **assign(others, "password")}
        ds = diagnose(refund + others, signals, list(INTENTS.values()), assignments)
        d = next(d for d in ds if d.intent_id == "int-refund")
        assert (d.failure_mode == "coverage_gap") is gap, (text, d)
        if gap:
            # "refund" and "money back" occur only inside tool names: still missing.
            assert {"refund", "money back"} <= set(d.details["missing_terms"])
            assert d.details["informed_by_tools"] == 0


def test_one_root_cause_in_two_intents_is_one_diagnosis_with_a_per_intent_breakdown() -> None:
    # The same tool answers ungrounded in two intents (one root cause: one fix), and a smaller
    # coverage gap in a third: two diagnoses, the ungrounded one with both intents.
    threads: list[Thread] = []
    signals: list[Signal] = []
    assignments: dict[str, str | None] = {}
    for name, pool, n in (("warranty", WARRANTY_ASKS, 16), ("tracking", TRACKING_ASKS, 14)):
        for i in range(n):
            empty = i < n - 4  # the last four find an article and answer from it
            th = thread(f"{name}-{i:02d}",
                        T(ask(pool, i), tools=[tool("search_kb", {"query": ask(pool, i)[:30]},
                                                    result="No results found" if empty else
                                                    '[{"title": "Claims", "text": "Use the form."}]')],
                          reply="Sure! It is fully covered, just open the app and tap Claim."
                          if empty else "Please use the claims form."),
                        T("ok", "Anything else?"))
            threads.append(th)
            assignments[th.thread_id] = INTENTS[name].id
            if empty:
                signals.append(sig(th, "ungrounded", 0))
    refund, rsig = refused_refunds(12, 7)
    others = plain("pw", PASSWORD_ASKS, 40)
    threads += refund + others
    signals += rsig
    assignments.update({**assign(refund, "refund"), **assign(others, "password")})
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments, config=DiagnoseConfig())
    modes = [(d.failure_mode, d.intent_id) for d in ds]
    assert modes == [("ungrounded_answer", "int-warranty"), ("coverage_gap", "int-refund")]
    d = ds[0]
    assert d.sessions_affected == 12 + 10
    assert [(e["intent_id"], e["sessions"]) for e in d.details["intents"]] == [
        ("int-warranty", 12), ("int-tracking", 10)]
    assert d.details["intents"][1]["rate"] == round(10 / 14, 4)
    name = f"{INTENTS['warranty'].name} and {INTENTS['tracking'].name}"
    assert d.headline.startswith(f"{name[:1].upper()}{name[1:]} get ungrounded answers because")


def test_headline_names_the_topic_in_the_agents_own_words_with_the_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.diagnose.test_root_causes as mod

    monkeypatch.setattr(mod, "REFUSAL", "I'm sorry, I can't help with refunds. Please check the app.")
    refund, signals = refused_refunds(16, 12)
    others = plain("pw", PASSWORD_ASKS, 30) + plain("tr", TRACKING_ASKS, 30)
    assignments = {**assign(refund, "refund"), **assign(others[:30], "password"),
                   **assign(others[30:], "tracking")}
    ds = diagnose(refund + others, signals, list(INTENTS.values()), assignments)
    [d] = [x for x in ds if x.intent_id == "int-refund"]
    name = INTENTS["refund"].name
    share = f"{100 * 12 / 76:.1f}%"
    assert d.headline == (f"{name[:1].upper()}{name[1:]} gets refusals and is abandoned and "
                          f"frustrates users because the prompt has no refund policy, {share} of sessions.")
    assert d.details["topic"] == "refund"
    assert "the agent says it cannot help with refunds in 12 of 12 affected sessions" in d.summary
    # Without the agent saying what it cannot do, the topic is the most distinctive missing term.
    monkeypatch.setattr(mod, "REFUSAL", "I'm sorry, but I can't help with that request.")
    refund, signals = refused_refunds(16, 12)
    ds = diagnose(refund + others, signals, list(INTENTS.values()),
                  {**assignments, **assign(refund, "refund")})
    [d] = [x for x in ds if x.intent_id == "int-refund"]
    assert d.headline.endswith(f"because the prompt has no {d.details['missing_terms'][0]} policy, "
                               f"{share} of sessions.")
