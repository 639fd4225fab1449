"""Assemble a :class:`ReportData` from everything in a store.

The report computes nothing of its own; this module is where the loop's numbers are gathered for
it: totals, intents and their trend, the intent x signal matrix, the ranked diagnoses, the fixes
with their measured effect, the threads cited as evidence, and loop health.

Aggregation privacy: the page talks about groups, never about one person's conversation. An
intent, a matrix cell or a diagnosis backed by fewer than ``min_group_size`` distinct threads is
left out (and so are the matrix row of a hidden intent, and the fixes, timelines and evidence of
a hidden diagnosis); the number of hidden groups (intents, cells of shown intents, diagnoses) is
shown as ``suppressed_groups``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select

from ..errors import ConfigError
from ..measure._cohorts import (
    MEASURED_STATUSES,
    FixMeasurementResult,
    _Source,
    cohorts_for_fix,
    measure_fix,
)
from ..measure._stats import wilson_interval
from ..store._tables import SignalRow, ThreadRow, TurnRow
from ..types import Fix
from ._model import FixMeasurement, LoopHealth, MeasurementPoint, ReportData, SignalCell, Totals

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..store import Store

__all__ = ["Progress", "build_report_data", "to_fix_measurement"]

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``, called as the report is assembled."""


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_fix_measurement(fix: Fix, result: FixMeasurementResult) -> FixMeasurement | None:
    """The report's view of a measurement (None when it has no comparison yet).

    The decision and reason are the measurement's own (a guardrail may have turned the intent's
    keep into a revert); the chart series has one point per day and cohort when a cohort spans
    more than one day.
    """
    c = result.comparison
    if c is None:
        return None
    series: list[MeasurementPoint] = []
    by_phase = Counter(p.phase for p in result.series)
    if by_phase["before"] > 1 or by_phase["after"] > 1:
        for p in result.series:
            if p.n == 0:
                continue
            low, high = wilson_interval(p.x, p.n)
            series.append(MeasurementPoint(label=p.label, phase=p.phase, rate=p.x / p.n,
                                           ci_low=low, ci_high=high, n=p.n))
    m = FixMeasurement.from_comparison(c, series=series)
    where = f" in {result.intent_name}" if result.intent_name and result.intent_name not in fix.metric else ""
    return m.model_copy(update={
        "metric": (fix.metric or m.metric) + where,
        "decision": result.decision,
        "reason": result.reason,
        "threads_needed": result.threads_needed,
    })


def _periods(first: datetime, last: datetime, unit: Literal["day", "week"]) -> list[str]:
    out: list[str] = []
    d = first.date()
    end = last.date()
    step = timedelta(days=1 if unit == "day" else 7)
    if unit == "week":
        d -= timedelta(days=d.weekday())
    while d <= end:
        out.append(_period(d, unit))
        d += step
    return out


def _period(d: date | datetime, unit: Literal["day", "week"]) -> str:
    day = d.date() if isinstance(d, datetime) else d
    if unit == "day":
        return day.isoformat()
    y, w, _ = day.isocalendar()
    return f"{y}-W{w:02d}"


