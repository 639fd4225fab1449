"""Stage 6 over the store: the cohorts around a fix, the keep/revert decision, revert proposals.

A fix is judged on the threads it actually served. For a prompt edit the *before* cohort is every
thread whose first LLM call was served by the prompt version the fix changed, and the *after*
cohort every thread served by the fixed version (its hash is computed by applying the fix's diff to
the old text, so the match is exact even when several prompt versions are live at once). For a
config or harness change no prompt hash moves, so the cohorts are bounded by the time the change
was merged.

Within the fix's intent the failure rate (share of threads on which the diagnosis' signal fired)
is compared with :func:`~loop_middleware.measure._stats.compare_rates`; every *other* intent with
enough threads is a guardrail (:func:`~loop_middleware.measure._stats.guardrail_check`), and the
overall rate is standardised to one intent mix (:func:`~loop_middleware.measure._stats.mix_adjusted_rates`)
so a shift of traffic between intents cannot fake an improvement.

Each call of :func:`measure_fix` on a store is one *look* of a group-sequential design: the
information fractions of earlier looks are kept in the store's meta table, so the alpha spent on
them is accounted for and repeated checking does not inflate the false keep/revert rate.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from ..errors import ConfigError, PatchError
from ..patch import AllowedPaths, apply_unified_diff, make_diff, markdown_headings
from ..patch._contract import single_file_patch
from ..prompts import sha256_text
from ..types import Diagnosis, Fix, FixKind, Intent, PromptVersion, Signal, Thread
from ._stats import (
    CohortComparison,
    Decision,
    GuardrailFlag,
    MixAdjusted,
    beta_binomial_posterior_prob_improvement,
    compare_rates,
    guardrail_check,
    information_fraction,
    mix_adjusted_rates,
    sample_size_per_group,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..patch import PublishResult
    from ..store import Store

__all__ = [
    "UNASSIGNED",
    "Cohort",
    "FixMeasurementResult",
    "SeriesPoint",
    "cohorts_for_fix",
    "fix_prompt_shas",
    "looks_key",
    "measure_all",
    "measure_fix",
    "measurement_summary",
    "propose_revert",
    "publish_revert",
    "reverse_diff",
    "thread_prompt_sha",
    "thread_time",
]

logger = logging.getLogger("loop_middleware.measure")

UNASSIGNED = "(unassigned)"
"""The intent key of threads without an intent (they still count in the overall rates)."""

MEASURED_STATUSES = ("opened", "merged", "kept")
"""Fix statuses :func:`measure_all` looks at."""


def looks_key(fix_id: str) -> str:
    """The meta key holding the look history of a fix."""
    return f"measure.looks.{fix_id}"


# --- threads and cohorts -----------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetimes: SQLite hands back naive ones (stored as UTC), callers give aware ones."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_time(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        out = _utc(value)
        assert out is not None
        return out
    if isinstance(value, str):
        try:
            out = _utc(datetime.fromisoformat(value))
        except ValueError:
            raise ConfigError(f"{what} is not an ISO time: {value!r}") from None
        assert out is not None
        return out
    raise ConfigError(f"{what} must be an ISO time string, got {value!r}")


def thread_time(thread: Thread) -> datetime | None:
    """When a thread started: its ``created_at``, else its first turn's start (UTC)."""
    if thread.created_at is not None:
        return _utc(thread.created_at)
    starts = [t.started_at for t in thread.turns if t.started_at is not None]
    return _utc(min(starts, key=lambda d: _utc(d) or d)) if starts else None


def _first_version(thread: Thread) -> PromptVersion | None:
    for turn in sorted(thread.turns, key=lambda t: t.index):
        for call in sorted(turn.llm_calls, key=lambda c: c.seq):
            if call.prompt_versions:
                return call.prompt_versions[0]
    return None


def thread_prompt_sha(thread: Thread) -> str | None:
    """The prompt version that served a thread: the main version of its first LLM call having one.

    A thread belongs to one cohort only; if the prompt changed mid-thread (a deploy during a
    long conversation), the version that opened it is the one judged.
    """
    pv = _first_version(thread)
    return pv.sha256 if pv is not None else None


class Cohort(BaseModel):
    """A set of threads compared as one group: served by one prompt version, or in a time window."""

    model_config = ConfigDict(extra="forbid")

    label: str
    """``before`` / ``after`` (with the version or the time bound), for tables and charts."""
    prompt_sha256: str | None = None
    """The prompt version that served every thread of the cohort; None for a time-bounded one."""
    start: datetime | None = None
    """Earliest thread (or the window's lower bound)."""
    end: datetime | None = None
    """Latest thread (or the window's upper bound)."""
    thread_ids: list[str] = Field(default_factory=list)

    @property
    def size(self) -> int:
        """Threads in the cohort."""
        return len(self.thread_ids)


