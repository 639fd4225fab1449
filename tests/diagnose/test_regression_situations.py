"""Stage 4 tests: version jumps in situations ("after X, Y"), stratified by intent.

A prompt change that breaks how the agent handles one situation (a request for a human) shows in
every intent whose users reach that situation, a few sessions each: no intent x signal cell has
the numbers, the situation pooled over intents does. The tests plant such a regression with small
counts (found), the same traffic with no change between versions (nothing reported), and a
change of intent mix between versions that a pooled, unstratified test would take for a jump
(nothing reported); and a significant cell whose failures the regressed situation added is
attributed to that regression, while a cell that failed as often in the situation before the
change keeps its own diagnosis. Expected p-values come from brute-force enumeration in the test, not from the
code under test.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from math import comb

import pytest
from scipy.stats import fisher_exact

from loop_middleware.diagnose._diagnose import DiagnoseConfig, diagnose, diagnosis_id
from loop_middleware.diagnose._stats import stratified_exact_test
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
    sig,
    thread,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
HANDED_OFF = "I've passed your conversation to a human agent (ticket HO-1042)."
REFUSED = "I'm sorry, I'm not able to transfer you to a human agent."
ANGRY = "Are you even listening? Let me speak to a human agent NOW."
POOLS = {"refund": REFUND_ASKS, "password": PASSWORD_ASKS, "tracking": TRACKING_ASKS,
         "warranty": WARRANTY_ASKS}


def brute_force_p(tables: list[tuple[int, int, int, int]]) -> float:
    """The exact conditional p by enumeration: in each stratum every way to pick which sessions
    are the new version's (margins fixed), and the share of joint picks with at least the
    observed number of affected sessions on the new version."""
    per_stratum: list[Counter[int]] = []
    observed = 0
    for a_new, n_new, a_old, n_old in tables:
        sessions = [1] * (a_new + a_old) + [0] * (n_new + n_old - a_new - a_old)
        per_stratum.append(Counter(sum(pick) for pick in itertools.combinations(sessions, n_new)))
        observed += a_new
    hit = total = 0
    for combo in itertools.product(*(c.items() for c in per_stratum)):
        ways = 1
        for _, w in combo:
            ways *= w
        total += ways
        hit += ways if sum(k for k, _ in combo) >= observed else 0
    return hit / total


# --- the test itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [(3, 10, 0, 10), (8, 21, 0, 12), (5, 9, 4, 9), (0, 6, 3, 6),
                                   (12, 12, 0, 7), (0, 5, 0, 5)])
def test_one_stratum_is_fishers_exact_test(table: tuple[int, int, int, int]) -> None:
    a_new, n_new, a_old, n_old = table
    fisher = fisher_exact([[a_new, n_new - a_new], [a_old, n_old - a_old]], alternative="greater")[1]
    assert stratified_exact_test([table]) == pytest.approx(fisher, rel=1e-9, abs=1e-15)


def test_strata_combine_exactly() -> None:
    tables = [(3, 3, 0, 3), (2, 4, 1, 3), (1, 2, 0, 4), (0, 2, 2, 2)]
    assert stratified_exact_test(tables) == pytest.approx(brute_force_p(tables), rel=1e-9)
    # Strata with one version only, or all / none affected, carry no information.
    assert stratified_exact_test([*tables, (4, 4, 0, 0), (0, 3, 0, 5), (2, 2, 3, 3)]) == pytest.approx(
        brute_force_p(tables), rel=1e-9)
    assert stratified_exact_test([(4, 4, 0, 0)]) == 1.0
    with pytest.raises(ValueError, match="invalid 2x2 table"):
        stratified_exact_test([(5, 4, 0, 3)])


def test_a_change_of_intent_mix_is_no_jump() -> None:
    # Intent A always fails, B never, on both versions; the new version just sees more of A.
    tables = [(8, 8, 2, 2), (0, 2, 0, 8)]
    pooled = fisher_exact([[8, 2], [2, 8]], alternative="greater")[1]
    assert pooled < 0.05  # an unstratified test would call it a regression
    assert stratified_exact_test(tables) == 1.0


# --- situations in diagnose -----------------------------------------------------------------------


def escalation_traffic(frustrated_v1: int, frustrated_v2: int, *, per_version: int = 10,
                       escalating: int = 3) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    """Four intents, ``per_version`` threads each on prompt v1 then v2 (v1 first in time). In each
    intent and version the first ``escalating`` users ask for a human on turn 1; on v1 the agent
    hands them over unless the user is among the first ``frustrated_v1``, on v2 unless among the
    first ``frustrated_v2``: those get a refusal and answer angrily on turn 2 (frustration)."""
    threads: list[Thread] = []
    signals: list[Signal] = []
    assignments: dict[str, str | None] = {}
    for k, (name, pool) in enumerate(POOLS.items()):
        for v, pv in enumerate((SUPPORT_V1, SUPPORT_V2)):
            bad_n = (frustrated_v1, frustrated_v2)[v]
            for i in range(per_version):
                tid = f"{name}-v{v + 1}-{i:02d}"
                at = T0 + timedelta(days=7 * v, hours=10 * k + i)
                if i < escalating:
                    bad = i < bad_n
                    th = thread(tid, T(ask(pool, i), "Let me look into that for you."),
                                T("Can I talk to a person please?", REFUSED if bad else HANDED_OFF),
                                T(ANGRY if bad else "Thanks!", "I understand." if bad else "Bye!"),
                                prompt=pv, at=at)
                    signals.append(sig(th, "escalation", 1))
                    if bad:
                        signals.append(sig(th, "frustration", 2))
                else:
                    th = thread(tid, T(ask(pool, i), "Happy to help! Here is what to do next."),
                                T("Great, thanks!", "You're welcome."), prompt=pv, at=at)
                threads.append(th)
                assignments[tid] = INTENTS[name].id
    return threads, signals, assignments


def test_a_regression_in_a_situation_is_found_from_a_few_sessions_per_intent() -> None:
    threads, signals, assignments = escalation_traffic(frustrated_v1=0, frustrated_v2=3)
    # Per intent: frustration 0 of 10 sessions on v1, 3 of 10 on v2 -- not a jump on its own.
    assert fisher_exact([[3, 7], [0, 10]], alternative="greater")[1] > 0.1
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    regs = [d for d in ds if d.failure_mode == "regression"]
    assert len(regs) == 1
    d = regs[0]
    assert d.intent_id is None and d.intent_name == "after escalation (all intents)"
    assert d.signal == "frustration" and d.details["situation"] == "escalation"
    det = d.details
    assert (det["old_sha256"], det["new_sha256"]) == (SUPPORT_V1.sha256, SUPPORT_V2.sha256)
    assert d.prompt_sha256 == SUPPORT_V2.sha256
    # 3 escalations per intent and version, 4 intents: 0 of 12 frustrated after it on v1, 12 of 12 on v2.
    assert (det["old_affected"], det["old_sessions"], det["new_affected"], det["new_sessions"]) == (0, 12, 12, 12)
    expected_p = brute_force_p([(3, 3, 0, 3)] * 4)
    assert expected_p == pytest.approx((1 / comb(6, 3)) ** 4)
    assert det["p_value"] == pytest.approx(expected_p, rel=1e-9)
    assert det["p_value"] <= det["q_value"] <= 0.05 and d.q_value == det["q_value"]
    assert set(det["by_intent"]) == {i.id for i in INTENTS.values() if i.id in assignments.values()}
    # Every one of the 12 sessions on v2 was added by the change; impact at frustration's 2.0.
    assert det["excess_sessions"] == 12 and d.impact == pytest.approx(12 * 2.0)
    assert d.sessions_affected == 12
    assert sorted(det["affected_thread_ids"]) == sorted(
        t.thread_id for t in threads if "-v2-" in t.thread_id and int(t.thread_id[-2:]) < 3)
    assert "-Use the track_order tool" in det["diff"] and "+Tracking questions" in det["diff"]
    # Evidence: how the agent now answers the request, and what the user said next (v2 only).
    quotes = {e.quote for e in d.evidence}
    assert REFUSED in quotes and ANGRY in quotes
    assert all("-v2-" in e.thread_id for e in d.evidence)
    assert_verbatim(regs, threads)
    assert d.id == diagnosis_id(None, "frustration", "regression", SUPPORT_V2.sha256, situation="escalation")
    assert d.id != diagnosis_id(None, "frustration", "regression", SUPPORT_V2.sha256)
    # The intent x signal cells alone do not have the numbers.
    off = DiagnoseConfig(regression_situations=False)
    assert all(x.failure_mode != "regression"
               for x in diagnose(threads, signals, list(INTENTS.values()), assignments, config=off))


def test_versions_that_differ_only_by_noise_report_no_regression() -> None:
    # Same behaviour on both versions: one in three requests for a human ends badly.
    threads, signals, assignments = escalation_traffic(frustrated_v1=1, frustrated_v2=1)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert all(d.failure_mode != "regression" for d in ds)
    # ... and a small difference (2 of 3 on v2 in every intent) is not enough either.
    threads, signals, assignments = escalation_traffic(frustrated_v1=1, frustrated_v2=2)
    assert brute_force_p([(2, 3, 1, 3)] * 4) > 0.05
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert all(d.failure_mode != "regression" for d in ds)


def test_a_change_of_intent_mix_in_a_situation_is_no_regression() -> None:
    # Refund users who ask for a human are always refused and angry, password users never, on
    # both versions; v2 just sees more refund escalations (8 vs 2). Pooled, 2 of 10 -> 8 of 10.
    threads: list[Thread] = []
    signals: list[Signal] = []
    assignments: dict[str, str | None] = {}
    counts = {("refund", 0): 2, ("refund", 1): 8, ("password", 0): 8, ("password", 1): 2}
    for (name, v), n in counts.items():
        pv = (SUPPORT_V1, SUPPORT_V2)[v]
        for i in range(n):
            bad = name == "refund"
            tid = f"{name}-v{v + 1}-{i:02d}"
            th = thread(tid, T(ask(POOLS[name], i), "Let me look into that for you."),
                        T("Can I talk to a person please?", REFUSED if bad else HANDED_OFF),
                        T(ANGRY if bad else "Thanks!", "I understand."), prompt=pv,
                        at=T0 + timedelta(days=7 * v, hours=i))
            threads.append(th)
            assignments[tid] = INTENTS[name].id
            signals.append(sig(th, "escalation", 1))
            if bad:
                signals.append(sig(th, "frustration", 2))
    assert fisher_exact([[8, 2], [2, 8]], alternative="greater")[1] < 0.05
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert all(d.failure_mode != "regression" for d in ds)
    # The refund intent's frustration still stands out against the other intent.
    assert any(d.intent_id == "int-refund" for d in ds)


# --- cells a regressed situation explains -------------------------------------------------------------


def handoff_refused_traffic(other_refusals_v1: int, refused_on_v1: int
                           ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    """:func:`escalation_traffic` (the v2 regression "after escalation, frustration" in four
    intents) plus a cancel intent, 10 threads per version. On v1 the first
    ``other_refusals_v1`` cancel users are refused for another reason (no escalation) and the
    next three ask for a human on turn 1: the first ``refused_on_v1`` of them are
    refused at once (the refusal is how the agent answers the request, same turn) and get angry,
    the others are handed over. On v2 the first six ask for a human, are refused and get angry."""
    threads, signals, assignments = escalation_traffic(frustrated_v1=0, frustrated_v2=3)
    for v, pv in enumerate((SUPPORT_V1, SUPPORT_V2)):
        for i in range(10):
            tid = f"cancel-v{v + 1}-{i:02d}"
            at = T0 + timedelta(days=7 * v, hours=50 + i)
            j = i - other_refusals_v1 if v == 0 else i  # index among the escalating users
            if 0 <= j < (3 if v == 0 else 6):
                refused = v == 1 or j < refused_on_v1
                th = thread(tid, T(ask(CANCEL_ASKS, i), "Let me look into that for you."),
                            T("Can I talk to a person please?", REFUSED if refused else HANDED_OFF),
                            T(ANGRY if refused else "Thanks!", "I understand."), prompt=pv, at=at)
                signals.append(sig(th, "escalation", 1))
                if refused:
                    signals += [sig(th, "refusal", 1), sig(th, "frustration", 2)]
            elif v == 0 and i < other_refusals_v1:
                th = thread(tid, T(ask(CANCEL_ASKS, i), "I'm sorry, I can't help with that."),
                            T("ok", "Bye."), prompt=pv, at=at)
                signals.append(sig(th, "refusal", 0))
            else:
                th = thread(tid, T(ask(CANCEL_ASKS, i), "Happy to help! Here is what to do next."),
                            T("Great, thanks!", "You're welcome."), prompt=pv, at=at)
            threads.append(th)
            assignments[tid] = INTENTS["cancel"].id
    return threads, signals, assignments


def test_a_cell_the_situation_regression_added_joins_it() -> None:
    # Cancel: v1 refuses 4 users for other reasons and hands over all 3 who ask for a human; v2
    # refuses the 6 who ask for a human.
    threads, signals, assignments = handoff_refused_traffic(other_refusals_v1=4, refused_on_v1=0)
    intents = list(INTENTS.values())
    # Without situations the cancel intent's refusals are a diagnosis of their own: significant
    # against the other intents, but 4 of 10 -> 6 of 10 across versions is no jump for the cell.
    assert fisher_exact([[6, 4], [4, 6]], alternative="greater")[1] > 0.1
    off = diagnose(threads, signals, intents, assignments,
                   config=DiagnoseConfig(regression_situations=False))
    own = [d for d in off if d.intent_id == "int-cancel" and d.signal == "refusal"]
    assert len(own) == 1 and own[0].failure_mode in ("coverage_gap", "unexplained")
    mode = own[0].failure_mode

    ds = diagnose(threads, signals, intents, assignments)
    assert not any(d.intent_id == "int-cancel" and d.signal == "refusal" for d in ds)
    (sit,) = [d for d in ds if d.details.get("situation") == "escalation"]
    attributed = sit.details["attributed_cells"]
    assert attributed[0]["intent_id"] == "int-cancel" and attributed[0]["signal"] == "refusal"
    assert attributed[0]["instead_of"] == mode and attributed[0]["sessions_affected"] == 10
    # Cancel sessions that asked for a human: refused 0 of 3 on v1, 6 of 6 on v2, so the change
    # added 6 - 6 x 0/3 = 6 of the cell's 10 refused sessions (>= min_support 0.5).
    assert attributed[0]["excess_share"] == pytest.approx(0.6)
    # Cells that followed it (the cancel users' frustration) go with it.
    assert all(c["intent_id"] == "int-cancel" and c["follows"] == "refusal" for c in attributed[1:])
    assert "'cancel subscription' intent gets refusals (10 sessions" in sit.summary
    # The attribution changes none of the situation's tested numbers: after an escalation, 0 of
    # 12 + 3 sessions frustrated on v1, 12 + 6 of 12 + 6 on v2.
    det = sit.details
    assert (det["old_affected"], det["old_sessions"], det["new_affected"], det["new_sessions"]) == (0, 15, 18, 18)
    assert sit.sessions_affected == 18


def test_a_gap_that_predates_the_change_keeps_its_own_diagnosis() -> None:
    # Cancel: every request for a human is refused on both versions (3 on v1, 6 on v2). Most of
    # the cell's sessions (6 of 9) are on v2 after an escalation, but v1 refused them just as
    # often: the change added none of them, so they are not the regression's.
    threads, signals, assignments = handoff_refused_traffic(other_refusals_v1=0, refused_on_v1=3)
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments)
    (sit,) = [d for d in ds if d.details.get("situation") == "escalation"]
    assert "attributed_cells" not in sit.details
    own = [d for d in ds if d.intent_id == "int-cancel" and d.signal == "refusal"]
    assert len(own) == 1 and own[0].failure_mode in ("coverage_gap", "unexplained")
    assert own[0].sessions_affected == 9