def build_report_data(
    store: Store,
    *,
    title: str = "loop-middleware report",
    min_group_size: int = 5,
    measurements: Mapping[str, FixMeasurement | FixMeasurementResult] | None = None,
    measure: bool = True,
    trend: Literal["auto", "day", "week"] = "auto",
    progress: Progress | None = None,
    now: datetime | None = None,
) -> ReportData:
    """Everything the report shows, read from ``store``.

    Args:
        store: The loop's store (after extract, diagnose and, ideally, measure).
        title: Page title.
        min_group_size: Fewest distinct threads behind an intent, matrix cell or diagnosis for it
            to be shown (1 shows everything).
        measurements: Precomputed measurements by fix id (``FixMeasurement`` or the measure
            stage's ``FixMeasurementResult``). When omitted and ``measure`` is true, every opened,
            merged, kept or reverted fix whose after cohort has threads is measured here, without
            recording a sequential look (the last recorded look is re-evaluated).
        measure: Measure fixes when ``measurements`` is omitted.
        trend: Period of the intent trend; ``auto`` uses days up to 31 days of data, else weeks.
        progress: Called with ``(step, done, total)``.
        now: ``generated_at`` (default: now).

    Raises:
        ConfigError: ``min_group_size`` < 1.
    """
    if min_group_size < 1:
        raise ConfigError(f"min_group_size must be >= 1, got {min_group_size}")
    k = min_group_size
    steps = 7

    def tick(step: str, done: int, total: int = steps) -> None:
        if progress is not None:
            progress(step, done, total)

    # 1. totals and thread times (light queries: no message payloads are read)
    tick("totals", 0)
    th = ThreadRow.__table__.c  # type: ignore[attr-defined]
    with store.session() as s:
        times = {r[0]: _utc(r[1]) for r in s.execute(select(th.thread_id, th.created_at)).all()}
        turns = int(s.execute(select(func.count()).select_from(TurnRow.__table__)).scalar_one())  # type: ignore[attr-defined]
        sig = SignalRow.__table__.c  # type: ignore[attr-defined]
        fired_rows = s.execute(select(sig.thread_id, sig.kind)).all()
    stamps = [t for t in times.values() if t is not None]
    totals = Totals(threads=len(times), turns=turns, first_at=min(stamps) if stamps else None,
                    last_at=max(stamps) if stamps else None)

    # 2. intents, with privacy
    tick("intents", 1)
    suppressed = 0
    top = store.load_assignments()
    leaf = store.load_assignments(leaf=True)
    top_counts = Counter(a for a in top.values() if a)
    leaf_counts = Counter(a for t, a in leaf.items() if a and a != top.get(t))
    shown_intents = []
    for intent in store.load_intents():
        n = top_counts.get(intent.id, 0) if intent.parent_id is None else leaf_counts.get(intent.id, 0)
        if n < k:
            suppressed += 1
            continue
        shown_intents.append(intent.model_copy(update={"size": n}))
    shown_ids = {i.id for i in shown_intents}
    top_shown = {i.id for i in shown_intents if i.parent_id is None}

    # 3. trend per intent
    tick("trend", 2)
    intent_trend: dict[str, list[tuple[str, int]]] = {}
    if stamps:
        assert totals.first_at is not None and totals.last_at is not None
        unit: Literal["day", "week"] = (
            trend if trend != "auto"
            else ("day" if totals.last_at - totals.first_at <= timedelta(days=31) else "week")
        )
        periods = _periods(totals.first_at, totals.last_at, unit)
        per: dict[str, Counter[str]] = defaultdict(Counter)
        for tid, intent_id in top.items():
            at = times.get(tid)
            if intent_id in top_shown and at is not None:
                per[intent_id][_period(at, unit)] += 1
        intent_trend = {i: [(p, per[i].get(p, 0)) for p in periods] for i in sorted(per)}

    # 4. the intent x signal matrix (distinct threads)
    tick("signals", 3)
    cell_threads: dict[tuple[str, str], set[str]] = defaultdict(set)
    for tid, kind in fired_rows:
        intent_id = top.get(tid)
        if intent_id in top_shown:
            cell_threads[(intent_id, kind)].add(tid)
    matrix: list[SignalCell] = []
    for (intent_id, kind), tids in sorted(cell_threads.items()):
        if len(tids) < k:
            suppressed += 1
            continue
        matrix.append(SignalCell(intent_id=intent_id, signal=kind, count=len(tids),
                                 rate=len(tids) / top_counts[intent_id]))

    # 5. diagnoses and fixes
    tick("diagnoses", 4)
    diagnoses = []
    for d in store.load_diagnoses():
        hidden_intent = d.intent_id is not None and d.intent_id not in shown_ids
        if d.sessions_affected < k or hidden_intent:
            suppressed += 1
            continue
        diagnoses.append(d)
    shown_dx = {d.id for d in diagnoses}

    def fix_dx(f: Fix) -> str:
        return str((f.details or {}).get("reverts_diagnosis_id") or f.diagnosis_id)

    fixes = [f for f in store.load_fixes() if fix_dx(f) in shown_dx]

    # 6. measurements
    tick("measurements", 5)
    measured: dict[str, FixMeasurement] = {}
    if measurements is not None:
        by_id = {f.id: f for f in fixes}
        for fix_id, m in measurements.items():
            if fix_id not in by_id:
                continue  # the fix is hidden (or unknown): so is its measurement
            if isinstance(m, FixMeasurementResult):
                fm = to_fix_measurement(by_id[fix_id], m)
                if fm is not None:
                    measured[fix_id] = fm
            else:
                measured[fix_id] = m
    elif measure:
        todo = [f for f in fixes if f.status in (*MEASURED_STATUSES, "reverted")]
        if todo:
            src = _Source.from_store(store)
            for i, fix in enumerate(todo):
                if progress is not None:
                    progress("measuring fixes", i, len(todo))
                try:
                    _, after = cohorts_for_fix(fix, src.threads,
                                               diagnosis=src.diagnoses.get(fix.diagnosis_id),
                                               prompt_versions=src.prompt_versions)
                    if not after.thread_ids:
                        continue
                    result = measure_fix(fix, src, record_look=False)
                except ConfigError:
                    continue  # a fix whose cohorts cannot be defined has no measurement yet
                fm = to_fix_measurement(fix, result)
                if fm is not None:
                    measured[fix.id] = fm
            if progress is not None:
                progress("measuring fixes", len(todo), len(todo))

    # 7. evidence threads, their signals, loop health
    tick("threads", 6)
    cited = list(dict.fromkeys(e.thread_id for d in diagnoses for e in d.evidence))
    threads = store.list_threads(thread_ids=cited) if cited else []
    thread_signals = store.load_signals(thread_ids=cited) if cited else []
    # Imported here: measure._health builds report models, so a module-level import would make
    # the two packages' __init__ files import each other.
    from ..measure._health import failure_mode_key, loop_health

    health, _ = loop_health(store)
    keys = {failure_mode_key(d) for d in diagnoses}
    health = LoopHealth(timelines=[t for t in health.timelines if t.key in keys])
    embedder, note = _embedder_of(store)
    tick("done", steps)
    return ReportData(
        title=title,
        generated_at=_utc(now) or datetime.now(UTC),
        store=store.safe_url,
        totals=totals,
        intents=shown_intents,
        intent_trend=intent_trend,
        signal_matrix=matrix,
        diagnoses=diagnoses,
        fixes=fixes,
        measurements=measured,
        threads=threads,
        thread_signals=thread_signals,
        health=health,
        suppressed_groups=suppressed,
        min_group_size=k,
        embedder=embedder,
        embedder_note=note,
    )


def _embedder_of(store: Store) -> tuple[str, str]:
    """The embedder the stored intent model was built with, and what it means for quality."""
    from ..extract._extract import MODEL_KEY
    from ..extract._status import describe_embedder

    model = store.get_meta(MODEL_KEY)
    name = str(model.get("embedder") or "") if isinstance(model, dict) else ""
    return name, describe_embedder(name) if name else ""