def _span(threads: Sequence[Thread]) -> tuple[datetime | None, datetime | None]:
    times = [t for t in (thread_time(th) for th in threads) if t is not None]
    return (min(times), max(times)) if times else (None, None)


def _prompt_texts(threads: Iterable[Thread], extra: Iterable[PromptVersion] = ()) -> dict[str, PromptVersion]:
    """Every known prompt version with its text, by hash (captured texts first)."""
    out: dict[str, PromptVersion] = {}
    for pv in extra:
        if pv.text:
            out.setdefault(pv.sha256, pv)
    for th in threads:
        for turn in th.turns:
            for call in turn.llm_calls:
                for pv in call.prompt_versions:
                    if pv.text:
                        out.setdefault(pv.sha256, pv)
    return out


def _diff_target(diff: str) -> str | None:
    try:
        patch = PatchSet(diff)
    except UnidiffParseError:
        return None
    return patch[0].path if len(patch) == 1 else None


def _path_matches(pv: PromptVersion, target: str) -> bool:
    if not pv.path:
        return False
    a = Path(pv.path).as_posix().lstrip("./")
    b = Path(target).as_posix().lstrip("./")
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def fix_prompt_shas(
    fix: Fix,
    threads: Sequence[Thread],
    *,
    diagnosis: Diagnosis | None = None,
    prompt_versions: Iterable[PromptVersion] = (),
) -> tuple[str, str] | None:
    """``(before sha, after sha)`` of the prompt a fix edits, or None when it edits no prompt.

    The before version is ``fix.details["before_sha256"]``, else the diagnosis' prompt, else the
    known prompt version (preferably loaded from the fix's target file) that the diff applies to.
    The after version is ``fix.details["after_sha256"]``, else the hash of the before text with the
    diff applied.

    Raises:
        ConfigError: The before version is known but its text is not (so the fixed text cannot
            be computed), or the diff does not apply to it.
    """
    if fix.kind in (FixKind.CONFIG_CHANGE, FixKind.HARNESS_CHANGE):
        return None
    details = fix.details or {}
    before = details.get("before_sha256") or (diagnosis.prompt_sha256 if diagnosis else None)
    after = details.get("after_sha256")
    if before and after:
        return str(before), str(after)
    texts = _prompt_texts(threads, prompt_versions)
    if before:
        pv = texts.get(str(before))
        if pv is None:
            raise ConfigError(
                f"fix {fix.id}: the text of prompt version {str(before)[:12]} is not in the store, "
                "so the fixed version's hash cannot be computed (set fix.details['after_sha256'])"
            )
        try:
            new_text = apply_unified_diff(pv.text, fix.diff)
        except PatchError as exc:
            raise ConfigError(
                f"fix {fix.id}: its diff does not apply to prompt version {pv.short}: {exc}"
            ) from exc
        return pv.sha256, sha256_text(new_text)
    # No version named: find the one the diff applies to. A diff that only appends can apply to
    # its own result too (v2 + the section again), so prefer the candidate whose patched text is
    # itself a captured version, then one loaded from the target file, then the oldest.
    target = fix.target_file or _diff_target(fix.diff) or ""
    candidates: list[tuple[tuple[bool, bool, int], str, str]] = []
    for order, pv in enumerate(texts.values()):
        try:
            new_text = apply_unified_diff(pv.text, fix.diff)
        except PatchError:
            continue
        if new_text == pv.text:
            continue
        new_sha = sha256_text(new_text)
        rank = (new_sha not in texts, not _path_matches(pv, target), order)
        candidates.append((rank, pv.sha256, new_sha))
    if not candidates:
        return None
    _, old_sha, new_sha = min(candidates)
    return old_sha, new_sha


