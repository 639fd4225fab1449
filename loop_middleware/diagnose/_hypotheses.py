"""Root-cause hypotheses for one significant intent x signal cell. Offline and deterministic.

Each hypothesis looks at the threads of the cell and answers "does this failure mode explain the
affected sessions?" with a :class:`Hypothesis` (a clause naming the cause, verbatim evidence, a
confidence and the details a fix needs) or ``None``:

``coverage_gap``
    The intent's key terms (its keyphrases + the content words its users keep using, stemmed,
    stop words removed) are absent from the prompt text that served the failing turns, and the
    failure is a refusal / frustration / escalation / abandonment: the prompt says nothing about
    the topic, so the agent cannot help.
``regression``
    The signal's rate in the intent jumped when the prompt changed: threads grouped by the
    version of their main prompt, versions in order of first appearance, a one-sided Fisher exact
    two-proportion test per consecutive pair (Bonferroni over the pairs). The details carry the
    unified diff of the two versions. :func:`situation_regression` is the same test in a
    *situation* instead of an intent (the sessions after signal X, affected when failure Y
    follows), stratified by intent; see :func:`situation_tests`.
``tool_failure``
    A tool's errors or empty results precede the failing turn in most affected sessions, and far
    less often in the intent's unaffected ones.
``ungrounded_answer``
    A retrieval tool returned nothing and the agent answered anyway.
``context_loss``
    Failures concentrate past turn N (a discrete-time hazard split at the knee N), or the
    failing calls ran near the model's context limit.
``loop_stall``
    The same tool was called again and again with the same arguments, or stall signals.
``truncated_tool_output``
    The harness cut tool results before the model saw them (``tool_output_truncated`` signals
    before the failure); the details carry the cut length a fix looks for among the harness'
    settings, and the full lengths the markers state.
``forced_language``
    Users were answered in another language than theirs (``language_mismatch``), mostly in one,
    and the serving prompt has an instruction to reply in that language.
``prompt_instruction``
    The agent followed an instruction of the prompt instead of helping: the failing replies
    repeat one section's words (not the user's, not a tool's) with no tool call, where other
    sessions seldom repeat that section and mostly call tools. Not a coverage gap: the prompt
    has guidance on the topic, and it is the guidance that fails.

Each of the last three sets ``details["root_cause"]``: what its fix changes (the harness' cut, a
prompt's language line, a prompt section), the same string for every intent the cause hits, so
that diagnosis can tell one root cause in five intents from five causes.

The hypotheses that compare affected sessions with unaffected ones share one rule
(:func:`_contrast`): a precursor explains the cell when it shows in at least ``min_support`` of the
affected sessions (before or at their failing turn) and in ``min_contrast`` fewer of the intent's
unaffected sessions. A precursor that is everywhere explains nothing in particular.

When nothing fires, :func:`explain` returns one ``unexplained`` hypothesis with the numbers only.
Every quote in :attr:`Hypothesis.evidence` is checked to be a verbatim substring of its thread.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from scipy.stats import fisher_exact

from .._topics import refusal_topics, topic_label
from ..extract._signals import LANGUAGE_NAMES, truncation_sizes, went_well
from ..extract._signals import clip_quote as _clip
from ..types import Evidence, Intent, PromptVersion, Signal, Thread, ToolCall, Turn
from ._stats import CellStat, DiagnoseConfig, stratified_exact_test

__all__ = [
    "FAILURE_MODES",
    "CellContext",
    "Hypothesis",
    "context_loss",
    "coverage_gap",
    "explain",
    "find_quote",
    "forced_language",
    "key_terms",
    "language_instruction",
    "loop_stall",
    "prompt_instruction",
    "regression",
    "regression_test",
    "situation_regression",
    "situation_tests",
    "stem",
    "tool_failure",
    "truncated_tool_output",
    "ungrounded_answer",
    "version_jump",
    "version_order",
]

FAILURE_MODES = ("coverage_gap", "regression", "tool_failure", "ungrounded_answer",
                 "context_loss", "loop_stall", "truncated_tool_output", "forced_language",
                 "prompt_instruction", "unexplained")
"""Every value :attr:`Hypothesis.failure_mode` takes."""

T = TypeVar("T")


# --- context ------------------------------------------------------------------------------------


@dataclass
class CellContext:
    """Everything a hypothesis may look at for one cell. Built by :func:`diagnose`."""

    cell: CellStat
    intent: Intent | None
    intent_threads: list[Thread]
    """The threads of the cell's intent, in input order."""
    other_threads: list[Thread]
    """Every other thread analysed."""
    signals_by_thread: Mapping[str, list[Signal]]
    """All signals (every kind) per thread id."""
    config: DiagnoseConfig
    shared: dict[str, Any] = field(default_factory=dict)
    """A cache shared by the cells of one run (per-thread content words), so a run over many
    cells tokenises each thread once."""
    failing_turn: dict[str, int | None] = field(default_factory=dict)
    """Affected thread id -> first turn index with the cell's signal (``None``: not tied to a turn,
    the whole thread counts as *before* the failure)."""

    def __post_init__(self) -> None:
        if not self.failing_turn:
            for tid in self.cell.thread_ids:
                idx = [s.turn_index for s in self.signals_by_thread.get(tid, [])
                       if s.kind == self.cell.signal and s.turn_index is not None]
                self.failing_turn[tid] = min(idx) if idx else None

    @property
    def intent_name(self) -> str:
        """The intent's name (``(unassigned)`` for the unassigned threads)."""
        return self.intent.name if self.intent is not None else "(unassigned)"

    @property
    def affected(self) -> list[Thread]:
        """The intent's threads with the cell's signal."""
        return [t for t in self.intent_threads if t.thread_id in self.failing_turn]

    @property
    def unaffected(self) -> list[Thread]:
        """The intent's threads without the cell's signal."""
        return [t for t in self.intent_threads if t.thread_id not in self.failing_turn]

    def horizon(self, thread: Thread) -> int | None:
        """The last turn index that counts as *before (or at) the failure* (``None``: all)."""
        return self.failing_turn.get(thread.thread_id)

    def cell_signals(self, thread: Thread) -> list[Signal]:
        """The thread's signals of the cell's kind, earliest first."""
        out = [s for s in self.signals_by_thread.get(thread.thread_id, []) if s.kind == self.cell.signal]
        return sorted(out, key=lambda s: -1 if s.turn_index is None else s.turn_index)


@dataclass(frozen=True)
class Hypothesis:
    """A root-cause hypothesis that fired for a cell."""

    failure_mode: str
    """One of :data:`FAILURE_MODES`."""
    clause: str
    """The cause, as a clause without the cell's numbers ("the prompt has no 'refund' guidance
    (terms ... absent from prompts/support.md @ abc123def456)")."""
    confidence: float
    """0..1: how strongly the data supports this cause (0 for ``unexplained``)."""
    evidence: list[Evidence]
    """Verbatim quotes from the affected threads."""
    details: dict[str, Any]
    """What a fix needs: missing terms, the tool, the version diff, the turn threshold, ..."""
    prompt: PromptVersion | None = None
    """The prompt version to fix, when the hypothesis names one (``regression``: the new one)."""


# --- text helpers -------------------------------------------------------------------------------

_WORD_RX = re.compile(r"[^\W\d_]{2,}", re.UNICODE)
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ations", ""), ("ation", ""), ("ments", ""), ("ment", ""), ("ings", ""), ("ing", ""),
    ("ies", "y"), ("ied", "y"), ("ed", ""), ("es", ""), ("s", ""),
)
_VOWELS = set("aeiouy")


def stem(word: str) -> str:
    """A small, deterministic English suffix stripper (``refunds``/``refunded`` -> ``refund``).

    Not Porter: just enough that the inflections of one word agree (``charge``, ``charges``,
    ``charged``, ``charging`` -> ``charg``; ``cancelled``/``cancel`` -> ``cancel``), which is all
    the coverage check needs. Words of three letters or fewer are kept as they are.
    """
    w = word.lower()
    if len(w) <= 3:
        return w
    for suf, rep in _SUFFIXES:
        if not w.endswith(suf) or len(w) - len(suf) < 3:
            continue
        base = w[: -len(suf)]
        if suf == "es" and not base.endswith(("s", "x", "z", "ch", "sh")):
            base = w[:-1]  # "charges" -> "charge", not "charg" + "es" (the "e" goes below)
        if suf == "s" and w.endswith(("ss", "us", "is")):
            continue
        w = base + rep
        break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in _VOWELS:
        w = w[:-1]
    return w


def _words(text: str) -> list[str]:
    return [m.group(0).lower() for m in _WORD_RX.finditer(text)]


def _content_stems(text: str, stopwords: frozenset[str]) -> dict[str, str]:
    """Content words of ``text``: stem -> first surface form."""
    out: dict[str, str] = {}
    for w in _words(text):
        if len(w) >= 3 and w not in stopwords and w.replace("'", "") not in stopwords:
            out.setdefault(stem(w), w)
    return out


def _thread_pieces(thread: Thread) -> Iterable[tuple[int, str]]:
    """Every stored text of a thread a quote may come from: (turn index, text).

    System messages are left out on purpose: a quote from the prompt is not evidence of what
    happened in a conversation.
    """
    for turn in thread.turns:
        for m in turn.messages:
            if m.role != "system" and m.content:
                yield turn.index, m.content
        for call in turn.tool_calls:
            if call.result:
                yield turn.index, call.result
            if call.error:
                yield turn.index, call.error
        for llm in turn.llm_calls:
            for m in llm.output_messages:
                if m.content:
                    yield turn.index, m.content


def find_quote(thread: Thread, quote: str) -> tuple[bool, int | None]:
    """Whether ``quote`` appears verbatim in the thread, and the first turn index it is in."""
    if not quote:
        return False, None
    for idx, text in _thread_pieces(thread):
        if quote in text:
            return True, idx
    return False, None


def _evidence(thread: Thread, quote: str, turn_index: int | None, limit: int) -> Evidence | None:
    """An :class:`Evidence` for ``quote`` if it is verbatim in the thread (clipped to ``limit``)."""
    quote = quote.strip()
    if len(quote) > limit:
        quote = _clip(quote, 0, 0, limit)
    found, where = find_quote(thread, quote)
    if not found:
        return None
    return Evidence(thread_id=thread.thread_id, turn_index=turn_index if turn_index is not None else where,
                    quote=quote)


