"""Loop health from the store: timelines per failure mode, medians, recurrence, intent mix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from loop_middleware import Diagnosis, Fix, FixKind, Signal, Store
from loop_middleware.measure._health import loop_health, thread_prompt_shas
from tests.measure.test_cohorts import BASE_PROMPT, build_keep_scenario

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


def _dx(dx_id: str, intent: str, mode: str, signal: str = "refusal") -> Diagnosis:
    return Diagnosis(
        id=dx_id, intent_id=intent, intent_name=intent, signal=signal, failure_mode=mode,
        summary=f"{intent} {mode}", sessions_affected=6, share_of_sessions=0.3, rate_in_intent=0.6,
        rate_elsewhere=0.1, lift=6.0, p_value=0.001, q_value=0.01, impact=6.0, confidence=0.8,
    )


def _fix(fix_id: str, dx_id: str, opened: datetime, merged: datetime, decided: datetime,
         status: str = "kept") -> Fix:
    return Fix(
        id=fix_id, diagnosis_id=dx_id, kind=FixKind.PROMPT_EDIT, target_file="p.md", diff="",
        title=fix_id, rationale="", metric="refusal rate", status=status,  # type: ignore[arg-type]
        created_at=opened, pr_url=f"https://github.com/acme/a/pull/{fix_id}",
        details={"opened_at": opened.isoformat(), "merged_at": merged.isoformat(),
                 "decided_at": decided.isoformat(), "decision": "keep" if status == "kept" else "revert",
                 "measurement": {"before_rate": 0.6, "after_rate": 0.1, "after_x": 1, "after_n": 10,
                                 "delta": -0.5}},
    )


def test_timelines_and_medians_from_stored_times(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    rows: list[tuple[str, dict[str, object]]] = []
    signals = []
    assignments: dict[str, tuple[str | None, str | None]] = {}
    for i in range(20):
        tid = f"t{i}"
        intent = "refund" if i < 10 else "orders"
        rows.append(("thread", {"thread_id": tid, "created_at": T0 + timedelta(minutes=i)}))
        assignments[tid] = (intent, None)
        if i % 2 == 0:
            signals.append(Signal(thread_id=tid, kind="refusal", turn_index=0))
    store.write_rows(rows)
    store.save_signals([f"t{i}" for i in range(20)], signals)
    store.save_assignments(assignments)
    # Diagnosed 1 h / 3 h after the first failing thread; PRs 2 h / 4 h later; confirmed or reverted.
    store.write_rows([
        ("diagnosis", {"id": "dx-a", "intent_id": "refund", "failure_mode": "coverage_gap",
                       "created_at": T0 + timedelta(hours=1),
                       "payload": _dx("dx-a", "refund", "coverage_gap").model_dump(mode="json")}),
        ("diagnosis", {"id": "dx-b", "intent_id": "orders", "failure_mode": "tool_failure",
                       "created_at": T0 + timedelta(minutes=10, hours=3),
                       "payload": _dx("dx-b", "orders", "tool_failure").model_dump(mode="json")}),
    ])
    store.save_fixes([
        _fix("fa", "dx-a", T0 + timedelta(hours=3), T0 + timedelta(hours=4), T0 + timedelta(hours=9)),
        _fix("fb", "dx-b", T0 + timedelta(minutes=10, hours=7), T0 + timedelta(hours=8),
             T0 + timedelta(hours=20), status="reverted"),
    ])
    health, summary = loop_health(store)
    by_key = {t.key: t for t in health.timelines}
    assert set(by_key) == {"refund/coverage_gap", "orders/tool_failure"}
    a = by_key["refund/coverage_gap"]
    assert [e.stage for e in a.events] == ["first_seen", "diagnosed", "pr_opened", "merged", "confirmed"]
    first = a.first("first_seen")
    assert first is not None and first.at == T0  # t0 is the refund intent's first refusal
    b = by_key["orders/tool_failure"]
    first_b = b.first("first_seen")
    assert first_b is not None and first_b.at == T0 + timedelta(minutes=10)
    assert b.first("reverted") is not None and b.first("confirmed") is None
    pr = a.first("pr_opened")
    assert pr is not None and pr.url == "https://github.com/acme/a/pull/fa"
    assert summary.failure_modes == 2 and summary.confirmed == 1 and summary.reverted == 1
    # to diagnosis: 1 h and 3 h -> median 2 h; to PR: 2 h and 4 h -> 3 h; confirmed: only fa, 6 h.
    assert summary.median_time_to_diagnosis == timedelta(hours=2)
    assert summary.median_time_to_pr == timedelta(hours=3)
    assert summary.median_time_to_confirmed == timedelta(hours=6)
    assert summary.median_time_to_fix == timedelta(hours=9)
    assert summary.recurred == 0 and not health.recurred


def test_loop_health_of_a_real_loop_and_a_failure_mode_that_comes_back(tmp_path: Path) -> None:
    scenario = build_keep_scenario(tmp_path / "host")
    w = scenario.world
    try:
        health, summary = loop_health(w.store)
        [timeline] = [t for t in health.timelines if t.first("confirmed") is not None]
        stages = [e.stage for e in timeline.events]
        for a, b in [("first_seen", "diagnosed"), ("diagnosed", "pr_opened"),
                     ("pr_opened", "merged"), ("merged", "confirmed")]:
            assert stages.index(a) < stages.index(b), stages
        assert not timeline.came_back
        assert summary.median_time_to_fix is not None and summary.median_time_to_fix > timedelta(0)
        # Intent mix cohort over cohort: one cohort per prompt version, oldest first.
        mix = summary.intent_mix
        assert [m.prompt_sha256 for m in mix] == [scenario.v1, scenario.other_sha, scenario.v2]
        assert [m.threads for m in mix] == [80, 6, 80]
        refund = w.intent_of_kind("refund")
        assert mix[0].shares[refund] == w.members(w.ran[scenario.v1], "refund") / 80
        assert all(abs(sum(m.shares.values()) - 1.0) < 1e-9 for m in mix)
        shas = thread_prompt_shas(w.store)
        assert {shas[t] for t in scenario.other_ids} == {scenario.other_sha}

        # Later someone ships a prompt without the refund section again: refunds fail as before.
        w.write_prompt(BASE_PROMPT + "\n## Style\n\nUse short sentences.\n")
        w.traffic(refund=30, order=10)
        w.extract()
        health, summary = loop_health(w.store, recurrence_min_n=20)
        [timeline] = [t for t in health.timelines if t.first("confirmed") is not None]
        back = timeline.first("recurred")
        confirmed = timeline.first("confirmed")
        assert back is not None and confirmed is not None and back.at > confirmed.at
        assert timeline in health.recurred and summary.recurred == 1
        assert len(summary.intent_mix) == 4
    finally:
        w.close()


def test_a_situation_regression_has_its_own_timeline_over_the_trigger_threads(tmp_path: Path) -> None:
    """A regression "after escalation, frustration (all intents)" has no intent: its timeline
    is keyed by the situation and first seen in a thread where the trigger fired, not in the
    unassigned threads."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    store.write_rows([("thread", {"thread_id": f"t{i}", "created_at": T0 + timedelta(minutes=i)})
                      for i in range(6)])
    signals = [
        Signal(thread_id="t0", kind="frustration", turn_index=0),  # unassigned, no escalation
        Signal(thread_id="t1", kind="frustration", turn_index=0),  # an intent, no escalation
        Signal(thread_id="t3", kind="escalation", turn_index=0),
        Signal(thread_id="t3", kind="frustration", turn_index=1),  # the situation, first
        Signal(thread_id="t5", kind="escalation", turn_index=0),
        Signal(thread_id="t5", kind="frustration", turn_index=1),
    ]
    store.save_signals([f"t{i}" for i in range(6)], signals)
    store.save_assignments({"t0": (None, None), "t1": ("orders", None), "t3": ("orders", None),
                            "t5": ("refund", None)})
    dx = _dx("dx-s", "x", "regression", signal="frustration").model_copy(update={
        "intent_id": None, "intent_name": "after escalation (all intents)",
        "details": {"situation": "escalation", "signals": ["frustration"]}})
    unassigned = _dx("dx-u", "x", "regression", signal="frustration").model_copy(update={
        "intent_id": None, "intent_name": "(unassigned)"})
    store.write_rows([
        ("diagnosis", {"id": d.id, "intent_id": None, "failure_mode": "regression",
                       "created_at": T0 + timedelta(hours=1), "payload": d.model_dump(mode="json")})
        for d in (dx, unassigned)
    ])
    health, _ = loop_health(store)
    by_key = {t.key: t for t in health.timelines}
    assert set(by_key) == {"after:escalation/regression", "(unassigned)/regression"}
    first = by_key["after:escalation/regression"].first("first_seen")
    assert first is not None and first.at == T0 + timedelta(minutes=3)
    first_u = by_key["(unassigned)/regression"].first("first_seen")
    assert first_u is not None and first_u.at == T0  # t0: the one unassigned thread