def cohorts_for_fix(
    fix: Fix,
    threads: Sequence[Thread],
    *,
    diagnosis: Diagnosis | None = None,
    prompt_versions: Iterable[PromptVersion] = (),
) -> tuple[Cohort, Cohort]:
    """The before and after cohorts of ``fix`` among ``threads``.

    Prompt edits: *before* = threads served by the version the fix changed, *after* = threads
    served by the fixed version (see :func:`fix_prompt_shas`). Config/harness changes, and edits
    whose prompt cannot be found among the captured versions: *before* = threads started before
    ``fix.details["merged_at"]``, *after* = threads started at or after it.

    Args:
        fix: The fix.
        threads: Candidate threads (usually every thread in the store).
        diagnosis: The fix's diagnosis (its ``prompt_sha256`` names the version fixed).
        prompt_versions: Extra prompt versions with text (``store.prompt_versions()``), for
            versions no thread in ``threads`` carries.

    Raises:
        ConfigError: The cohorts cannot be defined (no prompt version and no ``merged_at``).
    """
    shas = fix_prompt_shas(fix, threads, diagnosis=diagnosis, prompt_versions=prompt_versions)
    if shas is not None:
        before_sha, after_sha = shas
        groups: dict[str, list[Thread]] = {before_sha: [], after_sha: []}
        for th in threads:
            sha = thread_prompt_sha(th)
            if sha in groups:
                groups[sha].append(th)
        out = []
        for label, sha in (("before", before_sha), ("after", after_sha)):
            members = groups[sha]
            start, end = _span(members)
            out.append(Cohort(label=f"{label} (prompt {sha[:12]})", prompt_sha256=sha,
                              start=start, end=end, thread_ids=[t.thread_id for t in members]))
        return out[0], out[1]

    merged = (fix.details or {}).get("merged_at")
    if merged is None:
        raise ConfigError(
            f"fix {fix.id} ({fix.kind.value}) changes no captured prompt version and has no "
            "details['merged_at']: set the merge time so its cohorts can be bounded by time"
        )
    at = _parse_time(merged, f"fix {fix.id} details['merged_at']")
    before_t: list[Thread] = []
    after_t: list[Thread] = []
    for th in threads:
        t = thread_time(th)
        if t is None:
            continue  # a thread with no time cannot be placed on either side
        (after_t if t >= at else before_t).append(th)
    b_start, _ = _span(before_t)
    _, a_end = _span(after_t)
    return (
        Cohort(label=f"before {at.isoformat()}", start=b_start, end=at,
               thread_ids=[t.thread_id for t in before_t]),
        Cohort(label=f"after {at.isoformat()}", start=at, end=a_end,
               thread_ids=[t.thread_id for t in after_t]),
    )


# --- measuring ---------------------------------------------------------------------------------


class SeriesPoint(BaseModel):
    """One time bucket of a cohort in the fix's intent, for the before/after chart."""

    model_config = ConfigDict(extra="forbid")

    label: str
    phase: Literal["before", "after"]
    x: int
    n: int


class FixMeasurementResult(BaseModel):
    """One look at a fix: its cohorts, the comparison in its intent, guardrails, mix adjustment."""

    model_config = ConfigDict(extra="forbid")

    fix_id: str
    diagnosis_id: str
    metric: str
    """The fix's metric label."""
    signals: list[str]
    """The failure signal kind(s) counted as a failure."""
    intent_id: str | None
    """The intent the fix aimed at (None: the whole traffic)."""
    intent_name: str | None = None
    expected_direction: Literal["decrease", "increase"] = "decrease"
    before: Cohort
    after: Cohort
    comparison: CohortComparison | None
    """The comparison within the fix's intent (None when a cohort has no thread of the intent)."""
    decision: Decision
    """``keep`` / ``revert`` / ``wait``: the intent's decision, turned to ``revert`` by a guardrail."""
    reason: str
    threads_needed: int | None = None
    """When waiting: more threads per cohort (in the intent) needed to decide."""
    guardrails: list[GuardrailFlag] = Field(default_factory=list)
    """Other intents that got worse beyond the threshold, with confidence."""
    per_intent: dict[str, tuple[tuple[int, int], tuple[int, int]]] = Field(default_factory=dict)
    """``intent -> ((before failures, before threads), (after failures, after threads))``."""
    overall_before: float | None = None
    """Naive overall failure rate of the before cohort (all intents)."""
    overall_after: float | None = None
    mix_adjusted: MixAdjusted | None = None
    """Overall rates standardised to the pooled intent mix (None when no intent is on both sides)."""
    prob_improvement: float | None = None
    """Beta-Binomial posterior probability that the intent's rate improved (for display)."""
    looks: list[float] = Field(default_factory=list)
    """Information fractions of every look so far, this one included."""
    planned_n: int = 0
    """Planned threads per cohort in the intent (the design's information at t = 1)."""
    new_look: bool = False
    """True when this call recorded a new look (False: a re-evaluation of the last one)."""
    series: list[SeriesPoint] = Field(default_factory=list)
    measured_at: datetime


