"""The numbers behind a diagnosis: one row per intent x failure-signal cell.

A *cell* is an intent (or the unassigned threads) crossed with one signal kind. For each cell we
count **sessions** (distinct threads), not signals: a user who complains five times in one thread
is one affected session. Then:

* ``share_of_sessions`` -- affected sessions over *all* sessions analysed ("3.2% of sessions"),
  the number a product owner reads first;
* ``rate_in_intent`` vs ``rate_elsewhere`` and their ratio, the ``lift``;
* a one-sided Fisher exact test (``scipy.stats.fisher_exact``, ``alternative="greater"``) that the
  signal is more frequent in the intent than in the rest. Fisher rather than a z-test because
  cells are small (a dozen threads in a niche intent) and rates near zero, where normal
  approximations are badly off;
* Benjamini-Hochberg q-values across every cell of the run
  (``statsmodels.stats.multitest.multipletests(method="fdr_bh")``). With 30 intents x 10 signals
  we test 300 cells; at p <= 0.05 about 15 would light up by chance alone. BH keeps the expected
  share of false discoveries among the reported cells at ``alpha``;
* ``impact`` = sessions affected x severity of the signal kind, the ranking key: ten abandoned
  refunds matter more than thirty slow turns.

Only *failure* kinds take part (severity > 0): ``language_switch`` is not a failure by itself
(a bilingual user is not a defect), so by default it has severity 0 and no cell. Its signals
still reach the hypotheses as context.

The version-jump tests of ``regression`` diagnoses use :func:`stratified_exact_test`: the exact
conditional test of "more sessions affected on the new prompt version than on the old one" that
pools several strata (intents) without mixing them, and is Fisher's exact test with one stratum.

A known blind spot, by design: a signal that is equally frequent in *every* intent (a tool
broken for everyone) has no intent with lift and no significant cell. That is a global incident,
better caught by a plain rate alarm than by intent diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.stats import fisher_exact, hypergeom
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from statsmodels.stats.multitest import multipletests

from ..errors import ConfigError
from ..extract._signals import DEFAULT_CONTEXT_BUDGETS as _SIGNAL_BUDGETS
from ..extract._signals import context_budget_for
from ..types import Signal, Thread

__all__ = [
    "DEFAULT_CONTEXT_BUDGETS",
    "DEFAULT_SEVERITY",
    "DEFAULT_STOPWORDS",
    "UNASSIGNED",
    "CellStat",
    "DiagnoseConfig",
    "cell_table",
    "significant_cells",
    "stratified_exact_test",
]

UNASSIGNED = "(unassigned)"
"""The display name of the threads that no intent claimed (their ``intent_id`` is ``None``)."""

DEFAULT_SEVERITY: Mapping[str, float] = {
    # 3 = the user did not get what they came for, or got something wrong: a lost customer, a
    # human's time, or a wrong answer stated as fact.
    "abandonment": 3.0,
    "escalation": 3.0,
    "refusal": 3.0,
    "ungrounded": 3.0,
    # 2 = explicit dissatisfaction or a broken conversation that may still recover.
    "negative_feedback": 2.5,
    "frustration": 2.0,
    "context_loss": 2.0,
    "tool_error": 2.0,
    # 1.5 = wasted turns; 0.5 = slow but answered.
    "stall": 1.5,
    "latency_outlier": 0.5,
    # 0 = not a failure by itself: a user writing in another language is fine. It only matters
    # together with another signal, which then carries the cell.
    "language_switch": 0.0,
}
"""Default severity per built-in signal kind (multiplies sessions affected into ``impact``)."""

DEFAULT_STOPWORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS) | frozenset(
    # Support-chat filler that is frequent in every intent and names no topic.
    ["hi", "hello", "hey", "thanks", "thank", "thx", "pls", "please", "ok", "okay", "yes", "yeah", "yep", "sure", "just", "like", "want", "need", "help", "know", "get", "got", "can", "could", "would", "im", "ive", "dont", "doesnt", "didnt", "cant", "wont", "isnt", "thats", "whats", "tell", "let", "make", "really", "still", "also", "one", "way", "going", "trying", "try", "tried", "use", "using", "able", "time", "today", "now", "sorry", "hope", "good", "great", "ask", "asking", "question", "anyone", "someone", "something", "anything"]
)
"""Words never used as an intent's key terms: scikit-learn's English stop words + chat filler."""

# One table of advertised context windows for the whole library (longest model-name prefix wins).
DEFAULT_CONTEXT_BUDGETS: Mapping[str, int] = _SIGNAL_BUDGETS
"""Input-token budget per model-name prefix, for the ``context_loss`` hypothesis."""


class DiagnoseConfig(BaseModel):
    """Settings of one diagnosis run. Every field has a documented default."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    # --- which cells are reported ---------------------------------------------------------------
    alpha: float = 0.05
    """False-discovery rate: cells with a Benjamini-Hochberg q-value above this are not reported."""
    min_sessions: int = 3
    """Fewest affected sessions for a cell to be reported (three anecdotes are not a pattern)."""
    severity: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SEVERITY))
    """Severity per signal kind; ``impact = sessions affected x severity``. Kinds with severity 0
    are not failures (no cell); kinds missing here get :attr:`default_severity`."""
    default_severity: float = 1.0
    """Severity of a signal kind missing from :attr:`severity` (user-registered detectors)."""
    include_unassigned: bool = True
    """Also test the threads no intent claimed, as one pseudo-intent with ``intent_id=None``."""
    opening_excluded_signals: frozenset[str] = frozenset({"frustration", "escalation"})
    """User-side signal kinds ignored when they fire on a thread's first turn: the agent has said
    nothing yet, so a user who *opens* angry, or opens with "close my account" / "let me talk to
    a person", was not failed by this conversation; that is their intent, not a root cause."""

    # --- coverage_gap -----------------------------------------------------------------------------
    stopwords: frozenset[str] = DEFAULT_STOPWORDS
    """Words never taken as an intent's key terms (lowercase, compared before stemming)."""
    top_terms: int = 8
    """How many frequent content words of the intent's user messages join its keyphrases."""
    min_term_share: float = 0.4
    """A content word is *frequent* in an intent when it occurs in at least this share of the
    intent's threads (user messages only)."""
    term_lift: float = 2.0
    """... and is at least this many times as frequent (per thread) as in the other threads, so
    that words every intent uses ("order", "account") do not count as the intent's own."""
    coverage_gap_signals: frozenset[str] = frozenset(
        {"refusal", "frustration", "escalation", "abandonment"}
    )
    """Signal kinds a missing topic in the prompt can explain."""
    coverage_min_missing: float = 0.6
    """Share of the key terms that must be absent from the prompt for a coverage gap."""

    # --- hypotheses that compare affected with unaffected threads ---------------------------------
    min_support: float = 0.5
    """Share of the affected sessions that must show a precursor (a failing tool, a repeated
    call, ...) for a hypothesis to explain them."""
    min_contrast: float = 0.25
    """... and by how much that share must exceed its share among the intent's unaffected
    sessions (a tool that fails everywhere explains nothing in particular)."""
    retrieval_tool_pattern: str = r"search|retriev|knowledge|kb|docs?\b|faq|rag|vector|semantic"
    """Regex (searched, case-insensitive) on tool names that marks a retrieval tool."""
    repeated_tool_calls: int = 3
    """``loop_stall``: a tool called this many times with identical arguments in one thread."""

    # --- regression -------------------------------------------------------------------------------
    regression_alpha: float = 0.05
    """False-discovery rate of the version-jump tests. Per tested group of sessions (an intent x
    signal cell, or a situation: the sessions after a signal, see :attr:`regression_situations`)
    the smallest p over the consecutive version pairs is Bonferroni-corrected, then
    Benjamini-Hochberg runs over every group tested, cells and situations together (every group
    with enough sessions on two versions, whether or not it stands out against the rest: a jump
    inside an intent whose rate is average overall is still a regression)."""
    min_version_sessions: int = 5
    """Fewest sessions of a tested group served by each of two versions for them to be compared."""
    regression_situations: bool = True
    """Also test version jumps in *situations*: for each signal kind X and failure kind Y, the
    sessions in which X fired, and whether Y followed it (at a later turn) more often on the new
    version, stratified by intent. A prompt change usually breaks how the agent handles one
    situation (a request for a human, a tool error, a user switching language), and the sessions
    in that situation are spread over many intents, each too small to show the jump alone."""
    max_diff_chars: int = 4000
    """The unified diff of two prompt versions is truncated to this many characters."""

    # --- context_loss -----------------------------------------------------------------------------
    context_turn_threshold: int | None = None
    """Fixed turn index N for "failures concentrate past turn N"; ``None`` searches the knee."""
    context_min_turn: int = 4
    """Smallest knee N searched: a history of fewer turns fits any model's context, and failures
    right after the agent's first answers are reactions to those answers (a user cannot be
    frustrated before the first reply), which would otherwise always look like a knee at N=1."""
    context_knee_excluded_signals: frozenset[str] = frozenset({"stall"})
    """Signal kinds left out of the turn-knee test because a turn-count rule places them (the
    ``stall`` detector fires at turn ``max_turns``), so they sit late in threads by construction."""
    context_min_ratio: float = 3.0
    """Failure rate of threads longer than N must be at least this multiple of the shorter ones'."""
    context_token_fraction: float = 0.8
    """A call is *near the context limit* when its input tokens reach this share of the budget."""
    context_budgets: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_CONTEXT_BUDGETS))
    """Input-token budget per model-name prefix (longest prefix wins)."""
    default_context_budget: int = 8000
    """Budget of a model missing from :attr:`context_budgets` or not recorded."""

    # --- output -----------------------------------------------------------------------------------
    max_evidence: int = 5
    """Evidence items per diagnosis."""
    max_quote_chars: int = 200
    """Longest evidence quote (quotes are cut, never rewritten, so they stay verbatim)."""

    @field_validator("alpha", "regression_alpha", "min_support", "min_term_share",
                     "coverage_min_missing", "context_token_fraction")
    @classmethod
    def _unit_interval(cls, v: float, info: Any) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{info.field_name} must be in (0, 1], got {v!r}")
        return v

    @field_validator("min_sessions", "top_terms", "repeated_tool_calls", "min_version_sessions",
                     "context_min_turn",
                     "max_evidence", "max_quote_chars", "max_diff_chars", "default_context_budget")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {v!r}")
        return v

    def severity_of(self, kind: str) -> float:
        """The severity of a signal kind (``default_severity`` for unknown kinds)."""
        return float(self.severity.get(kind, self.default_severity))

    def context_budget(self, model: str | None) -> int:
        """The input-token budget of ``model`` (``openai:`` / ``org/`` prefixes are ignored)."""
        return context_budget_for(model, self.context_budgets, self.default_context_budget)