def _signal_evidence(ctx: CellContext, thread: Thread) -> Evidence | None:
    """The cell's own signal quote for ``thread``, if verbatim; else the failing turn's user text."""
    limit = ctx.config.max_quote_chars
    for s in ctx.cell_signals(thread):
        # Detectors are asked for verbatim quotes; we check rather than trust.
        if (ev := _quote_evidence(thread, s, limit)) is not None:
            return ev
    h = ctx.horizon(thread)
    turn = _turn(thread, h) if h is not None else (thread.turns[0] if thread.turns else None)
    if turn is not None and turn.user_text.strip():
        user = next(m.content for m in turn.messages if m.role == "user" and m.content.strip())
        return _evidence(thread, _clip(user, 0, 0, limit), turn.index, limit)
    return None


def _turn(thread: Thread, index: int) -> Turn | None:
    for t in thread.turns:
        if t.index == index:
            return t
    return None


def _turns_upto(thread: Thread, horizon: int | None) -> list[Turn]:
    return [t for t in thread.turns if horizon is None or t.index <= horizon]


def _collect_evidence(*groups: Iterable[Evidence | None], limit: int) -> list[Evidence]:
    """Round-robin over evidence groups (so each kind of proof shows), deduplicated, capped."""
    lists = [[ev for ev in g if ev is not None] for g in groups]
    out: list[Evidence] = []
    seen: set[tuple[str, str]] = set()
    for i in range(max((len(g) for g in lists), default=0)):
        for g in lists:
            if i < len(g) and (g[i].thread_id, g[i].quote) not in seen and len(out) < limit:
                seen.add((g[i].thread_id, g[i].quote))
                out.append(g[i])
    return out


# --- prompts ------------------------------------------------------------------------------------


def _turn_prompt(turn: Turn) -> PromptVersion | None:
    for call in sorted(turn.llm_calls, key=lambda c: c.seq):
        if call.prompt_version is not None:
            return call.prompt_version
    return None


def serving_prompt(thread: Thread, turn_index: int | None) -> PromptVersion | None:
    """The main prompt version that served ``turn_index`` (the nearest earlier turn with one,
    else the thread's first); the thread's first when ``turn_index`` is ``None``."""
    turns = thread.turns
    if turn_index is not None:
        for t in sorted((t for t in turns if t.index <= turn_index), key=lambda t: -t.index):
            pv = _turn_prompt(t)
            if pv is not None:
                return pv
    for t in turns:
        pv = _turn_prompt(t)
        if pv is not None:
            return pv
    return None


def _serving_texts(thread: Thread, turn_index: int | None) -> list[PromptVersion]:
    """Every prompt version (main and secondary) used by the failing turn's calls."""
    turn = _turn(thread, turn_index) if turn_index is not None else None
    turns = [turn] if turn is not None and turn.prompt_versions else thread.turns
    seen: dict[str, PromptVersion] = {}
    for t in turns:
        for pv in t.prompt_versions:
            seen.setdefault(pv.sha256, pv)
    return list(seen.values())


def thread_main_prompt(thread: Thread) -> PromptVersion | None:
    """The main prompt version used by most of the thread's turns (first-used on ties)."""
    counts: Counter[str] = Counter()
    first: dict[str, PromptVersion] = {}
    for t in thread.turns:
        pv = _turn_prompt(t)
        if pv is not None:
            counts[pv.sha256] += 1
            first.setdefault(pv.sha256, pv)
    if not counts:
        return None
    order = list(first)
    best = max(order, key=lambda sha: (counts[sha], -order.index(sha)))
    return first[best]


def modal_prompt(ctx: CellContext) -> PromptVersion | None:
    """The prompt version that served most affected sessions at their failing turn."""
    counts: Counter[str] = Counter()
    first: dict[str, PromptVersion] = {}
    for t in ctx.affected:
        pv = serving_prompt(t, ctx.horizon(t))
        if pv is not None:
            counts[pv.sha256] += 1
            first.setdefault(pv.sha256, pv)
    if not counts:
        return None
    order = list(first)
    return first[max(order, key=lambda sha: (counts[sha], -order.index(sha)))]


def _prompt_label(pv: PromptVersion) -> str:
    return f"{pv.path or pv.name or 'the prompt'} @ {pv.short}"


# --- the contrast rule --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contrast:
    hits: dict[str, Any]
    """Affected thread id -> what the predicate found."""
    baseline_hits: dict[str, Any]
    support: float
    baseline: float
    n_affected: int

    def fires(self, cfg: DiagnoseConfig) -> bool:
        return self.support >= cfg.min_support and self.support - self.baseline >= cfg.min_contrast

    @property
    def confidence(self) -> float:
        return round(max(0.0, min(1.0, self.support * (1.0 - self.baseline))), 3)


def _contrast(ctx: CellContext, predicate: Callable[[Thread, int | None], T | None]) -> _Contrast:
    """Run ``predicate(thread, horizon)`` on the affected sessions (up to their failing turn) and
    on the intent's unaffected ones (whole thread)."""
    affected, unaffected = ctx.affected, ctx.unaffected
    hits = {t.thread_id: h for t in affected if (h := predicate(t, ctx.horizon(t))) is not None}
    base = {t.thread_id: h for t in unaffected if (h := predicate(t, None)) is not None}
    return _Contrast(hits=hits, baseline_hits=base,
                     support=len(hits) / len(affected) if affected else 0.0,
                     baseline=len(base) / len(unaffected) if unaffected else 0.0,
                     n_affected=len(affected))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%".replace(".0%", "%")


# --- (a) coverage gap ---------------------------------------------------------------------------


def key_terms(ctx: CellContext) -> list[tuple[str, list[str]]]:
    """The intent's key terms as ``(surface form, stems)``: its keyphrases, then the content words
    that are frequent in its threads' opening user messages and distinctive of it
    (``min_term_share``, ``term_lift``)."""
    cfg = ctx.config
    terms: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, ...]] = set()
    for phrase in (ctx.intent.keyphrases if ctx.intent is not None else []):
        words = _words(phrase)
        # Stop words inside a phrase are not required in the prompt ("where is my order" is
        # about "order"); a phrase made only of stop words names nothing ("help").
        stems = [stem(w) for w in words if w not in cfg.stopwords]
        if not stems:
            continue
        if tuple(stems) not in seen:
            seen.add(tuple(stems))
            terms.append((phrase.strip(), stems))

    words_of: dict[str, dict[str, str]] = ctx.shared.setdefault("opening_words", {})

    def doc_freq(threads: Sequence[Thread]) -> tuple[Counter[str], dict[str, Counter[str]]]:
        df: Counter[str] = Counter()
        surface: dict[str, Counter[str]] = {}
        for t in threads:
            # Opening requests only: they say what the conversation is about. Later user
            # messages are dominated by reactions to the failure ("I want a real person"),
            # which are symptoms, not the topic the prompt should cover.
            words = words_of.get(t.thread_id)
            if words is None:
                words = words_of[t.thread_id] = _content_stems(t.opening_request, cfg.stopwords)
            df.update(words.keys())
            for s, w in words.items():
                surface.setdefault(s, Counter())[w] += 1
        return df, surface

    df_in, surface = doc_freq(ctx.intent_threads)
    df_out, _ = doc_freq(ctx.other_threads)
    n_in, n_out = len(ctx.intent_threads), len(ctx.other_threads)
    candidates = []
    for s, k in df_in.items():
        share_in = k / n_in if n_in else 0.0
        share_out = df_out[s] / n_out if n_out else 0.0
        if share_in >= cfg.min_term_share and share_in >= cfg.term_lift * share_out:
            candidates.append((-k, s))
    in_phrases = {s for key in seen for s in key}
    for _, s in sorted(candidates)[: cfg.top_terms]:
        if s not in in_phrases and (s,) not in seen:  # "refund" adds nothing to "refund policy"
            seen.add((s,))
            word = max(sorted(surface[s]), key=lambda w: surface[s][w])
            terms.append((word, [s]))
    return terms


# Code in a prompt: `backticked spans`, snake_case / dotted identifiers and calls like
# lookup_order( ... ). A tool named `request_refund` tells the model a function exists, not what
# the refund policy is, so its words do not count as the prompt covering the topic.
_CODE_RX = re.compile(r"`[^`\n]*`|\b\w+(?:[_.]\w+)+\b|\b\w+\([^)\n]*\)")


def _prose(text: str) -> str:
    """``text`` without its code spans and identifiers (see ``_CODE_RX``)."""
    return _CODE_RX.sub(" ", text)


def _stem_sequence(text: str) -> list[str]:
    return [stem(w) for w in _words(text)]


def _has_term(stems_of_prompt: list[str], stem_set: set[str], term: list[str]) -> bool:
    """A word is present when its stem is; a phrase when all its stems occur close together
    (within ``2 n + 2`` words), so "money back" matches "the money goes back"."""
    if len(term) == 1:
        return term[0] in stem_set
    if not set(term) <= stem_set:
        return False
    window = 2 * len(term) + 2
    need = set(term)
    for i, s in enumerate(stems_of_prompt):
        if s in need and need <= set(stems_of_prompt[i : i + window]):
            return True
    return False