def _intent_of(assignments: Mapping[str, str | None], tid: str) -> str:
    return assignments.get(tid) or UNASSIGNED


def _counts(
    ids: Iterable[str], fired: Mapping[str, set[str]], kinds: set[str],
    assignments: Mapping[str, str | None],
) -> dict[str, tuple[int, int]]:
    x: Counter[str] = Counter()
    n: Counter[str] = Counter()
    for tid in ids:
        key = _intent_of(assignments, tid)
        n[key] += 1
        if fired.get(tid, set()) & kinds:
            x[key] += 1
    return {k: (x[k], n[k]) for k in n}


def _series(
    cohort: Cohort, phase: Literal["before", "after"], members: set[str] | None,
    times: Mapping[str, datetime | None], fired: Mapping[str, set[str]], kinds: set[str],
) -> list[SeriesPoint]:
    buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for tid in cohort.thread_ids:
        if members is not None and tid not in members:
            continue
        t = times.get(tid)
        if t is None:
            continue
        b = buckets[t.date().isoformat()]
        b[1] += 1
        if fired.get(tid, set()) & kinds:
            b[0] += 1
    return [SeriesPoint(label=k, phase=phase, x=v[0], n=v[1]) for k, v in sorted(buckets.items())]


class _Source:
    """Everything a measurement reads, loaded once (from a store or given directly)."""

    def __init__(
        self,
        threads: Sequence[Thread],
        signals: Iterable[Signal],
        assignments: Mapping[str, str | None],
        intents: Iterable[Intent],
        *,
        leaf_assignments: Mapping[str, str | None] | None = None,
        diagnoses: Iterable[Diagnosis] = (),
        prompt_versions: Iterable[PromptVersion] = (),
        store: Store | None = None,
    ) -> None:
        self.threads = list(threads)
        self.fired: dict[str, set[str]] = defaultdict(set)
        for s in signals:
            self.fired[s.thread_id].add(s.kind)
        self.assignments = dict(assignments)
        self.leaf_assignments = dict(leaf_assignments) if leaf_assignments is not None else None
        self.intents = {i.id: i for i in intents}
        self.diagnoses = {d.id: d for d in diagnoses}
        self.prompt_versions = list(prompt_versions)
        self.store = store
        self.times = {t.thread_id: thread_time(t) for t in self.threads}

    @classmethod
    def from_store(cls, store: Store) -> _Source:
        return cls(
            store.list_threads(), store.load_signals(), store.load_assignments(),
            store.load_intents(), leaf_assignments=store.load_assignments(leaf=True),
            diagnoses=store.load_diagnoses(), prompt_versions=store.prompt_versions(), store=store,
        )

    def assignments_for(self, intent_id: str | None) -> Mapping[str, str | None]:
        """Top-level assignments, or leaf ones when the fix targets a sub-intent."""
        if (
            intent_id is not None
            and self.leaf_assignments is not None
            and intent_id not in set(self.assignments.values())
            and intent_id in set(self.leaf_assignments.values())
        ):
            return self.leaf_assignments
        return self.assignments


def _as_source(source: Any) -> _Source:
    if isinstance(source, _Source):
        return source
    if isinstance(source, tuple):
        if len(source) != 4:
            raise ConfigError("source must be a Store or (threads, signals, assignments, intents)")
        threads, signals, assignments, intents = source
        return _Source(threads, signals, assignments, intents)
    if hasattr(source, "list_threads") and hasattr(source, "get_meta"):
        return _Source.from_store(source)
    raise ConfigError(f"source must be a Store or a 4-tuple, got {type(source).__name__}")


def _default_plan(p_before: float, min_n: int, alpha: float) -> int:
    """Per-cohort size for a fix that halves the failure rate (when the fix states none)."""
    if p_before <= 0.0:
        return max(min_n, 1) * 4
    try:
        return max(min_n, sample_size_per_group(p_before, -p_before / 2.0, alpha=alpha))
    except ConfigError:
        return max(min_n, 1) * 4