def _config(config: DiagnoseConfig | None) -> DiagnoseConfig:
    if config is None:
        return DiagnoseConfig()
    if not isinstance(config, DiagnoseConfig):
        raise ConfigError(f"config must be a DiagnoseConfig, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class CellStat:
    """The statistics of one intent x signal-kind cell."""

    intent_id: str | None
    """The intent, or ``None`` for the threads no intent claimed."""
    signal: str
    """The signal kind."""
    sessions_affected: int
    """Distinct threads of the intent with at least one signal of this kind."""
    sessions_in_intent: int
    """Threads assigned to the intent."""
    affected_elsewhere: int
    """Distinct threads of the other intents (and unassigned) with this signal."""
    sessions_elsewhere: int
    """Threads not assigned to the intent."""
    total_sessions: int
    """All threads analysed."""
    share_of_sessions: float
    """``sessions_affected / total_sessions``."""
    rate_in_intent: float
    """``sessions_affected / sessions_in_intent``."""
    rate_elsewhere: float
    """``affected_elsewhere / sessions_elsewhere`` (0 when there is no elsewhere)."""
    lift: float
    """``rate_in_intent / rate_elsewhere``. When nothing elsewhere is affected the denominator is
    floored at half a session (``0.5 / sessions_elsewhere``) so the lift stays finite; with no
    other threads at all it is 1."""
    p_value: float
    """One-sided Fisher exact test: more frequent in the intent than elsewhere."""
    q_value: float
    """Benjamini-Hochberg adjusted p-value over every cell of the table."""
    severity: float
    """Severity of the signal kind."""
    impact: float
    """``sessions_affected x severity``: the ranking key."""
    thread_ids: tuple[str, ...]
    """The affected threads, sorted."""

    @property
    def key(self) -> tuple[str, str]:
        """A sortable identity of the cell."""
        return (self.intent_id or "", self.signal)


def cell_table(
    threads: Sequence[Thread],
    signals: Sequence[Signal],
    assignments: Mapping[str, str | None],
    *,
    config: DiagnoseConfig | None = None,
) -> list[CellStat]:
    """Every intent x failure-signal cell with counts, rates, lift, p and BH q-value, and impact.

    Args:
        threads: The sessions analysed (the denominator of every share).
        signals: Failure signals; signals of threads not in ``threads`` are ignored.
        assignments: ``thread_id -> intent id`` (``None`` or missing = unassigned).
        config: Severity map and whether unassigned threads form a cell.

    Returns:
        One :class:`CellStat` per (intent, signal kind) pair that has at least one affected
        session and a kind with severity > 0, sorted by impact (highest first), then q-value.
        Significance filtering is left to :func:`significant_cells`.
    """
    cfg = _config(config)
    ids = [t.thread_id for t in threads]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ConfigError(f"threads contain duplicate thread ids: {dup}")
    total = len(ids)
    if total == 0:
        return []
    known = set(ids)
    group: dict[str, str | None] = {tid: assignments.get(tid) for tid in ids}
    group_size: dict[str | None, int] = {}
    for g in group.values():
        group_size[g] = group_size.get(g, 0) + 1

    # kind -> group -> affected thread ids
    affected: dict[str, dict[str | None, set[str]]] = {}
    for s in signals:
        if s.thread_id not in known or cfg.severity_of(s.kind) <= 0:
            continue
        affected.setdefault(s.kind, {}).setdefault(group[s.thread_id], set()).add(s.thread_id)

    rows: list[dict[str, Any]] = []
    for kind in sorted(affected):
        by_group = affected[kind]
        all_affected = sum(len(v) for v in by_group.values())
        for g in sorted(by_group, key=lambda x: (x is None, x or "")):
            if g is None and not cfg.include_unassigned:
                continue
            a = len(by_group[g])
            n_in = group_size[g]
            b = all_affected - a
            n_out = total - n_in
            rate_in = a / n_in
            rate_out = b / n_out if n_out else 0.0
            if n_out == 0:
                lift = 1.0
                p = 1.0
            else:
                lift = rate_in / max(rate_out, 0.5 / n_out)
                p = float(fisher_exact([[a, n_in - a], [b, n_out - b]], alternative="greater")[1])
            rows.append(dict(intent_id=g, signal=kind, sessions_affected=a, sessions_in_intent=n_in,
                             affected_elsewhere=b, sessions_elsewhere=n_out, total_sessions=total,
                             share_of_sessions=a / total, rate_in_intent=rate_in,
                             rate_elsewhere=rate_out, lift=lift, p_value=min(1.0, p),
                             severity=cfg.severity_of(kind),
                             impact=a * cfg.severity_of(kind),
                             thread_ids=tuple(sorted(by_group[g]))))
    if not rows:
        return []
    q = multipletests([r["p_value"] for r in rows], alpha=cfg.alpha, method="fdr_bh")[1]
    cells = [CellStat(q_value=float(min(1.0, qv)), **r) for r, qv in zip(rows, q, strict=True)]
    cells.sort(key=lambda c: (-c.impact, c.q_value, c.key))
    return cells


def stratified_exact_test(tables: Sequence[tuple[int, int, int, int]]) -> float:
    """One-sided exact p that the affected share is higher on the new version, across strata.

    Each table is ``(affected_new, sessions_new, affected_old, sessions_old)`` of one stratum (an
    intent). Conditional on every stratum's margins (sessions per version, affected sessions),
    the affected count on the new version is hypergeometric in each stratum under the null "the
    version does not change the chance of being affected, within each stratum"; their sum ``S``
    is the convolution of those hypergeometric distributions, and the p-value is
    ``P(S >= observed)``. This is the exact Mantel-Haenszel (Birch) test of a common odds ratio
    of 1 against > 1, as R's ``mantelhaen.test(exact=TRUE, alternative="greater")``; with one
    stratum it is Fisher's exact test (``fisher_exact(..., alternative="greater")``).

    Stratifying keeps a change in the intent mix between versions from passing for a jump: if
    the new version simply saw more of an intent that always fails more, no stratum's table
    moves. Strata with sessions on one version only, or with all or none affected, carry no
    information under the null (their count is fixed) and drop out.

    Returns:
        The p-value in ``[0, 1]`` (1 when no stratum is informative).
    """
    dist = np.ones(1)
    low = observed = 0
    for a_new, n_new, a_old, n_old in tables:
        if min(a_new, n_new - a_new, a_old, n_old - a_old) < 0:
            raise ValueError(f"invalid 2x2 table (affected_new, new, affected_old, old): "
                             f"{(a_new, n_new, a_old, n_old)}")
        n, k = n_new + n_old, a_new + a_old
        if n_new == 0 or n_old == 0 or k == 0 or k == n:
            continue
        lo, hi = max(0, k - n_old), min(k, n_new)
        dist = np.convolve(dist, hypergeom.pmf(np.arange(lo, hi + 1), n, k, n_new))
        low += lo
        observed += a_new
    # The upper tail is summed directly (no 1 - cdf), so tiny p-values keep their precision.
    return float(min(1.0, max(0.0, dist[max(0, observed - low):].sum())))


def significant_cells(cells: Sequence[CellStat], config: DiagnoseConfig | None = None) -> list[CellStat]:
    """The cells worth a diagnosis: ``q <= alpha``, ``>= min_sessions`` affected, lift above 1.

    Ranked by impact (sessions x severity), not by raw count: then by q-value, then by key, so
    the order is deterministic.
    """
    cfg = _config(config)
    keep = [c for c in cells
            if c.q_value <= cfg.alpha and c.sessions_affected >= cfg.min_sessions and c.lift > 1.0
            and not math.isnan(c.q_value)]
    keep.sort(key=lambda c: (-c.impact, c.q_value, c.key))
    return keep