def coverage_gap(ctx: CellContext) -> Hypothesis | None:
    """The prompt that served the failing turns never mentions the intent's key terms."""
    cfg = ctx.config
    if ctx.cell.signal not in cfg.coverage_gap_signals:
        return None
    affected = ctx.affected
    texts: dict[str, PromptVersion] = {}
    served = 0
    for t in affected:
        pvs = _serving_texts(t, ctx.horizon(t))
        served += bool(pvs)
        for pv in pvs:
            texts.setdefault(pv.sha256, pv)
    if not texts:
        return None  # no prompt recorded: nothing to check the terms against
    terms = key_terms(ctx)
    if not terms:
        return None
    seq = _stem_sequence(_prose("\n".join(pv.text for pv in texts.values())))
    stem_set = set(seq)
    missing = [(word, stems) for word, stems in terms if not _has_term(seq, stem_set, stems)]
    missing_share = len(missing) / len(terms)
    if missing_share < cfg.coverage_min_missing:
        return None
    # A topic missing from the prompt matters when the agent had nothing else to go on. When a
    # tool gave it content (a help-center article, the order) before most failures, the agent
    # was informed: the failure lies elsewhere (or the user wanted something else, e.g. a human).
    informed = sum(_had_content(t, ctx.horizon(t)) for t in affected)
    if len(affected) - informed < cfg.min_support * len(affected):
        return None
    target = modal_prompt(ctx)
    assert target is not None  # texts is non-empty, so some turn had a prompt
    missing_words = [w for w, _ in missing]
    missing_stems = {s for _, stems in missing for s in stems}

    # Evidence: where the users ask about the missing topic, and the failure itself.
    asks: list[Evidence | None] = []
    for t in affected:
        for turn in _turns_upto(t, ctx.horizon(t)):
            ev = None
            for m in turn.messages:
                if m.role != "user":
                    continue
                hit = next((w for w in _WORD_RX.finditer(m.content)
                            if stem(w.group(0)) in missing_stems), None)
                if hit is not None:
                    ev = _evidence(t, _clip(m.content, hit.start(), hit.end(), cfg.max_quote_chars),
                                   turn.index, cfg.max_quote_chars)
                    break
            if ev is not None:
                asks.append(ev)
                break
    failures = [_signal_evidence(ctx, t) for t in affected]
    # The topic in the agent's own words when it says what it cannot do ("I can't help with
    # refunds" in most affected sessions), else the most distinctive missing term.
    said: Counter[tuple[str, ...]] = Counter()
    for t in affected:
        replies = [m.content for turn in _turns_upto(t, ctx.horizon(t)) for m in turn.messages
                   if m.role == "assistant" and m.content]
        said.update(set(refusal_topics(replies)))
    topic_words = sorted(said.items(), key=lambda kv: (-kv[1], kv[0]))[0] if said else None
    quoted = ", ".join(f"'{w}'" for w in missing_words[:4]) + (" ..." if len(missing_words) > 4 else "")
    if topic_words is not None and topic_words[1] >= cfg.min_support * len(affected):
        label = topic_label(topic_words[0])
        clause = (f"the prompt has no {label} policy (the agent says it cannot help with "
                  f"{' '.join(topic_words[0])} in {topic_words[1]} of {len(affected)} affected "
                  f"sessions; terms {quoted} absent from {_prompt_label(target)})")
    else:
        label = missing_words[0]
        clause = (f"the prompt has no {label} policy (terms {quoted} absent from "
                  f"{_prompt_label(target)})")
    return Hypothesis(
        failure_mode="coverage_gap", clause=clause,
        confidence=round(missing_share * (served / len(affected)), 3),
        evidence=_collect_evidence(asks, failures, limit=cfg.max_evidence),
        details={"missing_terms": missing_words, "key_terms": [w for w, _ in terms],
                 "present_terms": [w for w, stems in terms if (w, stems) not in missing],
                 "missing_share": round(missing_share, 3),
                 "topic": label,
                 "informed_by_tools": informed,
                 "prompt_versions_checked": sorted(pv.short for pv in texts.values())},
        prompt=target,
    )


# --- (b) regression -----------------------------------------------------------------------------


def _thread_time(thread: Thread) -> datetime | None:
    ts = thread.created_at
    if ts is None:
        for turn in thread.turns:
            ts = turn.started_at or next((c.started_at for c in turn.llm_calls if c.started_at), None)
            if ts is not None:
                break
    if ts is not None and ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # naive timestamps are taken as UTC so they compare
    return ts


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit] + "\n... (diff truncated)\n"


def _main_prompt(thread: Thread, cache: dict[str, PromptVersion | None]) -> PromptVersion | None:
    if thread.thread_id not in cache:
        cache[thread.thread_id] = thread_main_prompt(thread)
    return cache[thread.thread_id]


def version_order(threads: Sequence[Thread],
                  cache: dict[str, PromptVersion | None] | None = None) -> dict[str, tuple[Any, ...]]:
    """``sha256 -> sort key`` of each main prompt version's first appearance among ``threads``:
    its earliest thread time when every thread has one, else its first position in the input.

    Computed once over every thread analysed, so that a small group of sessions does not decide
    which of two versions came first.
    """
    cache = cache if cache is not None else {}
    times = [_thread_time(t) for t in threads]
    use_time = all(ts is not None for ts in times)
    order: dict[str, tuple[Any, ...]] = {}
    for pos, (t, ts) in enumerate(zip(threads, times, strict=True)):
        pv = _main_prompt(t, cache)
        if pv is None:
            continue
        key: tuple[Any, ...] = (ts, pos) if use_time else (pos,)
        if pv.sha256 not in order or key < order[pv.sha256]:
            order[pv.sha256] = key
    return order


def version_jump(
    threads: Sequence[Thread],
    affected: Set[str],
    config: DiagnoseConfig,
    cache: dict[str, PromptVersion | None],
    *,
    strata: Mapping[str, str | None] | None = None,
    order: Mapping[str, tuple[Any, ...]] | None = None,
) -> dict[str, Any] | None:
    """The version-jump test of one group of sessions, fired or not.

    The sessions are grouped by the version of their main prompt; versions of one prompt (same
    path, or name) form a sequence in order of first appearance (``order``, default: within
    ``threads``). Every consecutive pair with ``min_version_sessions`` sessions on each side is
    tested with :func:`~loop_middleware.diagnose._stats.stratified_exact_test` ("the share of
    ``affected`` sessions is higher on the new version"), stratified by ``strata`` (thread id ->
    intent; ``None``: one stratum, i.e. Fisher's exact test).

    Returns:
        ``None`` when no pair has enough sessions; else the pair with the smallest p (``old`` /
        ``new`` versions, pooled counts, ``p_value``, ``p_adjusted`` = Bonferroni over the pairs
        tested, ``excess_sessions`` = affected sessions on the new version beyond the old
        version's rate, summed within strata that have both versions, and ``strata``: the
        per-stratum ``[affected_new, new, affected_old, old]`` of that pair), so that a caller
        testing many groups can control the false-discovery rate across them.
    """
    cfg = config
    seqs: dict[str, dict[str, tuple[PromptVersion, list[Thread]]]] = {}
    for t in threads:
        pv = _main_prompt(t, cache)
        if pv is None:
            continue
        seqs.setdefault(pv.path or pv.name or "?", {}).setdefault(pv.sha256, (pv, []))[1].append(t)
    if order is None or any(sha not in order for per in seqs.values() for sha in per):
        order = version_order(threads, cache)
    pairs: list[dict[str, Any]] = []
    for ident in sorted(seqs):
        ordered = sorted(seqs[ident].values(), key=lambda v: order[v[0].sha256])
        for (old, old_t), (new, new_t) in itertools.pairwise(ordered):
            if len(old_t) < cfg.min_version_sessions or len(new_t) < cfg.min_version_sessions:
                continue
            tables: dict[str, list[int]] = {}
            for t, col in [*((t, 0) for t in new_t), *((t, 2) for t in old_t)]:
                key = "" if strata is None else (strata.get(t.thread_id) or "")
                row = tables.setdefault(key, [0, 0, 0, 0])
                row[col] += t.thread_id in affected
                row[col + 1] += 1
            p = stratified_exact_test([(a, b, c, d) for a, b, c, d in tables.values()])
            excess = sum(a - b * c / d for a, b, c, d in tables.values() if b and d)
            pairs.append({"old": old, "new": new,
                          "old_sessions": len(old_t), "old_affected": sum(r[2] for r in tables.values()),
                          "new_sessions": len(new_t), "new_affected": sum(r[0] for r in tables.values()),
                          "p_value": p, "excess_sessions": round(max(0.0, excess), 2),
                          "strata": {k: tables[k] for k in sorted(tables)}})
    if not pairs:
        return None
    best = min(pairs, key=lambda x: (x["p_value"], x["new"].sha256))
    best["p_adjusted"] = min(1.0, best["p_value"] * len(pairs))
    best["version_pairs_tested"] = len(pairs)
    return best


def regression_test(ctx: CellContext) -> dict[str, Any] | None:
    """The version-jump test of a cell (its intent's sessions, affected = the cell's), fired or
    not: :func:`version_jump` with one stratum, i.e. a one-sided Fisher exact test per
    consecutive version pair, Bonferroni over the pairs (``None``: no two versions with
    ``min_version_sessions`` sessions each)."""
    cache: dict[str, PromptVersion | None] = ctx.shared.setdefault("main_prompt", {})
    return version_jump(ctx.intent_threads, set(ctx.failing_turn), ctx.config, cache,
                        order=ctx.shared.get("version_order"))


def _diff(old: PromptVersion, new: PromptVersion, limit: int) -> str:
    label = new.path or new.name or "the prompt"
    diff = "".join(difflib.unified_diff(
        old.text.splitlines(keepends=True), new.text.splitlines(keepends=True),
        fromfile=f"{label}@{old.short}", tofile=f"{label}@{new.short}"))
    return _truncate(diff, limit)