def _fmt_pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def measure_fix(
    fix: Fix,
    source: Any,
    *,
    diagnosis: Diagnosis | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    min_n: int = 30,
    look_index: int | None = None,
    max_looks: int = 5,
    harm_threshold: float = 0.05,
    guardrail_min_n: int | None = None,
    record_look: bool = True,
    min_information_increment: float = 0.05,
    now: datetime | None = None,
) -> FixMeasurementResult:
    """Measure one fix: per-intent before/after failure rates and a keep / revert / wait decision.

    The metric is the fix's failure signal (``fix.details["signal"]`` or ``["signals"]``, else its
    diagnosis' ``signal``) in the fix's intent (``fix.details["intent_id"]``, else the diagnosis'
    intent): the share of the intent's threads in each cohort on which it fired.

    * The intent's comparison is :func:`compare_rates` at this look of a group-sequential design
      (O'Brien-Fleming alpha spending). With a store, every call is a look: the information
      fraction ``t`` (planned size ``fix.sample_size_needed`` per cohort, or the size for halving
      the rate when the fix gives none) is appended to ``store.get_meta(looks_key(fix.id))`` so the
      alpha spent on earlier looks is accounted for. A look is recorded only when both cohorts
      have ``min_n`` threads of the intent (smaller looks cannot decide and must not use up the
      planned looks) and ``t`` grew by ``min_information_increment``; otherwise the last recorded
      look is re-evaluated on the current counts with its boundary.
    * Every other intent with ``guardrail_min_n`` threads on both sides is a guardrail: one that got
      worse by ``harm_threshold`` or more, with confidence, turns the decision into ``revert``.
    * The overall rate is reported naively and standardised to the pooled intent mix.

    Args:
        fix: The fix (status is not changed here; see :func:`measure_all`).
        source: A :class:`~loop_middleware.store.Store`, or ``(threads, signals, assignments,
            intents)`` (no look history is kept then unless ``look_index`` is given).
        diagnosis: The fix's diagnosis (default: looked up by ``fix.diagnosis_id`` in the store).
        alpha: Overall two-sided error rate across all looks.
        power: Power used to size ``threads_needed``.
        min_n: Fewest threads of the intent per cohort before anything is decided.
        look_index: Force equally spaced looks (``t = look_index / max_looks``) and skip the
            stored history.
        max_looks: Planned number of looks (fixed at the first recorded look).
        harm_threshold: Smallest worsening of another intent that flags a revert.
        guardrail_min_n: Threads per cohort for an intent to be a guardrail (default ``min_n``).
        record_look: Persist this look (with a store). ``False`` (a report peeking) re-evaluates
            the last recorded look instead of spending alpha on a new one.
        min_information_increment: Smallest growth of ``t`` that makes a new look.
        now: The measurement time (default: now).

    Raises:
        ConfigError: The fix names no signal, or its cohorts cannot be defined.
    """
    src = _as_source(source)
    details = fix.details or {}
    if diagnosis is None:
        diagnosis = src.diagnoses.get(fix.diagnosis_id)
    signal = details.get("signal") or (diagnosis.signal if diagnosis else None)
    kinds = {str(k) for k in (details.get("signals") or ([signal] if signal else []))}
    if not kinds:
        raise ConfigError(
            f"fix {fix.id}: no failure signal to measure (set fix.details['signal'] or save its "
            f"diagnosis {fix.diagnosis_id!r} in the store)"
        )
    intent_id = details.get("intent_id", diagnosis.intent_id if diagnosis else None)
    assignments = src.assignments_for(intent_id)
    # A diagnosis merged across intents (one root cause in several intents) is measured on all
    # of them: the fix changes the cause, so every intent it hit is the target, none a guardrail.
    spans = details.get("intent_ids") or (diagnosis.details.get("intent_ids") if diagnosis else None)
    targets = {str(intent_id)} if intent_id is not None else set()
    if intent_id is not None and isinstance(spans, list):
        targets |= {str(i) for i in spans if i is not None}
    before, after = cohorts_for_fix(fix, src.threads, diagnosis=diagnosis,
                                    prompt_versions=src.prompt_versions)
    now = _utc(now) or datetime.now(UTC)

    b_counts = _counts(before.thread_ids, src.fired, kinds, assignments)
    a_counts = _counts(after.thread_ids, src.fired, kinds, assignments)
    per_intent = {
        k: (b_counts.get(k, (0, 0)), a_counts.get(k, (0, 0)))
        for k in sorted(b_counts.keys() | a_counts.keys())
    }
    if intent_id is None:
        bx = sum(x for x, _ in b_counts.values())
        bn = before.size
        ax = sum(x for x, _ in a_counts.values())
        an = after.size
        target_key = None
    else:
        target_key = str(intent_id)
        hit = [per_intent.get(k, ((0, 0), (0, 0))) for k in sorted(targets)]
        bx, bn = sum(b[0] for b, _ in hit), sum(b[1] for b, _ in hit)
        ax, an = sum(a[0] for _, a in hit), sum(a[1] for _, a in hit)
    intent = src.intents.get(str(intent_id)) if intent_id is not None else None
    intent_label = intent.name if intent else (str(intent_id) if intent_id is not None else None)
    if intent_label is not None and len(targets) > 1:
        intent_label += f" (+{len(targets) - 1} more intents with the same cause)"
    direction = fix.expected_direction
    planned_effect = details.get("planned_effect")

    comparison: CohortComparison | None = None
    looks: list[float] = []
    planned_n = 0
    new_look = False
    if bn == 0 or an == 0:
        decision: Decision = "wait"
        which = "before" if bn == 0 else "after"
        reason = (f"no thread of intent {intent_label or 'any'} in the {which} cohort yet "
                  f"({before.size} threads before, {after.size} after)")
        needed: int | None = None
    else:
        store = src.store
        history: dict[str, Any] = {}
        if store is not None and look_index is None:
            history = store.get_meta(looks_key(fix.id)) or {}
        planned_n = int(history.get("planned_n") or fix.sample_size_needed
                        or _default_plan(bx / bn, min_n, alpha))
        k_max = int(history.get("max_looks") or max_looks)
        prev = [float(lk["t"]) for lk in history.get("looks", [])]
        if look_index is not None:
            looks = [j / max_looks for j in range(1, look_index + 1)]
            k_max = max_looks
        else:
            t = information_fraction(an, planned_n, before_n=bn)
            grows = not prev or (prev[-1] < 1.0 and t >= prev[-1] + min_information_increment)
            decidable = min(bn, an) >= min_n
            if prev and (not grows or len(prev) >= k_max or not decidable or not record_look):
                looks = prev  # no new look: re-evaluate the last recorded one
            else:
                looks = [*prev, max(t, 1e-6)]
                new_look = decidable and record_look and store is not None
        comparison = compare_rates(
            bx, bn, ax, an, metric=fix.metric or "/".join(sorted(kinds)), intent=intent_label,
            expected_direction=direction,
            planned_effect=float(planned_effect) if planned_effect else None,
            alpha=alpha, power=power, min_n=min_n,
            looks=looks if look_index is None else None,
            look_index=look_index, max_looks=k_max,
        )
        if look_index is None:
            looks = [*looks[:-1], comparison.information_fraction]
        if new_look and store is not None:
            history = {
                "planned_n": planned_n, "max_looks": k_max, "alpha": alpha,
                "looks": [*history.get("looks", []), {
                    "t": comparison.information_fraction, "before_n": bn, "after_n": an,
                    "decision": comparison.decision, "at": now.isoformat(),
                }],
            }
            store.set_meta(looks_key(fix.id), history)
        decision = comparison.decision
        reason = comparison.reason
        needed = comparison.threads_needed_more

    gmin = min_n if guardrail_min_n is None else guardrail_min_n
    flags = guardrail_check(
        {k: v for k, v in per_intent.items()
         if k != UNASSIGNED and (k == target_key or k not in targets)},
        target_key or "", harm_threshold=harm_threshold, min_n=gmin, alpha=alpha,
        expected_direction=direction,
    ) if target_key is not None else []
    if flags:
        names = ", ".join(src.intents[f.intent].name if f.intent in src.intents else f.intent
                          for f in flags)
        reason = f"guardrail: {names} got worse ({flags[0].reason}); intent: {reason}"
        decision = "revert"
        needed = None

    mix: MixAdjusted | None = None
    try:
        mix = mix_adjusted_rates(b_counts, a_counts)
    except ConfigError:
        mix = None
    prob = None
    if bn and an:
        prob = beta_binomial_posterior_prob_improvement(bx, bn, ax, an, expected_direction=direction)

    members = None if target_key is None else {
        tid for tid in (*before.thread_ids, *after.thread_ids)
        if _intent_of(assignments, tid) in targets
    }
    series = (_series(before, "before", members, src.times, src.fired, kinds)
              + _series(after, "after", members, src.times, src.fired, kinds))
    return FixMeasurementResult(
        fix_id=fix.id, diagnosis_id=fix.diagnosis_id, metric=fix.metric, signals=sorted(kinds),
        intent_id=target_key, intent_name=intent_label, expected_direction=direction,
        before=before, after=after, comparison=comparison, decision=decision, reason=reason,
        threads_needed=needed, guardrails=flags, per_intent=per_intent,
        overall_before=(sum(x for x, _ in b_counts.values()) / before.size) if before.size else None,
        overall_after=(sum(x for x, _ in a_counts.values()) / after.size) if after.size else None,
        mix_adjusted=mix, prob_improvement=prob, looks=looks, planned_n=planned_n,
        new_look=new_look, series=series, measured_at=now,
    )


