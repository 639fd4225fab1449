"""Loop health from the store: how fast each failure mode goes from first seen to a confirmed fix.

A *failure mode* is one intent x diagnosed failure mode (``refund/coverage_gap``): the key stays the
same when the prompt it is diagnosed against changes, so its whole life is one timeline:

* ``first_seen`` -- the earliest thread of the intent on which the diagnosis' signal fired;
* ``diagnosed`` -- when the diagnosis row was first written;
* ``pr_opened`` -- when a fix for it was opened (``details["opened_at"]``, else the fix's time);
* ``merged`` -- ``details["merged_at"]``;
* ``confirmed`` / ``reverted`` -- when the measurement decided (``details["decided_at"]``);
* ``recurred`` -- after a confirmed fix, a later cohort of the intent is back at (or above) the
  before-rate and significantly above the rate that confirmed the fix.

The summary gives the medians the report shows (time to diagnosis, to PR, to confirmation) and the
intent mix cohort over cohort (cohort = the prompt version that served the thread), so a change in
traffic is visible next to the fixes.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..report._model import FailureModeTimeline, HealthEvent, HealthStage, LoopHealth
from ..store._tables import (
    DiagnosisRow,
    FixRow,
    LLMCallRow,
    PromptVersionRow,
    SignalRow,
    ThreadRow,
    TurnRow,
)
from ..types import Diagnosis, Fix, FixKind
from ._cohorts import UNASSIGNED
from ._stats import newcombe_diff_interval

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..store import Store

__all__ = [
    "HealthSummary",
    "IntentMix",
    "failure_mode_key",
    "health_summary",
    "intent_mix",
    "loop_health",
    "thread_prompt_shas",
]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str) and value:
        try:
            return _utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def _situation(diagnosis: Diagnosis) -> str | None:
    """The trigger signal kind of a situation regression ("after X, Y in every intent")."""
    situation = (diagnosis.details or {}).get("situation")
    return str(situation) if diagnosis.intent_id is None and situation else None


def failure_mode_key(diagnosis: Diagnosis) -> str:
    """``<intent id>/<failure mode>``: one timeline per intent and failure mode; a situation
    regression (no intent) has ``after:<trigger kind>/<failure mode>``."""
    situation = _situation(diagnosis)
    if situation is not None:
        return f"after:{situation}/{diagnosis.failure_mode}"
    return f"{diagnosis.intent_id or UNASSIGNED}/{diagnosis.failure_mode}"


class IntentMix(BaseModel):
    """The intent distribution of one cohort (the threads served by one prompt version)."""

    model_config = ConfigDict(extra="forbid")

    cohort: str
    prompt_sha256: str | None
    start: datetime | None
    threads: int
    shares: dict[str, float]
    """``intent id -> share of the cohort's threads`` (unassigned threads under ``(unassigned)``)."""


class HealthSummary(BaseModel):
    """Headline numbers of loop health."""

    model_config = ConfigDict(extra="forbid")

    failure_modes: int = 0
    diagnosed: int = 0
    prs_opened: int = 0
    confirmed: int = 0
    reverted: int = 0
    recurred: int = 0
    median_time_to_diagnosis: timedelta | None = None
    """First seen -> diagnosed."""
    median_time_to_pr: timedelta | None = None
    """Diagnosed -> PR opened."""
    median_time_to_confirmed: timedelta | None = None
    """PR opened -> confirmed by measurement."""
    median_time_to_fix: timedelta | None = None
    """First seen -> confirmed: the whole loop."""
    intent_mix: list[IntentMix] = Field(default_factory=list)
    """Cohort over cohort, oldest first."""


# --- reading the store (light queries: no message payloads) -------------------------------------


def _thread_times(store: Store) -> dict[str, datetime | None]:
    c = ThreadRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        return {r[0]: _utc(r[1]) for r in s.execute(select(c.thread_id, c.created_at)).all()}


def _fired(store: Store) -> dict[str, set[str]]:
    c = SignalRow.__table__.c  # type: ignore[attr-defined]
    out: dict[str, set[str]] = defaultdict(set)
    with store.session() as s:
        for tid, kind in s.execute(select(c.thread_id, c.kind)).all():
            out[tid].add(kind)
    return out


def thread_prompt_shas(store: Store) -> dict[str, str]:
    """``thread_id -> sha`` of the prompt version serving the thread's first LLM call having one.

    Read from the call and turn rows directly (no thread is rebuilt), so it is cheap on a large
    store. Same rule as :func:`~loop_middleware.measure._cohorts.thread_prompt_sha`.
    """
    lc = LLMCallRow.__table__.c  # type: ignore[attr-defined]
    tc = TurnRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        turn_start = {r[0]: _utc(r[1]) for r in s.execute(select(tc.id, tc.started_at)).all()}
        calls = s.execute(select(lc.thread_id, lc.turn_id, lc.seq, lc.prompt_shas)).all()
    floor = datetime.min.replace(tzinfo=UTC)
    best: dict[str, tuple[tuple[datetime, str, int], str]] = {}
    for tid, turn_id, seq, shas in calls:
        if not shas:
            continue
        key = (turn_start.get(turn_id) or floor, turn_id, seq or 0)
        if tid not in best or key < best[tid][0]:
            best[tid] = (key, shas[0])
    return {tid: sha for tid, (_, sha) in best.items()}