def regression(ctx: CellContext, test: dict[str, Any] | None = None,
               q_value: float | None = None) -> Hypothesis | None:
    """The signal's rate in the intent jumped from one prompt version to the next.

    Args:
        ctx: The cell.
        test: Its :func:`regression_test` (computed when not given).
        q_value: The test's false-discovery-rate adjusted p across many cells; when given it is
            compared with ``regression_alpha`` instead of the cell's own ``p_adjusted``.
    """
    cfg = ctx.config
    test = test if test is not None else regression_test(ctx)
    if test is None:
        return None
    old, new = test["old"], test["new"]
    n_old, a_old, n_new, a_new = (test["old_sessions"], test["old_affected"],
                                  test["new_sessions"], test["new_affected"])
    p, p_adj = test["p_value"], test["p_adjusted"]
    level = q_value if q_value is not None else p_adj
    if level > cfg.regression_alpha or a_new / n_new <= a_old / n_old:
        return None
    label = new.path or new.name or "the prompt"
    on_new = [t for t in ctx.affected if (pv := thread_main_prompt(t)) is not None
              and pv.sha256 == new.sha256]
    share_new = len(on_new) / max(1, len(ctx.affected))
    stat = f"p={p_adj:.2g}" if q_value is None else f"p={p_adj:.2g}, q={q_value:.2g}"
    clause = (f"the {ctx.cell.signal} rate jumped from {_pct(a_old / n_old)} to {_pct(a_new / n_new)} "
              f"when {label} changed from {old.short} to {new.short} ({stat})")
    return Hypothesis(
        failure_mode="regression", clause=clause,
        confidence=round((1.0 - level) * share_new, 3),
        evidence=_collect_evidence((_signal_evidence(ctx, t) for t in on_new), limit=cfg.max_evidence),
        details={"old_sha256": old.sha256, "new_sha256": new.sha256, "prompt_path": new.path,
                 "old_rate": a_old / n_old, "new_rate": a_new / n_new,
                 "old_sessions": n_old, "old_affected": a_old,
                 "new_sessions": n_new, "new_affected": a_new,
                 "p_value": p, "p_adjusted": p_adj, "version_pairs_tested": test["version_pairs_tested"],
                 **({"q_value": q_value} if q_value is not None else {}),
                 # Sessions the change added: those on the new version beyond the old version's rate.
                 "excess_sessions": test["excess_sessions"],
                 "new_version_thread_ids": sorted(t.thread_id for t in on_new)[:100],
                 "diff": _diff(old, new, cfg.max_diff_chars)},
        prompt=new,
    )


# --- (b') regression in a situation -------------------------------------------------------------


def situation_tests(
    threads: Sequence[Thread],
    signals_by_thread: Mapping[str, Sequence[Signal]],
    assignments: Mapping[str, str | None],
    config: DiagnoseConfig,
    shared: dict[str, Any],
) -> list[dict[str, Any]]:
    """Version-jump tests of "after X, Y": the sessions in which signal kind X fired (the
    *situation*: a user asked for a human, a tool failed, the user switched language), affected
    when failure kind Y fires at a later turn than the first X.

    One test per (X, Y) with X != Y, X any kind placed at a turn, Y a failure kind (severity >
    0), with ``min_sessions`` affected sessions and two versions with ``min_version_sessions``
    situation sessions each: :func:`version_jump` stratified by intent (``assignments``), so the
    sessions of every intent that reach the situation count, but only against sessions of the
    same intent on the other version.

    "Later turn", not "same turn": a user-side signal in the same message as X (an angry request
    for a human) is part of the situation, not the agent's handling of it.

    Returns:
        The tests (each :func:`version_jump`'s dict plus ``trigger`` = X, ``signal`` = Y,
        ``situation_sessions`` and the ``affected_ids``), in (X, Y) order.
    """
    cfg = config
    cache: dict[str, PromptVersion | None] = shared.setdefault("main_prompt", {})
    order = shared.get("version_order")
    first: dict[str, dict[str, int]] = {}  # thread -> kind -> first turn
    last: dict[str, dict[str, int]] = {}  # thread -> kind -> last turn
    for t in threads:
        for s in signals_by_thread.get(t.thread_id, []):
            if s.turn_index is None:
                continue
            f, la = first.setdefault(t.thread_id, {}), last.setdefault(t.thread_id, {})
            f[s.kind] = min(f.get(s.kind, s.turn_index), s.turn_index)
            la[s.kind] = max(la.get(s.kind, s.turn_index), s.turn_index)
    kinds = sorted({k for per in first.values() for k in per})
    failures = [k for k in kinds if cfg.severity_of(k) > 0]
    out: list[dict[str, Any]] = []
    for x in kinds:
        population = [t for t in threads if x in first.get(t.thread_id, {})]
        if len(population) < 2 * cfg.min_version_sessions:
            continue
        for y in failures:
            if y == x:
                continue
            affected = {t.thread_id for t in population
                        if last.get(t.thread_id, {}).get(y, -1) > first[t.thread_id][x]}
            if len(affected) < cfg.min_sessions:
                continue
            test = version_jump(population, affected, cfg, cache, strata=assignments, order=order)
            if test is None:
                continue
            test.update(trigger=x, signal=y, situation_sessions=len(population),
                        affected_ids=sorted(affected),
                        trigger_turns={t.thread_id: first[t.thread_id][x] for t in population})
            out.append(test)
    return out


def _first_after(signals: Sequence[Signal], kind: str, after: int) -> Signal | None:
    later = [s for s in signals if s.kind == kind and s.turn_index is not None and s.turn_index > after]
    return min(later, key=lambda s: s.turn_index or 0) if later else None


def _quote_evidence(thread: Thread, signal: Signal, limit: int) -> Evidence | None:
    """The signal's quote (its longest verbatim fragment, when ellipsis-joined) as evidence."""
    for part in sorted(re.split(r"\u2026|\.\.\.", signal.evidence), key=len, reverse=True):
        ev = _evidence(thread, part, signal.turn_index, limit)
        if ev is not None and len(ev.quote) >= 3:
            return ev
    return None


def situation_regression(
    test: dict[str, Any],
    threads_by_id: Mapping[str, Thread],
    signals_by_thread: Mapping[str, Sequence[Signal]],
    config: DiagnoseConfig,
    q_value: float,
) -> Hypothesis | None:
    """After signal X, failure Y became more frequent from one prompt version to the next.

    Args:
        test: One of :func:`situation_tests`.
        threads_by_id: Every thread analysed.
        signals_by_thread: All signals per thread id.
        config: ``regression_alpha``, evidence limits.
        q_value: The test's false-discovery-rate adjusted p (BH across every version-jump test).

    Returns:
        ``None`` unless ``q_value <= regression_alpha`` and the rate went up. Evidence: the
        agent's reply at the situation's turn (how it now handles the situation) and the failure
        that followed, from sessions on the new version.
    """
    cfg = config
    old, new = test["old"], test["new"]
    x, y = test["trigger"], test["signal"]
    n_old, a_old, n_new, a_new = (test["old_sessions"], test["old_affected"],
                                  test["new_sessions"], test["new_affected"])
    if q_value > cfg.regression_alpha or a_new / n_new <= a_old / n_old:
        return None
    label = new.path or new.name or "the prompt"
    on_new = [threads_by_id[tid] for tid in test["affected_ids"]
              if tid in threads_by_id and (pv := thread_main_prompt(threads_by_id[tid])) is not None
              and pv.sha256 == new.sha256]
    replies: list[Evidence] = []
    failures: list[Evidence] = []
    for t in on_new:
        at = test["trigger_turns"][t.thread_id]
        turn = _turn(t, at)
        s = _first_after(signals_by_thread.get(t.thread_id, []), y, at)
        for pool, ev in (
            (replies, _evidence(t, _clip(turn.reply_text, 0, 0, cfg.max_quote_chars), at, cfg.max_quote_chars)
             if turn is not None and turn.reply_text.strip() else None),
            (failures, _quote_evidence(t, s, cfg.max_quote_chars) if s is not None else None),
        ):
            # One quote per distinct text: the same scripted reply in ten sessions says it once.
            if ev is not None and all(ev.quote != e.quote for e in pool):
                pool.append(ev)
    strata = test["strata"]
    informative = sum(1 for a, b, c, d in strata.values() if b and d)
    clause = (f"after {x}, the {y} rate jumped from {_pct(a_old / n_old)} to {_pct(a_new / n_new)} "
              f"of sessions when {label} changed from {old.short} to {new.short} (within "
              f"{informative} intents with sessions on both versions; p={test['p_adjusted']:.2g}, "
              f"q={q_value:.2g})")
    return Hypothesis(
        failure_mode="regression", clause=clause,
        confidence=round((1.0 - q_value) * len(on_new) / max(1, len(test["affected_ids"])), 3),
        evidence=_collect_evidence(replies, failures, limit=cfg.max_evidence),
        details={"situation": x, "old_sha256": old.sha256, "new_sha256": new.sha256,
                 "prompt_path": new.path,
                 "old_rate": a_old / n_old, "new_rate": a_new / n_new,
                 "old_sessions": n_old, "old_affected": a_old,
                 "new_sessions": n_new, "new_affected": a_new,
                 "situation_sessions": test["situation_sessions"],
                 "p_value": test["p_value"], "p_adjusted": test["p_adjusted"],
                 "version_pairs_tested": test["version_pairs_tested"], "q_value": q_value,
                 "excess_sessions": test["excess_sessions"],
                 "by_intent": {k or "(unassigned)": dict(zip(("new_affected", "new_sessions", "old_affected",
                                                        "old_sessions"), v, strict=True))
                               for k, v in strata.items()},
                 "new_version_thread_ids": sorted(t.thread_id for t in on_new)[:100],
                 "diff": _diff(old, new, cfg.max_diff_chars)},
        prompt=new,
    )


# --- (c) tool failure ---------------------------------------------------------------------------

_EMPTY_RX = re.compile(
    r"\s*(?:|\[\s*\]|\{\s*\}|null|none|n/?a|\"\"|''"
    r"|(?:no|0|zero) (?:relevant |matching )?(?:results?|matches|documents?|records?|items?|data|"
    r"entries|hits|articles?|orders?)(?: (?:were |was )?(?:found|returned|available))?(?: for [^\n]{0,80})?"
    r"|(?:not found|nothing found|no match(?:es)?|empty)(?: for [^\n]{0,80})?)\s*[.!]?\s*",
    re.IGNORECASE,
)
_ERROR_RESULT_RX = re.compile(
    r"^\s*(?:\{\s*\"(?:error|detail)\"|error\b|exception\b|traceback\b|failed\b)"
    r"|\b(?:timed out|timeout|internal server error|service unavailable|bad gateway|"
    r"connection (?:refused|reset)|rate limit(?:ed)?|HTTP 5\d\d|status(?: code)?:? 5\d\d)\b",
    re.IGNORECASE,
)
_ADMITS_RX = re.compile(
    r"\b(?:couldn't|could not|can't|cannot|wasn't able to|was not able to|unable to|didn't|did not)"
    r" (?:find|locate|retrieve|confirm|verify|see)\b"
    r"|\bno (?:results?|matching|matches|records?|information|info|data|details|entries|documents?)\b"
    r"|\b(?:i|we) (?:don't|do not) (?:have|know|see)\b|\bnot sure\b|\bnot found\b",
    re.IGNORECASE,
)


