"""One diagnosis per root cause across intents (``diagnose/_merge.py``).

Hand-built support conversations (the builder of ``test_diagnose``): a root cause reached by two
intents is one diagnosis with a per-intent breakdown that sums to its sessions; two causes that
differ in what a fix would change (another topic, another tool) stay two; an unexplained
diagnosis whose agent refuses the topic a coverage gap names joins the gap; and a failure that
follows a cause in the same sessions (frustration after a refusal) attaches to it. Every expected
count is computed in the test from the planted data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loop_middleware.diagnose._diagnose import DiagnoseConfig, diagnose, diagnosis_id
from loop_middleware.diagnose._merge import mechanism_key
from loop_middleware.privacy import MIN_GROUP_SIZE
from loop_middleware.types import Diagnosis, PromptVersion, Signal, Thread

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

NO_REFUNDS = "I'm sorry, I can't help with refunds. Please check the Payments section of the app."
NO_WARRANTY = "I'm sorry, I can't help with warranty claims. Please contact the manufacturer."
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def refused(prefix: str, pool: list[str], n: int, bad: int, reply: str, *,
            informed: bool = False) -> tuple[list[Thread], list[Signal]]:
    """``n`` threads, the first ``bad`` refused at turn 0 with ``reply``, then frustration
    (turn 1). ``informed``: a tool returned content before the reply (no coverage gap then)."""
    threads, signals = [], []
    doc = '{"order": "40100", "status": "delivered"}'
    for i in range(n):
        is_bad = i < bad
        th = thread(f"{prefix}-{i:02d}",
                    T(ask(pool, i), reply if is_bad else "Done, it is sorted.",
                      tools=[tool("lookup_order", {"order_id": str(40100 + i)}, result=doc)]
                      if informed else []),
                    T("THAT'S NOT WHAT I ASKED." if is_bad else "Thanks!",
                      "I understand your frustration." if is_bad else "You're welcome!"))
        threads.append(th)
        if is_bad:
            signals += [sig(th, "refusal", 0), sig(th, "frustration", 1)]
    return threads, signals


def ungrounded(prefix: str, pool: list[str], n: int, bad: int, kb_tool: str
               ) -> tuple[list[Thread], list[Signal]]:
    """``n`` threads; in the first ``bad`` the ``kb_tool`` finds nothing and the agent answers."""
    threads, signals = [], []
    for i in range(n):
        empty = i < bad
        th = thread(f"{prefix}-{i:02d}",
                    T(ask(pool, i), tools=[tool(kb_tool, {"query": ask(pool, i)[:30]},
                                                result="No results found" if empty else
                                                '[{"title": "Help", "text": "Use the form."}]')],
                      reply="Sure! Just open the app and tap Settings." if empty
                      else "Please use the form."),
                    T("ok", "Anything else?"))
        threads.append(th)
        if empty:
            signals.append(sig(th, "ungrounded", 0))
    return threads, signals


def run(*parts: tuple[list[Thread], list[Signal], str], healthy: int = 40
        ) -> tuple[list[Diagnosis], list[Thread], dict[str, str | None]]:
    threads: list[Thread] = []
    signals: list[Signal] = []
    assignments: dict[str, str | None] = {}
    for ts, ss, intent in parts:
        threads += ts
        signals += ss
        assignments.update(assign(ts, intent))
    others = plain("pw", PASSWORD_ASKS, healthy)
    threads += others
    assignments.update(assign(others, "password"))
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments, config=DiagnoseConfig())
    return ds, threads, assignments


def check_breakdown(d: Diagnosis, assignments: dict[str, str | None], total: int) -> None:
    """The per-intent breakdown sums to the sessions affected, and each intent's count is its
    affected sessions."""
    per = {e["intent_id"]: e["sessions"] for e in d.details["intents"]}
    assert sum(per.values()) == d.sessions_affected
    assert d.share_of_sessions == d.sessions_affected / total
    ids = d.details["affected_thread_ids"]
    assert len(ids) == len(set(ids)) == d.sessions_affected  # fewer than 100 here
    for intent, n in per.items():
        assert n == sum(1 for t in ids if assignments.get(t) == intent)


def test_a_coverage_gap_of_one_topic_in_two_intents_is_one_diagnosis() -> None:
    refund = refused("rf", REFUND_ASKS, 16, 12, NO_REFUNDS)
    warranty = refused("wr", WARRANTY_ASKS, 14, 9, NO_REFUNDS)
    ds, threads, assignments = run((*refund, "refund"), (*warranty, "warranty"))
    gaps = [d for d in ds if d.failure_mode == "coverage_gap"]
    assert len(gaps) == 1, [d.headline for d in ds]
    d = gaps[0]
    assert d.details["topic"] == "refund"
    # The strongest member (more sessions) is the primary: its id, intent and statistics.
    assert d.id == diagnosis_id("int-refund", "refusal", "coverage_gap", SUPPORT_V1.sha256)
    assert d.details["merged_ids"] == [
        diagnosis_id("int-warranty", "refusal", "coverage_gap", SUPPORT_V1.sha256)]
    assert d.intent_id == "int-refund" and d.rate_in_intent == 12 / 16
    assert d.sessions_affected == 12 + 9
    assert [(e["intent_id"], e["sessions"], e["rate"]) for e in d.details["intents"]] == [
        ("int-refund", 12, 0.75), ("int-warranty", 9, round(9 / 14, 4))]
    check_breakdown(d, assignments, len(threads))
    assert d.details["intent_ids"] == ["int-refund", "int-warranty"]
    refund_name, warranty_name = INTENTS["refund"].name, INTENTS["warranty"].name
    share = f"{100 * 21 / len(threads):.1f}%"
    assert d.headline.startswith(f"{refund_name[:1].upper()}{refund_name[1:]} and {warranty_name} "
                                 "get refusals")
    assert d.headline.endswith(f"because the prompt has no refund policy, {share} of sessions.")
    assert f"'{warranty_name}' intent (9 sessions" in d.summary
    # Evidence from both intents, each quote verbatim.
    assert {assignments[e.thread_id] for e in d.evidence} == {"int-refund", "int-warranty"}
    assert_verbatim(ds, threads)
    assert len({mechanism_key(x) for x in ds if mechanism_key(x)}) == sum(
        1 for x in ds if mechanism_key(x))


def test_distinct_mechanisms_stay_apart() -> None:
    # Two topics the prompt lacks (refunds, warranty claims), and empty results of two tools.
    ds, threads, assignments = run(
        (*refused("rf", REFUND_ASKS, 16, 12, NO_REFUNDS), "refund"),
        (*refused("wr", WARRANTY_ASKS, 14, 9, NO_WARRANTY), "warranty"),
        (*ungrounded("tr", TRACKING_ASKS, 14, 10, "search_kb"), "tracking"),
        (*ungrounded("cn", CANCEL_ASKS, 14, 10, "search_docs"), "cancel"),
    )
    got = sorted((d.failure_mode, d.intent_id, d.details.get("topic") or d.details.get("tool"))
                 for d in ds)
    assert got == [("coverage_gap", "int-refund", "refund"),
                   ("coverage_gap", "int-warranty", "warranty claim"),
                   ("ungrounded_answer", "int-cancel", "search_docs"),
                   ("ungrounded_answer", "int-tracking", "search_kb")]
    for d in ds:
        assert "merged" not in d.details
        assert [e["intent_id"] for e in d.details["intents"]] == [d.intent_id]
        check_breakdown(d, assignments, len(threads))


def test_the_same_tool_answering_from_nothing_in_two_intents_is_one_diagnosis() -> None:
    ds, threads, assignments = run(
        (*ungrounded("tr", TRACKING_ASKS, 14, 10, "search_kb"), "tracking"),
        (*ungrounded("cn", CANCEL_ASKS, 16, 12, "search_kb"), "cancel"),
    )
    [d] = [d for d in ds if d.failure_mode == "ungrounded_answer"]
    assert d.intent_id == "int-cancel" and d.details["tool"] == "search_kb"
    assert d.sessions_affected == 22
    assert [(e["intent_id"], e["sessions"]) for e in d.details["intents"]] == [
        ("int-cancel", 12), ("int-tracking", 10)]
    check_breakdown(d, assignments, len(threads))
    # Ranked once: nothing else is left of the two intents.
    assert [x.intent_id for x in ds] == ["int-cancel"]


def test_an_unexplained_diagnosis_refusing_the_gaps_topic_joins_the_gap() -> None:
    # The warranty threads looked the order up first (the agent was informed), so their refusals
    # are no coverage gap of their own: unexplained, but the agent says the same thing.
    refund = refused("rf", REFUND_ASKS, 16, 12, NO_REFUNDS)
    warranty = refused("wr", WARRANTY_ASKS, 14, 9, NO_REFUNDS, informed=True)
    ds, threads, assignments = run((*refund, "refund"), (*warranty, "warranty"))
    assert [d.failure_mode for d in ds] == ["coverage_gap"], [d.headline for d in ds]
    d = ds[0]
    roles = [(m["intent_id"], m["role"], m["failure_mode"]) for m in d.details["merged"]]
    assert roles == [("int-refund", "primary", "coverage_gap"),
                     ("int-warranty", "restatement", "unexplained")]
    assert d.sessions_affected == 21
    check_breakdown(d, assignments, len(threads))
    # Refusing another topic is another root cause: it stays unexplained on its own.
    warranty = refused("wr", WARRANTY_ASKS, 14, 9, NO_WARRANTY, informed=True)
    ds, _, _ = run((*refund, "refund"), (*warranty, "warranty"))
    assert sorted((d.failure_mode, d.intent_id) for d in ds) == [
        ("coverage_gap", "int-refund"), ("unexplained", "int-warranty")]


def consequence_store(new: PromptVersion = SUPPORT_V2, old: PromptVersion = SUPPORT_V1
                      ) -> tuple[list[Thread], list[Signal], dict[str, str | None]]:
    """Tracking: prompt v2 makes the agent deflect 12 of 15 sessions (refusal, turn 0; none on
    v1); users get frustrated (turn 1) in 9 of those and, for other reasons, in 5 v1 sessions:
    the frustration rate barely moves with the version (5/15 -> 9/15, no jump of its own) but
    most frustrated sessions followed the refusal."""
    threads: list[Thread] = []
    signals: list[Signal] = []
    for i in range(30):
        on_new = i >= 15
        deflected = on_new and i - 15 < 12
        frustrated = (i - 15 < 9) if on_new else i < 5
        th = thread(f"trk-{i:02d}",
                    T(ask(TRACKING_ASKS, i), "Tracking questions are handled by our logistics team."
                      if deflected else "Let me check that for you."),
                    T("This is useless, I asked twice!" if frustrated else "Thanks!", "Sorry."),
                    prompt=new if on_new else old, at=T0 + timedelta(hours=i))
        threads.append(th)
        if deflected:
            signals.append(sig(th, "refusal", 0))
        if frustrated:
            signals.append(sig(th, "frustration", 1))
    others = []
    for i in range(40):
        others += plain("pw", PASSWORD_ASKS, 1, start=i, prompt=old if i < 20 else new,
                        at=T0 + timedelta(hours=i))
    return threads + others, signals, {**assign(threads, "tracking"), **assign(others, "password")}


def test_a_consequence_attaches_to_its_cause() -> None:
    threads, signals, assignments = consequence_store()
    # Without the merge step the frustration would be a diagnosis of its own, unexplained.
    cfg = DiagnoseConfig()
    ds = diagnose(threads, signals, list(INTENTS.values()), assignments, config=cfg)
    assert [d.failure_mode for d in ds] == ["regression"], [d.headline for d in ds]
    d = ds[0]
    assert d.signal == "refusal" and d.intent_id == "int-tracking"
    [c] = d.details["consequences"]
    assert c["intent_id"] == "int-tracking" and c["signal"] == "frustration"
    assert c["sessions_affected"] == 14
    assert c["followed_share"] == round(9 / 14, 4)
    assert "frustration" in d.details["signals"]
    assert "it also explains" in d.summary
    # A consequence adds no sessions (9 of its 14 are among the 12 refused, the 5 others are not
    # the refusal's doing) and no impact.
    [member] = [m for m in d.details["merged"] if m["role"] == "primary"]
    assert d.sessions_affected == member["sessions_affected"] == 12
    assert d.impact == member["impact"]
    check_breakdown(d, assignments, len(threads))


def test_a_trigger_that_comes_before_the_cause_is_no_consequence() -> None:
    # Frustration at turn 0, the refusal only at turn 1: the frustration did not follow it.
    threads, signals, assignments = consequence_store()
    moved = [Signal(**{**s.model_dump(), "turn_index": 0 if s.kind == "frustration" else 1})
             for s in signals]
    ds = diagnose(threads, moved, list(INTENTS.values()), assignments, config=DiagnoseConfig(
        opening_excluded_signals=()))
    assert all("consequences" not in d.details for d in ds)


def test_a_hypothesis_naming_its_root_cause_is_keyed_by_it() -> None:
    base = dict(summary="s", sessions_affected=5, share_of_sessions=0.1, rate_in_intent=0.5,
                rate_elsewhere=0.1, lift=5.0, p_value=0.01, q_value=0.02, impact=5.0, confidence=0.8)

    def dx(intent: str, mode: str, **details: object) -> Diagnosis:
        return Diagnosis(id=f"dx-{intent}", intent_id=intent, intent_name=intent, signal="refusal",
                         failure_mode=mode, details=details, **base)  # type: ignore[arg-type]

    section = "prompts/support.md#Plans and upgrades"
    a = dx("a", "prompt_instruction", root_cause=section)
    b = dx("b", "prompt_instruction", root_cause=section)
    c = dx("c", "prompt_instruction", root_cause="prompts/support.md#Billing")
    assert mechanism_key(a) == mechanism_key(b) != mechanism_key(c)
    # Ungrounded answers are keyed by tool; two tools, two keys; nothing to key an unexplained by.
    assert mechanism_key(dx("a", "ungrounded_answer", tool="search_kb")) != mechanism_key(
        dx("b", "ungrounded_answer", tool="search_docs"))
    assert mechanism_key(dx("a", "unexplained", root_cause=section)) is None
    assert mechanism_key(dx("a", "tool_failure", tool="lookup_order", errors=3, empty_results=0)) != \
        mechanism_key(dx("a", "tool_failure", tool="lookup_order", errors=0, empty_results=3))


def test_a_regression_headline_names_the_section_the_change_dropped() -> None:
    dropped = prompt(SUPPORT_V1.text.replace(
        "## Order tracking\n"
        "Use the track_order tool with the order number to give the carrier and delivery date.\n", ""))
    threads, signals, assignments = consequence_store(dropped)
    [d] = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert d.failure_mode == "regression"
    assert (f"because prompts/support.md dropped its 'Order tracking' section in version "
            f"{dropped.sha256[:12]}, ") in d.headline
    # A change that removes no heading names the line it rewrote ...
    threads, signals, assignments = consequence_store()
    [d] = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert "dropped its" not in d.headline
    assert ("because prompts/support.md changed the line 'Use the track_order tool with the order "
            f"number to give the carrier and…' in version {SUPPORT_V2.sha256[:12]}, ") in d.headline
    # ... or dropped (a renumbered list step is not a change: only the removed step is named).
    steps = "1. Open Settings.\n2. Check the carrier page.\n3. Reply with the date.\n"
    v1 = prompt(SUPPORT_V1.text + steps)
    v2 = prompt(SUPPORT_V1.text + "1. Open Settings.\n2. Reply with the date.\n")
    threads, signals, assignments = consequence_store(v2, old=v1)
    [d] = diagnose(threads, signals, list(INTENTS.values()), assignments)
    assert (f"because prompts/support.md dropped the line 'Check the carrier page.' in version "
            f"{v2.sha256[:12]}, ") in d.headline


def test_a_member_below_the_privacy_floor_is_counted_not_named() -> None:
    refund = refused("rf", REFUND_ASKS, 16, 12, NO_REFUNDS)
    warranty = refused("wr", WARRANTY_ASKS, 5, 4, NO_REFUNDS)
    ds, threads, assignments = run((*refund, "refund"), (*warranty, "warranty"))
    gap = next(d for d in ds if d.failure_mode == "coverage_gap")
    small = [m for m in gap.details["merged"] if m["sessions_affected"] < MIN_GROUP_SIZE]
    assert [m["intent_id"] for m in small] == ["int-warranty"], gap.details["merged"]
    # It counts (sessions, breakdown) but the summary, which goes into reports and PR bodies,
    # does not name a group of fewer than MIN_GROUP_SIZE threads.
    assert gap.sessions_affected == 12 + 4
    check_breakdown(gap, assignments, len(threads))
    assert INTENTS["warranty"].name not in gap.summary
    assert "the same root cause in 1 smaller group (4 sessions)" in gap.summary