def _diagnoses_with_times(store: Store) -> list[tuple[Diagnosis, datetime | None]]:
    c = DiagnosisRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        rows = s.execute(select(c.payload, c.created_at)).all()
    return [(Diagnosis.model_validate(p), _utc(t)) for p, t in rows]


def _fixes_with_times(store: Store) -> list[tuple[Fix, datetime | None]]:
    c = FixRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        rows = s.execute(select(c.payload, c.created_at).order_by(c.created_at)).all()
    return [(Fix.model_validate(p), _utc(t)) for p, t in rows]


def _prompt_names(store: Store) -> dict[str, str | None]:
    c = PromptVersionRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        return {r[0]: r[1] for r in s.execute(select(c.sha256, c.name)).all()}


# --- building the timelines ----------------------------------------------------------------------


def _fix_events(
    fix: Fix, row_time: datetime | None, threads_at: Mapping[str, datetime | None],
    in_intent: set[str], kinds: set[str], fired: Mapping[str, set[str]],
    min_n: int, alpha: float,
) -> list[HealthEvent]:
    d = fix.details or {}
    ev: list[HealthEvent] = []
    shipped = fix.status in ("opened", "merged", "kept", "reverted") or fix.pr_url or fix.branch
    opened = _time(d.get("opened_at")) or _utc(fix.created_at) or row_time
    reverting = fix.kind == FixKind.REVERT
    if shipped and opened is not None:
        ev.append(HealthEvent(stage="pr_opened", at=opened, fix_id=fix.id, url=fix.pr_url,
                              note=("revert: " if reverting else "") + fix.title))
    merged = _time(d.get("merged_at"))
    if merged is not None:
        ev.append(HealthEvent(stage="reverted" if reverting else "merged", at=merged, fix_id=fix.id,
                              url=fix.pr_url, note=fix.title))
    decided = _time(d.get("decided_at")) or _time((d.get("measurement") or {}).get("at"))
    if decided is not None and not reverting and fix.status in ("kept", "reverted"):
        stage: HealthStage = "confirmed" if fix.status == "kept" else "reverted"
        m = d.get("measurement") or {}
        note: str = fix.status
        if "delta" in m:
            note = f"{fix.status}: {m['before_rate']:.1%} -> {m['after_rate']:.1%}"
        ev.append(HealthEvent(stage=stage, at=decided, fix_id=fix.id, url=fix.pr_url, note=note))
        if fix.status == "kept":
            back = _recurrence(m, decided, threads_at, in_intent, kinds, fired, min_n, alpha)
            if back is not None:
                ev.append(back.model_copy(update={"fix_id": fix.id}))
    return ev


def _recurrence(
    m: Mapping[str, Any], decided: datetime, threads_at: Mapping[str, datetime | None],
    in_intent: set[str], kinds: set[str], fired: Mapping[str, set[str]], min_n: int, alpha: float,
) -> HealthEvent | None:
    """The failure mode came back: the intent's threads after the keep decision fail at least as
    often as before the fix, and significantly more often than in the cohort that confirmed it."""
    if not {"before_rate", "after_x", "after_n"} <= m.keys() or not m["after_n"]:
        return None
    later = [t for t in in_intent if (threads_at.get(t) or decided) > decided]
    if len(later) < max(min_n, 1):
        return None
    x = sum(1 for t in later if fired.get(t, set()) & kinds)
    rate = x / len(later)
    low, _ = newcombe_diff_interval(int(m["after_x"]), int(m["after_n"]), x, len(later), alpha=alpha)
    if rate < float(m["before_rate"]) or low <= 0.0:
        return None
    last = max(threads_at[t] for t in later if threads_at.get(t) is not None)  # type: ignore[type-var]
    assert last is not None
    return HealthEvent(
        stage="recurred", at=last,
        note=(f"back to {rate:.1%} of {len(later)} threads after the fix "
              f"(was {float(m['before_rate']):.1%} before it, {int(m['after_x']) / int(m['after_n']):.1%} "
              "when confirmed)"),
    )


def _median(values: Iterable[timedelta]) -> timedelta | None:
    secs = [v.total_seconds() for v in values if v.total_seconds() >= 0]
    return timedelta(seconds=statistics.median(secs)) if secs else None


def _gap(t: FailureModeTimeline, a: HealthStage, b: HealthStage) -> timedelta | None:
    ea, eb = t.first(a), t.first(b)
    return eb.at - ea.at if ea is not None and eb is not None else None