def _is_empty(result: str | None) -> bool:
    if result is None:
        return True
    if len(result) > 300:
        return False
    if _EMPTY_RX.fullmatch(result):
        return True
    s = result.strip()
    if s[:1] in ("{", "["):
        try:
            value = json.loads(s)
        except ValueError:
            return False
        if value in ([], {}, None, ""):
            return True
        # {"results": [], "total": 0}: every field empty or zero.
        return isinstance(value, dict) and all(v in (None, "", 0, [], {}) for v in value.values())
    return False


def _is_error(call: ToolCall) -> bool:
    return bool(call.error and call.error.strip()) or bool(
        call.result and _ERROR_RESULT_RX.search(call.result[:2000]))


def _answers(turn: Turn) -> bool:
    """The turn's reply states an answer: long enough, no "couldn't find", not a question."""
    reply = turn.reply_text.strip()
    return len(reply) >= 20 and not _ADMITS_RX.search(reply) and not reply.endswith(("?", "？"))


def _had_content(thread: Thread, horizon: int | None) -> bool:
    """Some tool returned content (neither empty nor an error) up to ``horizon``."""
    return any(not _is_error(c) and not _is_empty(c.result)
               for turn in _turns_upto(thread, horizon) for c in turn.tool_calls)


def _retrieval_rx(cfg: DiagnoseConfig) -> re.Pattern[str]:
    return re.compile(cfg.retrieval_tool_pattern, re.IGNORECASE)


def _tool_failures(thread: Thread, horizon: int | None, cfg: DiagnoseConfig
                   ) -> dict[str, list[tuple[int, ToolCall, str]]]:
    """tool name -> its failing calls up to ``horizon``: (turn index, call, "error" | "empty").

    An empty result of a retrieval tool that the agent then answered from anyway is left to
    ``ungrounded_answer``: the tool did its job (nothing matched), the answer is the defect.
    """
    rx = _retrieval_rx(cfg)
    out: dict[str, list[tuple[int, ToolCall, str]]] = {}
    for turn in _turns_upto(thread, horizon):
        for call in sorted(turn.tool_calls, key=lambda c: c.seq):
            if _is_error(call):
                out.setdefault(call.name, []).append((turn.index, call, "error"))
            elif _is_empty(call.result) and not (rx.search(call.name) and _answers(turn)):
                out.setdefault(call.name, []).append((turn.index, call, "empty"))
    return out


def tool_failure(ctx: CellContext) -> Hypothesis | None:
    """A tool's errors or empty results precede the failure in most affected sessions."""
    cfg = ctx.config
    per_thread = {t.thread_id: _tool_failures(t, ctx.horizon(t), cfg) for t in ctx.affected}
    tools = sorted({name for f in per_thread.values() for name in f})
    best: tuple[float, str, _Contrast] | None = None
    for name in tools:
        def failed(t: Thread, h: int | None, name: str = name) -> list[tuple[int, ToolCall, str]] | None:
            return _tool_failures(t, h, cfg).get(name)

        c = _contrast(ctx, failed)
        # Tools are sorted, so on equal contrast the first name wins (deterministic).
        if c.fires(cfg) and (best is None or c.support - c.baseline > best[0]):
            best = (c.support - c.baseline, name, c)
    if best is None:
        return None
    _, tool, c = best
    calls = failures = errors = 0
    for t in [*ctx.intent_threads, *ctx.other_threads]:
        for turn in t.turns:
            for call in turn.tool_calls:
                if call.name != tool:
                    continue
                calls += 1
                if _is_error(call):
                    failures += 1
                    errors += 1
                elif _is_empty(call.result):
                    failures += 1
    samples: list[str] = []
    tool_quotes: list[Evidence | None] = []
    for t in ctx.affected:
        hits = c.hits.get(t.thread_id)
        if not hits:
            continue
        idx, call, _kind = hits[0]
        text = (call.error or call.result or "").strip()
        if text:
            tool_quotes.append(_evidence(t, _clip(text, 0, 0, cfg.max_quote_chars), idx,
                                         cfg.max_quote_chars))
            if text[:120] not in samples and len(samples) < 3:
                samples.append(text[:120])
    rate = failures / calls if calls else 0.0
    clause = (f"the `{tool}` tool fails before the failure (error or empty result in {len(c.hits)} "
              f"of {c.n_affected} affected sessions, vs {_pct(c.baseline)} of the intent's other "
              f"sessions; {_pct(rate)} of its {calls} calls fail)")
    return Hypothesis(
        failure_mode="tool_failure", clause=clause, confidence=c.confidence,
        evidence=_collect_evidence(tool_quotes, (_signal_evidence(ctx, t) for t in ctx.affected
                                                 if t.thread_id in c.hits), limit=cfg.max_evidence),
        details={"tool": tool, "error_rate": round(rate, 4), "calls": calls, "failures": failures,
                 "errors": errors, "empty_results": failures - errors,
                 "support": round(c.support, 4), "baseline": round(c.baseline, 4),
                 "sample_errors": samples},
        prompt=modal_prompt(ctx),
    )


# --- (d) ungrounded answer ----------------------------------------------------------------------


def _ungrounded_turns(thread: Thread, horizon: int | None, ctx: CellContext
                      ) -> list[tuple[int, ToolCall | None, Turn]] | None:
    rx = _retrieval_rx(ctx.config)
    out: list[tuple[int, ToolCall | None, Turn]] = []
    for turn in _turns_upto(thread, horizon):
        empty = [c for c in sorted(turn.tool_calls, key=lambda c: c.seq)
                 if rx.search(c.name) and not _is_error(c) and _is_empty(c.result)]
        found = [c for c in turn.tool_calls
                 if rx.search(c.name) and not _is_error(c) and not _is_empty(c.result)]
        if empty and not found and _answers(turn):
            out.append((turn.index, empty[0], turn))
    signalled = {s.turn_index for s in ctx.signals_by_thread.get(thread.thread_id, [])
                 if s.kind == "ungrounded" and (horizon is None or s.turn_index is None
                                                or s.turn_index <= horizon)}
    for idx in sorted(i for i in signalled - {i for i, _, _ in out} if i is not None):
        sturn = _turn(thread, idx)
        if sturn is not None:
            out.append((idx, None, sturn))
    return out or None


def ungrounded_answer(ctx: CellContext) -> Hypothesis | None:
    """The agent answered although retrieval returned nothing."""
    cfg = ctx.config
    c = _contrast(ctx, lambda t, h: _ungrounded_turns(t, h, ctx))
    if not c.fires(cfg):
        return None
    tools: Counter[str] = Counter()
    queries: list[Any] = []
    replies: list[Evidence | None] = []
    asks: list[Evidence | None] = []
    for t in ctx.affected:
        hits = c.hits.get(t.thread_id)
        if not hits:
            continue
        idx, call, turn = hits[0]
        if call is not None:
            tools[call.name] += 1
            if call.arguments is not None and len(queries) < 5 and call.arguments not in queries:
                queries.append(call.arguments)
        reply = turn.reply_text
        if reply:
            replies.append(_evidence(t, _clip(reply, 0, 0, cfg.max_quote_chars), idx, cfg.max_quote_chars))
        user = next((m.content for m in turn.messages if m.role == "user" and m.content.strip()), "")
        if user:
            asks.append(_evidence(t, _clip(user, 0, 0, cfg.max_quote_chars), idx, cfg.max_quote_chars))
    tool = min(tools, key=lambda n: (-tools[n], n)) if tools else None
    named = f"`{tool}`" if tool else "retrieval"
    example = f"; e.g. for {json.dumps(queries[0], ensure_ascii=False, default=str)}" if queries else ""
    clause = (f"the agent answers although {named} returned nothing ({len(c.hits)} of "
              f"{c.n_affected} affected sessions, vs {_pct(c.baseline)} of the intent's other "
              f"sessions{example})")
    return Hypothesis(
        failure_mode="ungrounded_answer", clause=clause, confidence=c.confidence,
        evidence=_collect_evidence(replies, asks, limit=cfg.max_evidence),
        details={"tool": tool, "tools": dict(sorted(tools.items())), "queries": queries,
                 "support": round(c.support, 4), "baseline": round(c.baseline, 4)},
        prompt=modal_prompt(ctx),
    )


# --- (e) context loss ---------------------------------------------------------------------------


def _turn_knee(ctx: CellContext) -> dict[str, Any] | None:
    """Split the turn axis at the N where the failure hazard jumps most significantly.

    Units at risk: each turn of a thread up to and including its first failure (a discrete-time
    hazard, so the turns a frustrated user adds *after* failing do not count). When the signal
    fires on the thread's last turn by construction (abandonment), each thread is one unit at its
    last turn instead, which compares long with short threads; otherwise the natural end of
    threads would look like "failures concentrate late".

    Every candidate N gets a one-sided Fisher test (late vs early units); the smallest p wins,
    the earliest N on ties, and the p-value is Bonferroni-corrected over the candidates.
    """
    cfg = ctx.config
    if ctx.cell.signal in cfg.context_knee_excluded_signals:
        return None
    threads = ctx.intent_threads
    fails = ctx.failing_turn
    known = [t for t in ctx.affected if fails.get(t.thread_id) is not None]
    if len(known) < cfg.min_sessions:
        return None
    last = {t.thread_id: max((tt.index for tt in t.turns), default=0) for t in threads}
    at_end = sum(fails[t.thread_id] == last[t.thread_id] for t in known) / len(known)
    units: list[tuple[int, bool]] = []
    for t in threads:
        f = fails.get(t.thread_id)
        if at_end >= 0.8:
            units.append((f if f is not None else last[t.thread_id], t.thread_id in fails))
        else:
            stop = f if f is not None else last[t.thread_id]
            units.extend((tt.index, tt.index == f) for tt in t.turns if tt.index <= stop)
    max_idx = max((i for i, _ in units), default=0)
    candidates = [cfg.context_turn_threshold] if cfg.context_turn_threshold is not None \
        else list(range(max(1, cfg.context_min_turn), max_idx + 1))
    best: dict[str, Any] | None = None
    for n in candidates:
        late = [f for i, f in units if i >= n]
        early = [f for i, f in units if i < n]
        if not late or not early:
            continue
        fl, fe = sum(late), sum(early)
        if fl < cfg.min_sessions:
            continue
        p = float(fisher_exact([[fl, len(late) - fl], [fe, len(early) - fe]], alternative="greater")[1])
        row = {"turn_threshold": n, "late_failures": fl, "late_units": len(late),
               "early_failures": fe, "early_units": len(early), "p_value": p,
               "late_rate": fl / len(late), "early_rate": fe / len(early),
               "unit": "thread" if at_end >= 0.8 else "turn"}
        if best is None or p < best["p_value"]:
            best = row
    if best is None:
        return None
    best["p_adjusted"] = min(1.0, best["p_value"] * len(candidates))
    ratio = best["late_rate"] / max(best["early_rate"], 0.5 / best["early_units"])
    best["hazard_ratio"] = round(ratio, 3)
    late_share = sum(fails[t.thread_id] >= best["turn_threshold"] for t in known) / len(ctx.affected)
    best["late_share"] = round(late_share, 4)
    if (best["p_adjusted"] > cfg.alpha or ratio < cfg.context_min_ratio
            or late_share < cfg.min_support):
        return None
    return best


