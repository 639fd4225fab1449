"""The input contract of the report: everything one HTML page shows, as pydantic models.

The loop fills a :class:`ReportData` from the other stages' outputs and hands it to
:func:`~loop_middleware.report._render.render_report`. The report computes nothing of its own
beyond layout (sorting, matrix shaping, formatting): every number on the page is a number the
loop put here, so the page can never disagree with the stages that produced it.

Conversation text (thread messages, tool arguments, quotes, intent names built from users' own
words) is *untrusted*: the renderer escapes all of it. Nothing here needs to be pre-escaped.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loop_middleware.types import Diagnosis, Fix, Intent, Signal, Thread

if TYPE_CHECKING:  # pragma: no cover - typing only; the report does not need measure at run time
    from loop_middleware.measure._stats import CohortComparison

__all__ = [
    "Decision",
    "FailureModeTimeline",
    "FixMeasurement",
    "HealthEvent",
    "HealthStage",
    "LoopHealth",
    "MeasurementPoint",
    "ReportData",
    "SignalCell",
    "Totals",
]

Decision = Literal["keep", "revert", "wait"]
HealthStage = Literal[
    "first_seen", "diagnosed", "pr_opened", "merged", "confirmed", "reverted", "recurred"
]
"""The life of a failure mode in the loop, in order; ``recurred`` = it came back after a fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Totals(_Model):
    """What the report covers."""

    threads: int = Field(ge=0)
    turns: int = Field(ge=0)
    first_at: datetime | None = None
    """Start of the analysed date range (first thread)."""
    last_at: datetime | None = None
    """End of the analysed date range (last thread)."""


class SignalCell(_Model):
    """One cell of the intent x failure-signal matrix."""

    intent_id: str
    signal: str
    count: int = Field(ge=0)
    """Threads of the intent on which the signal fired."""
    rate: float = Field(ge=0.0, le=1.0)
    """``count`` / threads in the intent."""


class MeasurementPoint(_Model):
    """One cohort (or time bucket) of a fix's before/after series, for the chart."""

    label: str
    """Cohort or period label shown on the x axis, e.g. ``2025-06-02`` or ``week 23``."""
    phase: Literal["before", "after"]
    rate: float = Field(ge=0.0, le=1.0)
    ci_low: float = Field(ge=0.0, le=1.0)
    ci_high: float = Field(ge=0.0, le=1.0)
    n: int = Field(ge=0)
    """Threads in the bucket."""


class FixMeasurement(_Model):
    """A fix's measured effect: the before and after cohorts and the keep/revert/wait decision."""

    metric: str
    """The rate measured, e.g. ``coverage_gap rate in intent refund``."""
    before_rate: float = Field(ge=0.0, le=1.0)
    before_ci: tuple[float, float]
    before_n: int = Field(ge=0)
    after_rate: float = Field(ge=0.0, le=1.0)
    after_ci: tuple[float, float]
    after_n: int = Field(ge=0)
    delta: float = Field(ge=-1.0, le=1.0)
    """``after_rate - before_rate`` (negative = fewer failures)."""
    delta_ci: tuple[float, float]
    ci_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Level of ``delta_ci`` (sequential looks test below 0.95 early on)."""
    p_value: float | None = None
    decision: Decision
    reason: str = ""
    threads_needed: int | None = None
    """When waiting: more threads per cohort needed to decide."""
    series: list[MeasurementPoint] = Field(default_factory=list)
    """Per-cohort or per-period rates around the fix, for the before/after chart. When empty the
    chart shows the two pooled cohorts."""

    @model_validator(mode="after")
    def _intervals_ordered(self) -> FixMeasurement:
        for name in ("before_ci", "after_ci", "delta_ci"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} is not ordered: {low} > {high}")
        return self

    @classmethod
    def from_comparison(
        cls, comparison: CohortComparison, *, series: Iterable[MeasurementPoint] = ()
    ) -> FixMeasurement:
        """Build from the measure stage's :class:`CohortComparison` (one look)."""
        b, a = comparison.before, comparison.after
        return cls(
            metric=comparison.metric if comparison.intent is None
            else f"{comparison.metric} in {comparison.intent}",
            before_rate=b.rate, before_ci=(b.ci_low, b.ci_high), before_n=b.n,
            after_rate=a.rate, after_ci=(a.ci_low, a.ci_high), after_n=a.n,
            delta=comparison.delta, delta_ci=comparison.delta_ci,
            ci_level=comparison.delta_ci_level, p_value=comparison.p_value,
            decision=comparison.decision, reason=comparison.reason,
            threads_needed=comparison.threads_needed_more, series=list(series),
        )