def measurement_summary(result: FixMeasurementResult) -> dict[str, Any]:
    """A JSON-able summary of a measurement, kept in ``fix.details["measurement"]``."""
    c = result.comparison
    out: dict[str, Any] = {
        "decision": result.decision, "reason": result.reason, "at": result.measured_at.isoformat(),
        "intent_id": result.intent_id, "signals": result.signals,
        "guardrails": [f.intent for f in result.guardrails], "looks": result.looks,
    }
    if c is not None:
        out.update(before_rate=c.before.rate, before_n=c.before.n, after_rate=c.after.rate,
                   after_n=c.after.n, after_x=c.after.x, before_x=c.before.x, delta=c.delta,
                   delta_ci=list(c.delta_ci), ci_level=c.delta_ci_level)
    return out


def measure_all(
    store: Store,
    *,
    alpha: float = 0.05,
    min_n: int = 30,
    max_looks: int = 5,
    harm_threshold: float = 0.05,
    update_status: bool = True,
    now: datetime | None = None,
) -> list[FixMeasurementResult]:
    """Measure every fix that is opened, merged or kept and whose after cohort has threads.

    One look per fix (see :func:`measure_fix`). A fix still undecided (``opened``/``merged``)
    becomes ``kept`` on a keep decision and ``reverted`` on a revert decision; its
    ``details`` get ``decision``, ``decided_at`` and a ``measurement`` summary, and it is saved
    back. Fixes whose cohorts cannot be defined are skipped (logged).
    """
    src = _Source.from_store(store)
    results: list[FixMeasurementResult] = []
    changed: list[Fix] = []
    for fix in store.load_fixes():
        if fix.status not in MEASURED_STATUSES:
            continue
        try:
            _, after = cohorts_for_fix(fix, src.threads,
                                            diagnosis=src.diagnoses.get(fix.diagnosis_id),
                                            prompt_versions=src.prompt_versions)
        except ConfigError as exc:
            logger.info("not measuring fix %s: %s", fix.id, exc)
            continue
        if not after.thread_ids:
            continue
        try:
            result = measure_fix(fix, src, alpha=alpha, min_n=min_n, max_looks=max_looks,
                                 harm_threshold=harm_threshold, now=now)
        except ConfigError as exc:
            logger.warning("cannot measure fix %s: %s", fix.id, exc)
            continue
        results.append(result)
        if not update_status:
            continue
        details = dict(fix.details or {})
        details["measurement"] = measurement_summary(result)
        update: dict[str, Any] = {"details": details}
        if fix.status in ("opened", "merged") and result.decision in ("keep", "revert"):
            update["status"] = "kept" if result.decision == "keep" else "reverted"
            details["decision"] = result.decision
            details["decided_at"] = result.measured_at.isoformat()
        changed.append(fix.model_copy(update=update))
    if changed:
        store.save_fixes(changed)
    return results