def _near_limit(thread: Thread, horizon: int | None, cfg: DiagnoseConfig) -> tuple[int, int, int] | None:
    """(turn index, input tokens, budget) of the first call near the context limit."""
    for turn in _turns_upto(thread, horizon):
        for call in turn.llm_calls:
            budget = cfg.context_budget(call.model)
            if call.input_tokens is not None and call.input_tokens >= cfg.context_token_fraction * budget:
                return turn.index, call.input_tokens, budget
    return None


_LOSS_MECHANISMS = frozenset({"messages_dropped", "token_budget"})
"""``context_loss`` signal reasons that show the harness itself cut what the model saw."""


def _context_signals(thread: Thread, horizon: int | None, ctx: CellContext,
                     reasons: frozenset[str] | None = None) -> list[Signal] | None:
    """The thread's ``context_loss`` signals up to ``horizon`` (optionally of given reasons)."""
    out = [s for s in ctx.signals_by_thread.get(thread.thread_id, [])
           if s.kind == "context_loss"
           and (horizon is None or s.turn_index is None or s.turn_index <= horizon)
           and (reasons is None or s.details.get("reason") in reasons)]
    return out or None


def context_loss(ctx: CellContext) -> Hypothesis | None:
    """The conversation lost context: failures concentrate past turn N (N >= ``context_min_turn``),
    the failing calls ran near the model's context limit, the harness dropped earlier messages
    (``context_loss`` signals with reason ``messages_dropped`` / ``token_budget`` in most affected
    sessions), or -- for a cell of another signal -- most affected sessions lost context (any
    ``context_loss`` signal) before failing, far more than the intent's unaffected sessions."""
    cfg = ctx.config
    knee = _turn_knee(ctx)
    tokens = _contrast(ctx, lambda t, h: _near_limit(t, h, cfg))
    token_fires = tokens.fires(cfg)
    if ctx.cell.signal == "context_loss":
        # The cell's own signal says context was lost; how it was lost is what a fix needs.
        # Users saying "I already told you" at random turns do not establish it on their own.
        mech = _contrast(ctx, lambda t, h: _context_signals(t, h, ctx, _LOSS_MECHANISMS))
        mech_fires = mech.support >= cfg.min_support
    else:
        mech = _contrast(ctx, lambda t, h: _context_signals(t, h, ctx))
        mech_fires = mech.fires(cfg)
    if knee is None and not token_fires and not mech_fires:
        return None
    parts: list[str] = []
    details: dict[str, Any] = {}
    late_ev: list[Evidence | None] = []
    mech_ev: list[Evidence | None] = []
    if mech_fires:
        reasons: Counter[str] = Counter(
            str(s.details.get("reason", "context_loss")) for sigs in mech.hits.values() for s in sigs[:1])
        named = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        parts.append(f"the conversation lost context before the failure in {len(mech.hits)} of "
                     f"{mech.n_affected} affected sessions ({named}; vs {_pct(mech.baseline)} of the "
                     f"intent's other sessions)")
        details.update(loss_support=round(mech.support, 4), loss_baseline=round(mech.baseline, 4),
                       loss_reasons=dict(sorted(reasons.items())))
        for t in ctx.affected:
            sigs = mech.hits.get(t.thread_id)
            if sigs:
                for part in sorted(re.split(r"\u2026|\.\.\.", sigs[0].evidence), key=len, reverse=True):
                    ev = _evidence(t, part, sigs[0].turn_index, cfg.max_quote_chars)
                    if ev is not None and len(ev.quote) >= 3:
                        mech_ev.append(ev)
                        break
    if knee is not None:
        n = knee["turn_threshold"]
        parts.append(f"failures concentrate after {n} turns ({_pct(knee['late_rate'])} of "
                     f"{knee['unit']}s from turn {n + 1} on fail vs {_pct(knee['early_rate'])} "
                     f"before; p={knee['p_adjusted']:.2g})")
        details.update(knee)
        late_ev = [_signal_evidence(ctx, t) for t in ctx.affected
                   if (f := ctx.failing_turn.get(t.thread_id)) is not None and f >= n]
    token_ev: list[Evidence | None] = []
    if token_fires:
        peak = max(v[1] for v in tokens.hits.values())
        budget = max(v[2] for v in tokens.hits.values())
        parts.append(f"the failing calls run near the context limit ({len(tokens.hits)} of "
                     f"{tokens.n_affected} affected sessions at >= {_pct(cfg.context_token_fraction)} "
                     f"of a {budget}-token budget, peak {peak})")
        details.update(near_limit_support=round(tokens.support, 4),
                       near_limit_baseline=round(tokens.baseline, 4),
                       max_input_tokens=peak, context_budget=budget)
        for t in ctx.affected:
            hit = tokens.hits.get(t.thread_id)
            turn = _turn(t, hit[0]) if hit else None
            if turn is not None and turn.user_text.strip():
                token_ev.append(_evidence(t, _clip(turn.user_text, 0, 0, cfg.max_quote_chars),
                                          turn.index, cfg.max_quote_chars))
    conf = [tokens.confidence] if token_fires else []
    if mech_fires:
        conf.append(mech.confidence)
    if knee is not None:
        conf.append(round(knee["late_share"] * (1 - knee["p_adjusted"]), 3))
    return Hypothesis(
        failure_mode="context_loss", clause="; ".join(parts), confidence=max(conf),
        evidence=_collect_evidence(mech_ev, late_ev, token_ev, limit=cfg.max_evidence),
        details=details, prompt=modal_prompt(ctx),
    )


# --- (f) loop stall -----------------------------------------------------------------------------


def _canonical(args: Any) -> str:
    value = args
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except ValueError:
            return args.strip()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _stall(thread: Thread, horizon: int | None, ctx: CellContext) -> dict[str, Any] | None:
    counts: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], tuple[int, Any]] = {}
    for turn in _turns_upto(thread, horizon):
        for call in sorted(turn.tool_calls, key=lambda c: c.seq):
            key = (call.name, _canonical(call.arguments))
            counts[key] += 1
            first.setdefault(key, (turn.index, call.arguments))
    if counts:
        key, n = max(sorted(counts.items()), key=lambda kv: kv[1])
        if n >= ctx.config.repeated_tool_calls:
            return {"tool": key[0], "arguments": first[key][1], "calls": n, "turn_index": first[key][0]}
    stalls = [s for s in ctx.signals_by_thread.get(thread.thread_id, [])
              if s.kind == "stall" and (horizon is None or s.turn_index is None or s.turn_index <= horizon)]
    if stalls:
        return {"tool": stalls[0].details.get("tool"), "arguments": stalls[0].details.get("arguments"),
                "calls": stalls[0].details.get("calls"), "turn_index": stalls[0].turn_index,
                "stall_signal": stalls[0].details.get("reason", "stall")}
    return None


def loop_stall(ctx: CellContext) -> Hypothesis | None:
    """The agent calls the same tool with the same arguments again and again (or stalls)."""
    cfg = ctx.config
    c = _contrast(ctx, lambda t, h: _stall(t, h, ctx))
    if not c.fires(cfg):
        return None
    loops: Counter[str] = Counter(h["tool"] for h in c.hits.values() if h.get("tool"))
    tool = min(loops, key=lambda n: (-loops[n], n)) if loops else None
    if tool is not None and loops[tool] < cfg.min_support * c.n_affected:
        # One looping tool in a few sessions does not name the cause of the others' stalls.
        tool = None
    sample = next((h for h in c.hits.values() if h.get("tool") == tool), None) if tool else None
    if tool and sample is not None:
        calls = max(h["calls"] or 0 for h in c.hits.values() if h.get("tool") == tool)
        args = json.dumps(sample["arguments"], ensure_ascii=False, default=str)
        clause = (f"the agent loops: `{tool}` is called up to {calls}x with the same arguments "
                  f"({args}) in {loops[tool]} of {c.n_affected} affected sessions")
    else:
        clause = f"the conversation stalls ({len(c.hits)} of {c.n_affected} affected sessions)"
    ev: list[Evidence | None] = []
    for t in ctx.affected:
        hit = c.hits.get(t.thread_id)
        turn = _turn(t, hit["turn_index"]) if hit and hit.get("turn_index") is not None else None
        if turn is not None and turn.user_text.strip():
            ev.append(_evidence(t, _clip(turn.user_text, 0, 0, cfg.max_quote_chars), turn.index,
                                cfg.max_quote_chars))
    return Hypothesis(
        failure_mode="loop_stall", clause=clause, confidence=c.confidence,
        evidence=_collect_evidence(ev, (_signal_evidence(ctx, t) for t in ctx.affected
                                        if t.thread_id in c.hits), limit=cfg.max_evidence),
        details={"tool": tool, "arguments": sample["arguments"] if sample else None,
                 "support": round(c.support, 4), "baseline": round(c.baseline, 4)},
        prompt=modal_prompt(ctx),
    )


# --- (g) tool output cut by the harness -----------------------------------------------------------