class HealthEvent(_Model):
    """One step in the life of a failure mode."""

    stage: HealthStage
    at: datetime
    note: str = ""
    diagnosis_id: str | None = None
    fix_id: str | None = None
    url: str | None = None
    """A PR or issue link, when there is one (only http(s) links are made clickable)."""


class FailureModeTimeline(_Model):
    """Everything that happened to one failure mode (usually one intent x signal cell)."""

    key: str
    """Stable id, e.g. ``refund/coverage_gap``."""
    label: str
    """Human name shown on the timeline."""
    events: list[HealthEvent] = Field(default_factory=list)

    def first(self, stage: HealthStage) -> HealthEvent | None:
        """The earliest event of ``stage``, if any."""
        found = [e for e in self.events if e.stage == stage]
        return min(found, key=lambda e: e.at) if found else None

    @property
    def came_back(self) -> bool:
        """True when the failure mode recurred after a confirmed fix (or after any fix)."""
        return any(e.stage == "recurred" for e in self.events)


class LoopHealth(_Model):
    """The loop-health timeline: first seen -> diagnosed -> PR -> confirmed, per failure mode."""

    timelines: list[FailureModeTimeline] = Field(default_factory=list)

    @property
    def recurred(self) -> list[FailureModeTimeline]:
        """Failure modes that came back after a fix."""
        return [t for t in self.timelines if t.came_back]


class ReportData(_Model):
    """Everything the report shows. The loop fills it; :func:`render_report` renders it.

    Only ``generated_at`` and ``store`` are required: every other section has an empty default
    and the page then says "no data yet" for it.
    """

    title: str = "loop-middleware report"
    generated_at: datetime
    store: str
    """A description of the store the data came from (a redacted URL, a path)."""
    totals: Totals = Field(default_factory=lambda: Totals(threads=0, turns=0))
    intents: list[Intent] = Field(default_factory=list)
    intent_trend: dict[str, list[tuple[str, int]]] = Field(default_factory=dict)
    """``intent_id -> [(period_label, threads), ...]`` in period order."""
    signal_matrix: list[SignalCell] = Field(default_factory=list)
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    """Ranked, most impactful first (the order is kept as given)."""
    fixes: list[Fix] = Field(default_factory=list)
    measurements: dict[str, FixMeasurement] = Field(default_factory=dict)
    """``fix.id -> measurement`` for the fixes that have one."""
    threads: list[Thread] = Field(default_factory=list)
    """The threads cited as evidence (the thread view); not the whole store."""
    thread_signals: list[Signal] = Field(default_factory=list)
    """Signals fired on the threads above, shown on the turns they fired on."""
    health: LoopHealth = Field(default_factory=LoopHealth)
    suppressed_groups: int = Field(default=0, ge=0)
    """Groups (intents, cells) hidden because they held fewer threads than ``min_group_size``."""
    min_group_size: int | None = None
    embedder: str = ""
    """The embedder the stored intents were built with (empty: unknown, e.g. no intents yet)."""
    embedder_note: str = ""
    """For people: that embedder and the intent quality to expect from it (shown in the
    header, and as a notice when a better one exists)."""

    @model_validator(mode="after")
    def _measurements_match_fixes(self) -> ReportData:
        # A measurement for an unknown fix is a wiring bug upstream: say so instead of hiding it.
        unknown = sorted(set(self.measurements) - {f.id for f in self.fixes})
        if unknown:
            raise ValueError(f"measurements for unknown fix ids: {', '.join(unknown)}")
        return self

    def missing_evidence_threads(self) -> list[str]:
        """Thread ids cited by a diagnosis but absent from :attr:`threads` (shown unlinked)."""
        present = {t.thread_id for t in self.threads}
        cited = {e.thread_id for d in self.diagnoses for e in d.evidence}
        return sorted(cited - present)