# --- reverting ---------------------------------------------------------------------------------


def reverse_diff(diff: str) -> str:
    """The unified diff that undoes ``diff`` (old and new sides swapped, hunk by hunk).

    Raises:
        PatchError: ``diff`` does not parse or names more than one file.
    """
    pf = single_file_patch(diff)
    src, tgt = pf.source_file, pf.target_file
    marker = "\\ No newline at end of file\n"
    lines = [f"--- {tgt}\n", f"+++ {src}\n"]
    for h in pf:
        lines.append(f"@@ -{h.target_start},{h.target_length} +{h.source_start},{h.source_length} @@\n")
        # Within each run of changes, the lines the fix added are now removed and go first (the
        # usual order); a "no newline" marker stays attached to the line it follows.
        removed: list[str] = []
        added: list[str] = []
        last: list[str] | None = None
        for line in h:
            text = line.value if line.value.endswith("\n") else line.value + "\n"
            if line.is_added:
                removed.append("-" + text)
                last = removed
            elif line.is_removed:
                added.append("+" + text)
                last = added
            elif line.is_context:
                lines += removed + added
                removed, added = [], []
                lines.append(" " + text)
                last = lines
            else:  # the "\ No newline at end of file" marker
                (last if last is not None else lines).append(marker)
        lines += removed + added
    return "".join(lines)