_CUT_KIND = "tool_output_truncated"


def _cuts(thread: Thread, horizon: int | None, ctx: CellContext) -> list[dict[str, Any]] | None:
    """The cut tool results of ``thread`` up to ``horizon`` (from ``tool_output_truncated``
    signals): one dict per cut result with its ``tool``, ``kept_chars``, ``marker``, the marker's
    ``dropped`` / ``limit`` / ``unit`` and the ``turn_index``."""
    out: list[dict[str, Any]] = []
    for s in ctx.signals_by_thread.get(thread.thread_id, []):
        if s.kind != _CUT_KIND or (horizon is not None and s.turn_index is not None
                                   and s.turn_index > horizon):
            continue
        for cut in s.details.get("cuts") or []:
            if isinstance(cut, Mapping):
                sizes = truncation_sizes(str(cut.get("marker") or ""))
                out.append({**sizes, **cut, "turn_index": s.turn_index})
    return out or None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def truncated_tool_output(ctx: CellContext) -> Hypothesis | None:
    """The harness cut tool results before the model saw them: most affected sessions got a
    result ending with a truncation marker (``tool_output_truncated``) at or before their failure,
    far more than the intent's unaffected sessions. The cut length (the longest content kept
    before a marker, or the limit the marker states) is what a fix looks for among the harness'
    settings; the full lengths (kept + the marker's "N more characters") say how far to raise it.
    """
    cfg = ctx.config
    c = _contrast(ctx, lambda t, h: _cuts(t, h, ctx))
    if not c.fires(cfg):
        return None
    cuts = [cut for hits in c.hits.values() for cut in hits]
    tools: Counter[str] = Counter()
    for hits in c.hits.values():
        tools.update({str(cut.get("tool") or "?") for cut in hits})
    units: Counter[str] = Counter(str(cut.get("unit") or "characters") for cut in cuts)
    unit = min(units, key=lambda u: (-units[u], u))
    kept = [k for cut in cuts if (k := _int(cut.get("kept_chars"))) is not None]
    stated = [k for cut in cuts if (k := _int(cut.get("limit"))) is not None]
    # The harness keeps at most its limit; the longest kept content is the best estimate of it
    # (a cut that ends on a space or an ellipsis keeps a few characters less).
    limit = max(stated) if stated else (max(kept) if kept else None)
    if not stated:
        unit = "characters"  # kept_chars counts characters, whatever the marker counts
    full = [k + d for cut in cuts
            if (k := _int(cut.get("kept_chars"))) is not None
            and (d := _int(cut.get("dropped"))) is not None and cut.get("unit", "characters") == "characters"]
    tool = min(tools, key=lambda n: (-tools[n], n))
    named = ", ".join(f"`{n}`" for n in sorted(tools, key=lambda n: (-tools[n], n))[:3])
    size = "" if limit is None else f" at {'' if stated else 'about '}{limit} {unit}"
    longest = f"; the cut results had up to {max(full)} characters in full" if full else ""
    clause = (f"the harness cuts {named} results{size} before the model sees them ({len(c.hits)} of "
              f"{c.n_affected} affected sessions got a cut result at or before the failure, vs "
              f"{_pct(c.baseline)} of the intent's other sessions{longest})")
    limit_ev = cfg.max_quote_chars
    markers: list[Evidence | None] = []
    replies: list[Evidence | None] = []
    for t in ctx.affected:
        hits = c.hits.get(t.thread_id)
        if not hits:
            continue
        first = hits[0]
        markers.append(_evidence(t, str(first.get("marker") or ""), first["turn_index"], limit_ev))
        turn = _turn(t, first["turn_index"]) if first["turn_index"] is not None else None
        if turn is not None and turn.reply_text.strip():
            replies.append(_evidence(t, _clip(turn.reply_text, 0, 0, limit_ev), turn.index, limit_ev))
    failures = [_signal_evidence(ctx, t) for t in ctx.affected if t.thread_id in c.hits]
    return Hypothesis(
        failure_mode="truncated_tool_output", clause=clause, confidence=c.confidence,
        evidence=_collect_evidence(replies, markers, failures, limit=cfg.max_evidence),
        details={"tool": tool, "tools": dict(sorted(tools.items())), "cut_length": limit,
                 "cut_unit": unit, "limit_stated": bool(stated),
                 "kept_lengths": dict(sorted(Counter(kept).most_common(5))),
                 "full_length_max": max(full) if full else None,
                 "cut_results": len(cuts), "support": round(c.support, 4),
                 "baseline": round(c.baseline, 4),
                 "root_cause": f"harness:tool_output_cut:{unit}"},
        prompt=modal_prompt(ctx),
    )


# --- (h) the prompt forces a reply language -------------------------------------------------------

_REPLY_VERBS = r"(?:reply|replies|respond|responses?|answer|answers|write|speak|communicate|talk)"


def _language_rx() -> re.Pattern[str]:
    names = "|".join(sorted((re.escape(n) for n in LANGUAGE_NAMES), key=len, reverse=True))
    # "reply in English", "always answer only in German", "respond to every message in French",
    # "use English for all replies", "write English only".
    return re.compile(
        rf"\b{_REPLY_VERBS}\b[^.;:!?\n]{{0,40}}?\bin\s+(?:only\s+)?(?P<a>{names})\b"
        rf"|\b(?:use|speak|write)\s+(?:only\s+)?(?P<b>{names})\b",
        re.IGNORECASE)


_LANGUAGE_RX = _language_rx()
_ADDRESSEES = ("user", "customer", "developer", "client", "caller", "member", "visitor", "guest",
               "patient", "student", "player", "buyer", "shopper", "employee", "person")
"""Generic nouns a prompt uses for the person the agent talks to."""
_SENTENCE_RX = re.compile(r"[^.!?\n]*(?:[.!?]+|$)")


def _addressee(sentence: str, prompt: str) -> str:
    """How the prompt calls the person it talks to: a noun of :data:`_ADDRESSEES` in the
    instruction itself ("whatever language the developer writes in"), else the one the prompt
    uses most, else "user"."""
    words = _words(sentence)
    for w in words:
        if w in _ADDRESSEES:
            return w
    counts = Counter(w for w in _words(prompt) if w in _ADDRESSEES)
    return min(counts, key=lambda w: (-counts[w], w)) if counts else "user"


def language_instruction(text: str, language: str) -> tuple[str, str] | None:
    """``(sentence, language name)`` of the first instruction in ``text`` to reply in
    ``language`` (a :func:`~loop_middleware.extract.detect_language` code), e.g. ``("Always
    reply in English, whatever language the developer writes in.", "English")``; None when the
    prompt names no reply language, or another one. Code spans are skipped."""
    for raw in _prose(text).splitlines():
        line = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        for sm in _SENTENCE_RX.finditer(line):
            sentence = sm.group(0).strip()
            m = _LANGUAGE_RX.search(sentence)
            if m is None:
                continue
            name = m.group("a") or m.group("b")
            if LANGUAGE_NAMES.get(name.lower()) == language:
                return sentence, name
    return None


def _mismatches(thread: Thread, horizon: int | None, ctx: CellContext) -> list[Signal] | None:
    out = [s for s in ctx.signals_by_thread.get(thread.thread_id, [])
           if s.kind == "language_mismatch"
           and (horizon is None or s.turn_index is None or s.turn_index <= horizon)]
    return out or None


def forced_language(ctx: CellContext) -> Hypothesis | None:
    """The prompt forces one reply language: most affected sessions were answered in another
    language than the user's (``language_mismatch``) at or before their failure, far more than
    the intent's unaffected sessions, mostly in one language, and the prompt that served them
    has an instruction to reply in that language (:func:`language_instruction`)."""
    cfg = ctx.config
    c = _contrast(ctx, lambda t, h: _mismatches(t, h, ctx))
    if not c.fires(cfg):
        return None
    replied: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for sigs in c.hits.values():
        replied.update({str(s.details.get("reply_language")) for s in sigs})
        users.update({str(s.details.get("user_language")) for s in sigs})
    lang = min(replied, key=lambda x: (-replied[x], x))
    if replied[lang] < cfg.min_support * len(c.hits):
        return None
    found: tuple[str, str] | None = None
    target: PromptVersion | None = None
    for t in ctx.affected:
        if t.thread_id not in c.hits:
            continue
        for pv in _serving_texts(t, ctx.horizon(t)):
            found = language_instruction(pv.text, lang)
            if found is not None:
                target = pv
                break
        if found is not None:
            break
    if found is None or target is None:
        return None
    sentence, name = found
    limit = cfg.max_quote_chars
    replies: list[Evidence | None] = []
    asks: list[Evidence | None] = []
    for t in ctx.affected:
        sigs = c.hits.get(t.thread_id)
        if not sigs:
            continue
        replies.append(_quote_evidence(t, sigs[0], limit))
        turn = _turn(t, sigs[0].turn_index) if sigs[0].turn_index is not None else None
        if turn is not None and turn.user_text.strip():
            user = next(m.content for m in turn.messages if m.role == "user" and m.content.strip())
            asks.append(_evidence(t, _clip(user, 0, 0, limit), turn.index, limit))
    written = ", ".join(f"{u} {n}" for u, n in sorted(users.items(), key=lambda kv: (-kv[1], kv[0])))
    clause = (f"the prompt forces replies in {name} (\"{sentence}\" in {_prompt_label(target)}; "
              f"{len(c.hits)} of {c.n_affected} affected sessions were answered in {name} although "
              f"the user wrote another language: {written}; vs {_pct(c.baseline)} of the intent's "
              f"other sessions)")
    return Hypothesis(
        failure_mode="forced_language", clause=clause, confidence=c.confidence,
        evidence=_collect_evidence(asks, replies, limit=cfg.max_evidence),
        details={"instruction": sentence, "language": name, "language_code": lang,
                 "user_languages": dict(sorted(users.items())),
                 "addressee": _addressee(sentence, target.text),
                 "support": round(c.support, 4), "baseline": round(c.baseline, 4),
                 "root_cause": f"{target.path or target.name or 'prompt'}:forced_language:{lang}"},
        prompt=target,
    )


# --- (i) a prompt instruction causes the failure --------------------------------------------------