def health_summary(health: LoopHealth, intent_mix: list[IntentMix] | None = None) -> HealthSummary:
    """Counts and median durations over the timelines of ``health``."""
    tl = health.timelines

    def has(stage: HealthStage) -> int:
        return sum(1 for t in tl if t.first(stage) is not None)

    def med(a: HealthStage, b: HealthStage) -> timedelta | None:
        return _median(g for g in (_gap(t, a, b) for t in tl) if g is not None)

    return HealthSummary(
        failure_modes=len(tl), diagnosed=has("diagnosed"), prs_opened=has("pr_opened"),
        confirmed=has("confirmed"), reverted=has("reverted"), recurred=has("recurred"),
        median_time_to_diagnosis=med("first_seen", "diagnosed"),
        median_time_to_pr=med("diagnosed", "pr_opened"),
        median_time_to_confirmed=med("pr_opened", "confirmed"),
        median_time_to_fix=med("first_seen", "confirmed"),
        intent_mix=intent_mix or [],
    )


def intent_mix(store: Store, assignments: Mapping[str, str | None] | None = None) -> list[IntentMix]:
    """The intent distribution per prompt-version cohort, oldest cohort first."""
    shas = thread_prompt_shas(store)
    times = _thread_times(store)
    assign = store.load_assignments() if assignments is None else assignments
    names = _prompt_names(store)
    members: dict[str | None, list[str]] = defaultdict(list)
    for tid in times:
        members[shas.get(tid)].append(tid)
    out = []
    for sha, ids in members.items():
        counts = Counter(assign.get(t) or UNASSIGNED for t in ids)
        starts = [times[t] for t in ids if times.get(t) is not None]
        label = f"{names.get(sha) or 'prompt'} {sha[:12]}" if sha else "(no prompt version)"
        out.append(IntentMix(
            cohort=label, prompt_sha256=sha, start=min(starts) if starts else None,  # type: ignore[type-var]
            threads=len(ids), shares={k: v / len(ids) for k, v in sorted(counts.items())},
        ))
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda m: (m.start or floor, m.cohort))


def loop_health(
    store: Store, *, recurrence_min_n: int = 20, alpha: float = 0.05,
) -> tuple[LoopHealth, HealthSummary]:
    """Build the loop-health timelines and their summary from everything in ``store``.

    Args:
        store: The store (diagnoses, fixes with their ``details``, signals, assignments).
        recurrence_min_n: Threads of the intent after a keep decision needed to call a recurrence.
        alpha: Two-sided level of the recurrence test.

    Returns:
        ``(LoopHealth, HealthSummary)``; timelines ordered by when the failure mode was first seen.
    """
    times = _thread_times(store)
    fired = _fired(store)
    top = store.load_assignments()
    leaf = store.load_assignments(leaf=True)
    top_ids = set(top.values())
    diagnoses = _diagnoses_with_times(store)
    fixes = _fixes_with_times(store)

    by_key: dict[str, list[tuple[Diagnosis, datetime | None]]] = defaultdict(list)
    for d, at in diagnoses:
        by_key[failure_mode_key(d)].append((d, at))
    fixes_by_dx: dict[str, list[tuple[Fix, datetime | None]]] = defaultdict(list)
    for f, at in fixes:
        dx = str((f.details or {}).get("reverts_diagnosis_id") or f.diagnosis_id)
        fixes_by_dx[dx].append((f, at))

    timelines: list[FailureModeTimeline] = []
    for key, group in by_key.items():
        first_d = group[0][0]
        intent_id = first_d.intent_id
        situation = _situation(first_d)
        if situation is not None:
            # A situation spans intents: its threads are those where the trigger fired.
            in_intent = {t for t, kinds_fired in fired.items() if situation in kinds_fired}
        else:
            assign = leaf if intent_id is not None and intent_id not in top_ids else top
            in_intent = {t for t, a in assign.items() if a == intent_id}
        kinds = {k for d, _ in group for k in (d.details.get("signals") or [d.signal])}
        events: list[HealthEvent] = []
        seen = [at for t in in_intent if fired.get(t, set()) & kinds
                and (at := times.get(t)) is not None]
        if seen:
            events.append(HealthEvent(stage="first_seen", at=min(seen),
                                      note=f"{'/'.join(sorted(kinds))} in {first_d.intent_name}"))
        for d, at in group:
            if at is not None:
                events.append(HealthEvent(stage="diagnosed", at=at, diagnosis_id=d.id,
                                          note=d.summary[:200]))
            for f, row_at in fixes_by_dx.get(d.id, []):
                events += [e.model_copy(update={"diagnosis_id": d.id}) for e in _fix_events(
                    f, row_at, times, in_intent, kinds, fired, recurrence_min_n, alpha)]
        events.sort(key=lambda e: e.at)
        label = f"{first_d.intent_name}: {first_d.failure_mode.replace('_', ' ')} ({first_d.signal})"
        timelines.append(FailureModeTimeline(key=key, label=label, events=events))
    floor = datetime.max.replace(tzinfo=UTC)
    timelines.sort(key=lambda t: (t.events[0].at if t.events else floor, t.key))
    health = LoopHealth(timelines=timelines)
    return health, health_summary(health, intent_mix(store, top))