def _revert_rationale(fix: Fix, result: FixMeasurementResult) -> str:
    c = result.comparison
    parts = [
        f"Revert fix `{fix.id}` ({fix.title}): the measured cohorts say **{result.decision}**.",
        "",
        f"- Metric: {fix.metric} (signal {', '.join(result.signals)}; expected to "
        f"{fix.expected_direction})",
        f"- Cohorts: {result.before.label} ({result.before.size} threads), "
        f"{result.after.label} ({result.after.size} threads)",
    ]
    if c is not None:
        parts += [
            f"- In intent {result.intent_name or result.intent_id or 'all'}: "
            f"{c.before.rate:.1%} of {c.before.n} threads before, {c.after.rate:.1%} of "
            f"{c.after.n} after; delta {_fmt_pts(c.delta)} "
            f"({c.delta_ci_level:.1%} CI {_fmt_pts(c.delta_ci[0])} to {_fmt_pts(c.delta_ci[1])}, "
            f"look {c.look_index}/{c.max_looks})",
        ]
    if result.mix_adjusted is not None:
        m = result.mix_adjusted
        parts.append(f"- Overall, standardised to the same intent mix: {m.before:.1%} -> "
                     f"{m.after:.1%} ({_fmt_pts(m.delta)})")
    if result.guardrails:
        parts.append("- Guardrails (other intents that got worse):")
        parts += [f"  - {f.reason}" for f in result.guardrails]
    parts += ["", f"Decision: {result.reason}"]
    return "\n".join(parts)


def propose_revert(
    fix: Fix,
    result: FixMeasurementResult,
    *,
    repo_dir: str | Path,
    allowed: AllowedPaths,
) -> Fix:
    """A :class:`~loop_middleware.types.Fix` of kind ``revert`` that restores the previous prompt.

    The reverse of ``fix.diff`` is applied (strictly) to the target file as it is now in
    ``repo_dir``; the revert's diff is the clean diff from the current text to the restored one.
    The rationale (Markdown) carries the measurement: delta with its interval, decision and
    guardrail flags. ``details["required_sections"]`` lists the headings the restored text keeps:
    pass it to :func:`~loop_middleware.patch.publish_fix` (or use :func:`publish_revert`), since a
    revert legitimately removes sections the fix added.

    Raises:
        PathNotAllowedError: The target file is outside ``allowed``.
        PatchError: The file changed since the fix so that the fix no longer reverses cleanly.
    """
    root = Path(repo_dir)
    rel = allowed.check(fix.target_file, repo_root=root)
    path = root / rel
    try:
        current = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PatchError(f"cannot read {rel} in {root}: {exc}") from exc
    try:
        restored = apply_unified_diff(current, reverse_diff(fix.diff))
    except PatchError as exc:
        raise PatchError(
            f"fix {fix.id} cannot be reverted automatically: {rel} changed since it was applied "
            f"({exc})"
        ) from exc
    diff = make_diff(rel, current, restored)
    if not diff:
        raise PatchError(f"reverting fix {fix.id} changes nothing in {rel}")
    c = result.comparison
    # The revert is judged on the same metric in the same direction: undoing a harmful edit should
    # bring the failure rate back down.
    return Fix(
        id=f"revert-{fix.id}",
        diagnosis_id=f"revert:{fix.diagnosis_id}",
        kind=FixKind.REVERT,
        target_file=rel,
        diff=diff,
        title=f"Revert: {fix.title}",
        rationale=_revert_rationale(fix, result),
        metric=fix.metric,
        expected_direction=fix.expected_direction,
        sample_size_needed=(c.required_n_per_group or fix.sample_size_needed) if c else
        fix.sample_size_needed,
        status="proposed",
        created_at=datetime.now(UTC),
        details={
            "reverts_fix_id": fix.id,
            "reverts_diagnosis_id": fix.diagnosis_id,
            "measurement": measurement_summary(result),
            "required_sections": markdown_headings(restored),
            "before_sha256": sha256_text(current),
            "after_sha256": sha256_text(restored),
            "signal": result.signals[0] if len(result.signals) == 1 else None,
            "signals": result.signals,
            "intent_id": result.intent_id,
        },
    )


def publish_revert(
    revert: Fix, *, repo_dir: str | Path, allowed: AllowedPaths, **kwargs: Any
) -> PublishResult:
    """:func:`~loop_middleware.patch.publish_fix` for a revert from :func:`propose_revert`, keeping
    the restored version's own headings as the required sections. Returns the ``PublishResult``."""
    from ..patch import publish_fix

    kwargs.setdefault("required_sections", list(revert.details.get("required_sections") or []))
    return publish_fix(revert, repo_dir=repo_dir, allowed=allowed, **kwargs)