_ECHO_MIN_TERMS = 3
"""Fewest section words (stems, not said by the user or a tool in that turn) a reply must repeat
to count as following that section."""
_ECHO_MIN_SHARE = 0.25
"""... and the least share of the section's content words they must be."""


_RELAY_MIN_RUN = 3
"""Words in a row a reply must share with a section for the run to count as quoting it."""


@dataclass(frozen=True)
class _Section:
    heading: str
    stems: frozenset[str]
    words: tuple[str, ...] = ()
    """The body's words in order (lower case), to tell a quoted section from a followed one."""


def _quoted_share(section: Sequence[str], reply: Sequence[str]) -> float:
    """Share of the section's words the reply repeats in runs of ``_RELAY_MIN_RUN`` or more."""
    if not section:
        return 0.0
    blocks = difflib.SequenceMatcher(None, list(section), list(reply), autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= _RELAY_MIN_RUN) / len(section)


def _prompt_sections(text: str, stopwords: frozenset[str]) -> list[_Section]:
    """The Markdown sections of a prompt (ATX headings) with their content stems (heading words
    included, code spans and tool names left out); text before the first heading is skipped."""
    out: list[_Section] = []
    heading: str | None = None
    body: list[str] = []

    def close() -> None:
        if heading is not None:
            stems = frozenset(_content_stems(_prose(" ".join([heading, *body])), stopwords))
            if len(stems) >= _ECHO_MIN_TERMS:
                out.append(_Section(heading, stems, tuple(_words(" ".join(body)))))

    for raw in text.splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", raw)
        if m and m.group(1).strip():
            close()
            heading, body = m.group(1).strip(), []
        elif heading is not None:
            body.append(raw)
    close()
    return out


def _echoes(thread: Thread, horizon: int | None, sections: Sequence[_Section],
            stopwords: frozenset[str]) -> dict[str, tuple[int, frozenset[str], bool]]:
    """heading -> (turn index, echoed stems, the turn called a tool) of the first reply up to
    ``horizon`` that repeats the section: at least ``_ECHO_MIN_TERMS`` of its content stems,
    ``_ECHO_MIN_SHARE`` of them, none of which the user's message or a tool result of that turn
    contains (the agent took them from the prompt), without quoting most of the section: a reply
    that repeats half of the section's words in runs (:func:`_quoted_share`) relays the section
    as its answer (steps, a policy): that is the section's content at work, not an instruction
    the agent followed instead of answering."""
    out: dict[str, tuple[int, frozenset[str], bool]] = {}
    for turn in _turns_upto(thread, horizon):
        reply = turn.reply_text
        if not reply.strip():
            continue
        said = set(_content_stems(reply, stopwords))
        heard = set(_content_stems(turn.user_text, stopwords))
        for call in turn.tool_calls:
            heard |= set(_content_stems(call.result or "", stopwords))
        own = said - heard
        for sec in sections:
            if sec.heading in out:
                continue
            shared = frozenset(own & sec.stems)
            if (len(shared) >= _ECHO_MIN_TERMS and len(shared) >= _ECHO_MIN_SHARE * len(sec.stems)
                    and _quoted_share(sec.words, _words(reply)) < 0.5):
                out[sec.heading] = (turn.index, shared, bool(turn.tool_calls))
    return out


def _calls_tools(thread: Thread) -> bool:
    return any(turn.tool_calls for turn in thread.turns)


def prompt_instruction(ctx: CellContext) -> Hypothesis | None:
    """The agent follows a prompt instruction that causes the failure.

    Most affected sessions have a reply, at or before the failure, that repeats the words of one
    section of the serving prompt (words neither the user nor a tool said in that turn), and that
    turn called no tool; that section is repeated far less (``min_contrast``) in the intent's
    sessions that went well (:func:`~loop_middleware.extract._signals.went_well`, no failure
    signal) and in the other intents' sessions, which mostly do call tools. The
    agent did not lack guidance (a coverage gap): it had an instruction, and following it, instead
    of doing what it does for other questions, is the failure. A cell whose version jump passes
    (a prompt change made the section worse) is left to ``regression``.
    """
    cfg = ctx.config
    target = modal_prompt(ctx)
    if target is None:
        return None
    stop = cfg.stopwords
    sections = _prompt_sections(target.text, stop)
    if not sections:
        return None
    cache: dict[str, dict[str, tuple[int, frozenset[str], bool]]] = ctx.shared.setdefault(
        f"echoes:{target.sha256}", {})

    def whole(t: Thread) -> dict[str, tuple[int, frozenset[str], bool]]:
        if t.thread_id not in cache:
            cache[t.thread_id] = _echoes(t, None, sections, stop)
        return cache[t.thread_id]

    affected = ctx.affected
    if not affected:
        return None
    at_failure = {t.thread_id: _echoes(t, ctx.horizon(t), sections, stop) for t in affected}
    others = [t for t in ctx.other_threads if t.turns]
    tools_elsewhere = sum(_calls_tools(t) for t in others) / len(others) if others else 0.0
    clean = [t for t in ctx.unaffected if went_well(t)
             and not any(cfg.severity_of(sg.kind) > 0 for sg in ctx.signals_by_thread.get(t.thread_id, []))]
    best: tuple[float, _Section, list[str], float] | None = None
    for sec in sections:
        hits = [tid for tid, e in at_failure.items() if sec.heading in e and not e[sec.heading][2]]
        support = len(hits) / len(affected)
        if support < cfg.min_support:
            continue
        # The intent's sessions that went well (no failure signal of any kind, and the user
        # thanked or rated it up: a silent session may have failed just the same), when there
        # are enough of them to have a rate, and the other intents' sessions.
        base_in = (sum(sec.heading in whole(t) for t in clean) / len(clean)
                   if len(clean) >= cfg.min_sessions else 0.0)
        base_out = sum(sec.heading in whole(t) for t in others) / len(others) if others else 0.0
        baseline = max(base_in, base_out)
        if support - baseline < cfg.min_contrast or tools_elsewhere < cfg.min_contrast:
            continue
        score = support - baseline
        if best is None or score > best[0]:
            best = (score, sec, hits, baseline)
    if best is None:
        return None
    jump = regression_test(ctx)
    if jump is not None and jump["p_adjusted"] <= cfg.regression_alpha and \
            jump["new_affected"] / jump["new_sessions"] > jump["old_affected"] / jump["old_sessions"]:
        return None  # a prompt change broke it: regression's revert is the fix
    _, sec, hits, baseline = best
    terms: Counter[str] = Counter()
    surface: dict[str, Counter[str]] = {}
    limit = cfg.max_quote_chars
    replies: list[Evidence | None] = []
    by_id = {t.thread_id: t for t in affected}
    for tid in hits:
        idx, shared, _ = at_failure[tid][sec.heading]
        terms.update(shared)
        turn = _turn(by_id[tid], idx)
        if turn is not None:
            for w in _words(turn.reply_text):
                if stem(w) in shared:
                    surface.setdefault(stem(w), Counter())[w] += 1
            replies.append(_evidence(by_id[tid], _clip(turn.reply_text, 0, 0, limit), idx, limit))
    top = [s for s, _ in sorted(terms.items(), key=lambda kv: (-kv[1], kv[0]))[:6]]
    words = [max(sorted(surface[s]), key=lambda w: surface[s][w]) if s in surface else s for s in top]
    tool_names: Counter[str] = Counter(call.name for t in others for turn in t.turns
                                       for call in turn.tool_calls)
    usual = [n for n, _ in sorted(tool_names.items(), key=lambda kv: (-kv[1], kv[0]))[:2]]
    quoted = ", ".join(f"'{w}'" for w in words)
    clause = (f"the agent follows the prompt's '{sec.heading}' instruction instead of answering "
              f"({len(hits)} of {len(affected)} affected sessions got a reply repeating that section "
              f"({quoted}) with no tool call, vs {_pct(baseline)} of other sessions; "
              f"{_pct(tools_elsewhere)} of the other intents' sessions call a tool; "
              f"{_prompt_label(target)})")
    failures = [_signal_evidence(ctx, by_id[tid]) for tid in hits]
    return Hypothesis(
        failure_mode="prompt_instruction", clause=clause,
        confidence=round(max(0.0, min(1.0, (len(hits) / len(affected)) * (1.0 - baseline))), 3),
        evidence=_collect_evidence(replies, failures, limit=cfg.max_evidence),
        details={"section": sec.heading, "echoed_terms": words,
                 "echoed_stems": sorted(terms), "support": round(len(hits) / len(affected), 4),
                 "baseline": round(baseline, 4), "tools_elsewhere": round(tools_elsewhere, 4),
                 "usual_tools": usual,
                 "root_cause": f"{target.path or target.name or 'prompt'}#{sec.heading}"},
        prompt=target,
    )


# --- all of them --------------------------------------------------------------------------------

HYPOTHESES: tuple[tuple[str, Callable[[CellContext], Hypothesis | None]], ...] = (
    ("forced_language", forced_language),
    ("prompt_instruction", prompt_instruction),
    ("truncated_tool_output", truncated_tool_output),
    ("coverage_gap", coverage_gap),
    ("regression", regression),
    ("tool_failure", tool_failure),
    ("ungrounded_answer", ungrounded_answer),
    ("context_loss", context_loss),
    ("loop_stall", loop_stall),
)
"""The built-in hypotheses, in the order they are tried (and reported on ties)."""


def explain(ctx: CellContext, skip: Iterable[str] = ()) -> list[Hypothesis]:
    """Every hypothesis that fires for the cell, or one ``unexplained`` with the numbers only.

    Args:
        ctx: The cell.
        skip: Failure modes not to try (``diagnose`` tests ``regression`` across all cells itself).
    """
    skipped = set(skip)
    fired = [h for name, fn in HYPOTHESES if name not in skipped and (h := fn(ctx)) is not None]
    if fired:
        return fired
    return [Hypothesis(
        failure_mode="unexplained",
        clause="no root-cause hypothesis matched",
        confidence=0.0,
        evidence=_collect_evidence((_signal_evidence(ctx, t) for t in ctx.affected),
                                   limit=ctx.config.max_evidence),
        details={},
        prompt=modal_prompt(ctx),
    )]
