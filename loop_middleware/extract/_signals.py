"""Deterministic failure-signal detectors over captured threads.

A *detector* is a plain function ``(thread, ctx) -> list[Signal]``. The built-in ones look for the
usual ways a support conversation goes wrong: the user gets frustrated, gives up or asks for a
human; the agent refuses, loses context, loops, answers from an empty search result; a tool fails;
a turn is abnormally slow; the user leaves a thumbs-down. They are rules, not models: fast (no
network, no weights), explainable, and every signal carries a short **verbatim** quote from the
thread as its evidence, so a reviewer can find the spot.

Detectors live in a :class:`DetectorRegistry`; :data:`default_registry` holds the built-ins and
accepts the host's own::

    from loop_middleware.extract._signals import register_detector

    @register_detector("coupon_leak")
    def coupon_leak(thread, ctx):
        ...

:func:`detect_signals` runs a registry over a batch of threads, after computing the statistics
that only make sense across the batch (the turn-latency outlier threshold).

Phrase lists cover English, Spanish, French, German and Portuguese where the signal is worded;
language detection (:func:`detect_language`) is dependency-free: Unicode script for non-Latin
scripts (any script, via the Unicode character names as a fallback) and stop-word profiles for
common Latin-script languages.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, overload

from ..errors import ConfigError, ExtractionError
from ..types import SELF_REPORT_TOOL, Feedback, Message, Signal, Thread, ToolCall, Turn

__all__ = [
    "BUILTIN_DETECTORS",
    "DEFAULT_CONTEXT_BUDGETS",
    "LANGUAGE_NAMES",
    "DetectionContext",
    "Detector",
    "DetectorRegistry",
    "clip_quote",
    "context_budget_for",
    "default_registry",
    "detect_language",
    "detect_signals",
    "detect_thread",
    "latency_threshold",
    "register_detector",
    "truncation_sizes",
    "turn_latency_ms",
    "went_well",
]

Detector = Callable[[Thread, "DetectionContext"], list[Signal]]
"""A detector: a plain function from a thread and the run's settings to the signals it found."""

DEFAULT_CONTEXT_BUDGETS: Mapping[str, int] = {
    # Longest matching prefix of the model name wins ("gpt-4o-mini" before "gpt-4o" before
    # "gpt-4"). The numbers are the providers' advertised context windows; a host that wants to
    # hear about long prompts earlier (context rot starts well before the hard limit) passes
    # smaller budgets.
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "gemini": 1_048_576,
    "mistral": 32_000,
    "mixtral": 32_000,
    "llama3": 8_192,
    "llama-3": 8_192,
    "llama3.1": 128_000,
    "llama-3.1": 128_000,
    "qwen": 32_768,
}


def context_budget_for(model: str | None, budgets: Mapping[str, int], default: int) -> int:
    """The input-token budget of ``model``: the longest matching model-name prefix in ``budgets``
    (provider prefixes like ``openai:`` or ``org/`` are ignored), else ``default``."""
    if not model:
        return default
    name = model.lower().rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    best, best_len = default, -1
    for prefix, budget in budgets.items():
        p = prefix.lower()
        if name.startswith(p) and len(p) > best_len:
            best, best_len = budget, len(p)
    return best


_DEFAULT_RETRIEVAL_TOOLS = (
    r"search|retriev|lookup|look_up|find|query|fetch|get_|kb|knowledge|docs?\b|faq|rag|vector"
)


@dataclass(frozen=True, slots=True)
class DetectionContext:
    """Settings shared by every detector in one run (thresholds, budgets, batch statistics).

    Build one with keyword arguments to override the defaults; :func:`detect_signals` fills in
    :attr:`latency_threshold_ms` from the batch when it is left ``None``.
    """

    max_turns: int = 8
    """``stall``: a thread with more turns than this before any sign of resolution stalls."""
    repeated_tool_calls: int = 3
    """``stall``: the same tool called with identical arguments this many times in a thread."""
    context_budgets: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CONTEXT_BUDGETS))
    """``context_loss``: input-token budget per model-name prefix (longest prefix wins)."""
    default_context_budget: int = 8000
    """``context_loss``: the budget for a model that is unknown or not recorded."""
    latency_threshold_ms: float | None = None
    """``latency_outlier``: turns slower than this are outliers. ``None``: :func:`detect_signals`
    computes it from the batch (:func:`latency_threshold`); when still ``None`` (too few turns
    with a latency) the detector stays silent."""
    latency_z: float = 3.0
    """Robust z-score (on log latency) above which a turn is an outlier of its batch."""
    latency_min_samples: int = 20
    """Fewest turn latencies in a batch for a threshold to be computed at all."""
    latency_floor_ms: float = 1000.0
    """Turns faster than this are never outliers, however fast the rest of the batch is."""
    rephrase_jaccard: float = 0.6
    """``frustration``: token Jaccard similarity at which consecutive user messages are a rephrase."""
    rephrase_ratio: float = 0.8
    """``frustration``: :class:`difflib.SequenceMatcher` ratio at which they are a rephrase (this
    one also works for scripts written without spaces)."""
    negative_score_max: float = 0.0
    """``negative_feedback``: a feedback score at or below this is negative (thumbs down = 0)."""
    retrieval_tool_pattern: str = _DEFAULT_RETRIEVAL_TOOLS
    """``ungrounded``: regex (searched, case-insensitive) on tool names that marks a retrieval tool."""
    evidence_max_chars: int = 200
    """Longest evidence quote a built-in detector returns."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Free-form settings for user-registered detectors."""

    def __post_init__(self) -> None:
        for name in ("max_turns", "repeated_tool_calls", "default_context_budget",
                     "latency_min_samples", "evidence_max_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DetectionContext.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("rephrase_jaccard", "rephrase_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"DetectionContext.{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.latency_z <= 0:
            raise ConfigError(f"DetectionContext.latency_z must be > 0, got {self.latency_z!r}")
        if self.latency_threshold_ms is not None and not self.latency_threshold_ms > 0:
            raise ConfigError(
                f"DetectionContext.latency_threshold_ms must be > 0, got {self.latency_threshold_ms!r}"
            )
        try:
            re.compile(self.retrieval_tool_pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"DetectionContext.retrieval_tool_pattern is not a regex: {exc}") from exc

    def context_budget(self, model: str | None) -> int:
        """The input-token budget for ``model`` (provider prefixes like ``openai:`` are ignored)."""
        return context_budget_for(model, self.context_budgets, self.default_context_budget)


# --- registry ------------------------------------------------------------------------------------


class DetectorRegistry:
    """An ordered set of named detectors.

    Detectors run in registration order, so results are deterministic. Use :meth:`register` as a
    call (``reg.register("x", fn)``) or as a decorator (``@reg.register("x")``).
    """

    def __init__(self, detectors: Mapping[str, Detector] | None = None) -> None:
        self._detectors: dict[str, Detector] = {}
        for name, fn in (detectors or {}).items():
            self.register(name, fn)

    @overload
    def register(self, name: str, fn: Detector, *, replace: bool = False) -> Detector: ...

    @overload
    def register(
        self, name: str, fn: None = None, *, replace: bool = False
    ) -> Callable[[Detector], Detector]: ...

    def register(
        self, name: str, fn: Detector | None = None, *, replace: bool = False
    ) -> Detector | Callable[[Detector], Detector]:
        """Add detector ``fn`` under ``name`` (the kind of the signals it should emit).

        Raises:
            ConfigError: the name is empty or taken (pass ``replace=True`` to override a
                detector on purpose), or ``fn`` is not callable.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a detector name must be a non-empty string, got {name!r}")

        def add(f: Detector) -> Detector:
            if not callable(f):
                raise ConfigError(f"detector {name!r} must be callable, got {f!r}")
            if name in self._detectors and not replace:
                raise ConfigError(
                    f"a detector named {name!r} is already registered (pass replace=True to override it)"
                )
            self._detectors[name] = f
            return f

        return add if fn is None else add(fn)

    def unregister(self, name: str) -> None:
        """Remove the detector ``name`` (:class:`ConfigError` if there is none)."""
        if name not in self._detectors:
            raise ConfigError(f"no detector named {name!r}; known: {', '.join(self._detectors)}")
        del self._detectors[name]

    def get(self, name: str) -> Detector:
        """The detector registered as ``name`` (:class:`ConfigError` if there is none)."""
        try:
            return self._detectors[name]
        except KeyError:
            raise ConfigError(
                f"no detector named {name!r}; known: {', '.join(self._detectors)}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, in run order."""
        return list(self._detectors)

    def copy(self) -> DetectorRegistry:
        """An independent registry with the same detectors (to add some without touching this one)."""
        return DetectorRegistry(self._detectors)

    def select(self, names: Iterable[str]) -> DetectorRegistry:
        """A registry with only ``names`` (in the given order); unknown names raise ConfigError."""
        return DetectorRegistry({n: self.get(n) for n in names})

    def items(self) -> list[tuple[str, Detector]]:
        """``(name, detector)`` pairs, in run order."""
        return list(self._detectors.items())

    def __contains__(self, name: object) -> bool:
        return name in self._detectors

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._detectors))

    def __len__(self) -> int:
        return len(self._detectors)

    def __repr__(self) -> str:
        return f"DetectorRegistry({self.names()!r})"


default_registry = DetectorRegistry()
"""The registry :func:`detect_signals` uses by default: the built-ins, plus whatever the host adds."""

register_detector = default_registry.register
"""Register a detector on :data:`default_registry` (call or decorator)."""


# --- running -------------------------------------------------------------------------------------


def turn_latency_ms(turn: Turn) -> float | None:
    """The turn's wall-clock latency: ``latency_ms``, else ``ended_at - started_at``, else None."""
    return latency_ms_of(turn.latency_ms, turn.started_at, turn.ended_at)


def latency_ms_of(latency_ms: float | None, started_at: datetime | None,
                  ended_at: datetime | None) -> float | None:
    """:func:`turn_latency_ms` from the three columns (for readers that skip building turns)."""
    if latency_ms is not None:
        return float(latency_ms)
    if started_at is not None and ended_at is not None:
        return float((ended_at - started_at).total_seconds() * 1000.0)
    return None


def latency_threshold(
    latencies: Iterable[float | None], *, z: float = 3.0, min_samples: int = 20
) -> float | None:
    """The outlier threshold (ms) of a batch of turn latencies, or None if it cannot be told.

    Latencies are right-skewed (roughly log-normal), so the threshold is a robust z-score on the
    *log* latency: ``exp(median + z * 1.4826 * MAD)``. Median and MAD ignore the outliers
    themselves, unlike mean/std, and unlike a fixed percentile they do not flag a fixed share of
    every batch. When the MAD is 0 (most turns equally fast) the mean absolute deviation
    (x 1.2533) stands in, as Iglewicz & Hoaglin suggest; when every latency is equal, nothing is
    an outlier and None is returned.
    """
    logs = sorted(math.log(x) for x in latencies if x is not None and math.isfinite(x) and x > 0)
    n = len(logs)
    if n < max(min_samples, 2):
        return None
    med = _median(logs)
    dev = sorted(abs(x - med) for x in logs)
    mad = _median(dev)
    if mad > 0:
        scale = 1.4826 * mad
    else:
        mean_ad = sum(dev) / n
        if mean_ad == 0:
            return None
        scale = 1.2533 * mean_ad
    return math.exp(med + z * scale)


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2.0


def detect_thread(
    thread: Thread,
    *,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
) -> list[Signal]:
    """Run every detector of ``registry`` (default: :data:`default_registry`) on one thread.

    No batch statistics are computed here: ``latency_outlier`` only fires when
    ``context.latency_threshold_ms`` is set (use :func:`detect_signals` for a batch).

    Raises:
        ExtractionError: a detector raised or returned something other than a list of Signals.
    """
    reg = default_registry if registry is None else registry
    ctx = DetectionContext() if context is None else context
    out: list[Signal] = []
    for name, fn in reg.items():
        try:
            found = fn(thread, ctx)
        except ExtractionError:
            raise
        except Exception as exc:
            raise ExtractionError(
                f"detector {name!r} failed on thread {thread.thread_id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(found, list) or not all(isinstance(s, Signal) for s in found):
            raise ExtractionError(
                f"detector {name!r} must return a list of Signal, got {type(found).__name__}"
            )
        out.extend(found)
    return out


def detect_signals(
    threads: Iterable[Thread],
    *,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
) -> list[Signal]:
    """Run the detectors over a batch of threads; signals come back in thread order.

    Batch statistics are computed first: when ``context.latency_threshold_ms`` is None it is set
    from the turn latencies of all ``threads`` (:func:`latency_threshold`).

    Raises:
        ExtractionError: a detector failed (the message names it and the thread).
    """
    batch = list(threads)
    ctx = DetectionContext() if context is None else context
    if ctx.latency_threshold_ms is None:
        threshold = latency_threshold(
            (turn_latency_ms(t) for th in batch for t in th.turns),
            z=ctx.latency_z,
            min_samples=ctx.latency_min_samples,
        )
        if threshold is not None:
            ctx = replace(ctx, latency_threshold_ms=threshold)
    out: list[Signal] = []
    for thread in batch:
        out.extend(detect_thread(thread, registry=registry, context=ctx))
    return out


# --- text helpers --------------------------------------------------------------------------------


def _rx(*patterns: str) -> re.Pattern[str]:
    """One case-insensitive regex from alternatives; a plain ``'`` also matches a curly ``’``."""
    return _word_start_guard(
        re.compile("|".join(f"(?:{p})" for p in patterns).replace("'", "['’]"), re.IGNORECASE)
    )


def _rx_groups(groups: Mapping[str, Sequence[str]]) -> re.Pattern[str]:
    """One regex with a named group per reason, so ``match.lastgroup`` tells which one fired."""
    body = "|".join(f"(?P<{name}>{'|'.join(f'(?:{p})' for p in pats)})" for name, pats in groups.items())
    return _word_start_guard(re.compile(body.replace("'", "['’]"), re.IGNORECASE))


# --- speed: a cheap guard in front of the phrase regexes ---------------------------------------
# A phrase regex is a long alternation whose branches start with ``\b``; ``re`` cannot skip ahead
# on a ``\b``, so it tries every branch at every position of the text. When *every* branch
# provably starts at a word start (``\b`` followed by a word character, or ``^``), no match can
# start right after a word character, and a leading ``(?<!\w)`` lets ``re`` reject those
# positions at once: the same matches (spans, groups), about twice as fast. The proof is done on
# the parsed pattern at import; a pattern it cannot prove is left exactly as written.

_WORD_CHAR = re.compile(r"\w")


def _word_start_guard(rx: re.Pattern[str]) -> re.Pattern[str]:
    if rx.flags & (re.MULTILINE | re.VERBOSE):
        return rx
    try:
        from re import _parser  # type: ignore[attr-defined]  # the stdlib's own regex parser

        parsed = list(_parser.parse(rx.pattern, rx.flags))
        if not _starts_at_word_start(parsed, _parser):
            return rx
        return re.compile(rf"(?<!\w)(?:{rx.pattern})", rx.flags)
    except Exception:  # noqa: BLE001 - private parser API changed: keep the regex as is
        return rx


def _starts_at_word_start(seq: list[Any], p: Any) -> bool:
    """Every match of ``seq`` starts at 0 (``^``) or at a word boundary before a word character."""
    if not seq:
        return False
    op, av = seq[0]
    if op is p.AT:
        if av in (p.AT_BEGINNING, p.AT_BEGINNING_STRING):
            return True
        return av is p.AT_BOUNDARY and _consumes_word_char(seq[1:], p)
    if op is p.BRANCH:
        return all(_starts_at_word_start(list(b) + seq[1:], p) for b in av[1])
    if op is p.SUBPATTERN and not av[1] and not av[2]:  # (group, add flags, del flags, body)
        return _starts_at_word_start(list(av[3]) + seq[1:], p)
    return False


def _consumes_word_char(seq: list[Any], p: Any) -> bool:
    """The first character any match of ``seq`` consumes is a word character."""
    if not seq:
        return False
    op, av = seq[0]
    rest = seq[1:]
    if op is p.LITERAL:
        return _WORD_CHAR.match(chr(av)) is not None
    if op is p.IN:
        return all(_word_set_item(o, a, p) for o, a in av)
    if op in (p.MAX_REPEAT, p.MIN_REPEAT):
        low, _high, body = av
        first = _consumes_word_char(list(body) + rest, p)
        return first if low >= 1 else first and _consumes_word_char(rest, p)
    if op is p.BRANCH:
        return all(_consumes_word_char(list(b) + rest, p) for b in av[1])
    if op is p.SUBPATTERN and not av[1] and not av[2]:
        return _consumes_word_char(list(av[3]) + rest, p)
    if op in (p.AT, p.ASSERT, p.ASSERT_NOT):  # zero-width: the next item consumes first
        return _consumes_word_char(rest, p)
    return False


def _word_set_item(op: Any, av: Any, p: Any) -> bool:
    if op is p.LITERAL:
        return _WORD_CHAR.match(chr(av)) is not None
    if op is p.RANGE:
        low, high = av
        return high - low < 4096 and all(_WORD_CHAR.match(chr(c)) for c in range(low, high + 1))
    if op is p.CATEGORY:
        return av in (p.CATEGORY_WORD, p.CATEGORY_DIGIT, p.CATEGORY_UNI_WORD, p.CATEGORY_UNI_DIGIT)
    return False


def clip_quote(text: str, start: int = 0, end: int | None = None, limit: int = 200) -> str:
    """A verbatim window of ``text`` of at most ``limit`` chars around ``text[start:end]``.

    The window is widened symmetrically around the match and snapped to whitespace so it does not
    cut words, then stripped: the result is always a substring of ``text`` (no ellipses added,
    because the evidence must be findable verbatim).
    """
    end = len(text) if end is None else end
    if end - start >= limit:
        return text[start : start + limit].strip() or text[start : start + limit]
    pad = (limit - (end - start)) // 2
    s = max(0, start - pad)
    e = min(len(text), s + limit)
    s = max(0, e - limit)
    if s > 0:
        ws = text.find(" ", s, start)
        if ws != -1:
            s = ws + 1
    if e < len(text):
        ws = text.rfind(" ", end, e)
        if ws != -1:
            e = ws
    window = text[s:e]
    return window.strip() or window


_SENTENCE_END = re.compile(r"[.!?。！？\n]")


def _sentence(text: str, start: int, end: int, limit: int) -> str:
    """The sentence of ``text`` around ``text[start:end]`` (verbatim, clipped to ``limit``).

    The sentence keeps its own end mark: a "?" tells the reader it was a question.
    """
    s = 0
    for m in _SENTENCE_END.finditer(text, 0, start):
        s = m.end()
    m2 = _SENTENCE_END.search(text, end)
    e = m2.end() if m2 else len(text)
    while s < start and text[s].isspace():
        s += 1
    while e > end and text[e - 1].isspace():
        e -= 1
    if e - s > limit:
        return clip_quote(text, start, end, limit)
    return text[s:e]


_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _user_messages(turn: Turn) -> list[Message]:
    return [m for m in turn.messages if m.role == "user" and m.content.strip()]


def _assistant_messages(turn: Turn) -> list[Message]:
    return [m for m in turn.messages if m.role == "assistant" and m.content.strip()]


def _signal(
    thread: Thread,
    kind: str,
    turn: Turn | None,
    evidence: str,
    confidence: float,
    **details: Any,
) -> Signal:
    return Signal(
        thread_id=thread.thread_id,
        kind=kind,
        turn_index=None if turn is None else turn.index,
        evidence=evidence,
        confidence=round(min(1.0, max(0.0, confidence)), 3),
        details=details,
    )


# --- phrase lists --------------------------------------------------------------------------------
# Written as support conversations are actually worded; a plain ' matches ’ too (see _rx).

_GIVE_UP = (
    # "Never mind, I found it" is the user solving it themselves, not giving up.
    r"\b(?:forget it|never ?mind(?!\W+(?:i|we) (?:found|figured|got|fixed|solved))|i give up|i'?ll (?:just )?(?:go|look|shop) (?:elsewhere|somewhere else))\b",
    r"^\W*(?:ok(?:ay)?\W+)?whatever\b",
    r"\b(?:olv[ií]dalo|d[eé]jalo|da igual|me rindo)\b",
    r"\b(?:laisse[zr]? tomber|tant pis|oubliez[- ](?:ça|le)|j'abandonne)\b",
    r"\b(?:vergiss es|vergessen sie es|schon gut|ich gebe auf)\b",
    r"\b(?:esquece|deixa (?:pra|para) l[aá]|desisto)\b",
)
_GIVE_UP_RX = _rx(*_GIVE_UP)

_FRUSTRATION_RX = _rx_groups({
    "not_what_i_asked": (
        r"\b(?:that|this|it)(?:'s| is| was) not what i (?:asked|meant|wanted|said|need)",
        r"\bnot what i asked\b",
        r"\beso no es lo que (?:pregunt|ped|dij|quer)\w*",
        r"\bce n'est pas ce que (?:j'ai|je) (?:demand|dit|voulu|veux)\w*",
        r"\bdas (?:ist|war) nicht(?:,)? was ich (?:gefragt|gemeint|wollte|gesagt)",
        r"\bn[aã]o (?:foi|[eé]) (?:isso )?o que eu (?:perguntei|pedi|disse|quis)",
    ),
    "repeating": (
        r"\bi(?:'ve| have)? already (?:told|gave|given|said|sent|explained|mentioned|provided)\b",
        r"\bwhy (?:do|does|are|did) you keep (?:asking|saying|repeating|telling|sending)",
        r"\bfor the (?:second|third|fourth|fifth|tenth|last|hundredth|\d+(?:st|nd|rd|th)) time\b",
        r"\bya (?:te |se |le )?(?:lo )?(?:dije|he dicho|di|envi[eé]|expliqu[eé])\b",
        r"\bje (?:vous |te )?l'ai d[ée]j[àa] (?:dit|donn[ée]|envoy[ée]|expliqu[ée])",
        r"\b(?:schon|bereits) (?:\w+ ){0,2}(?:gesagt|geschrieben|mitgeteilt|angegeben|erkl[äa]rt)\b",
        r"\beu j[aá] (?:te |lhe )?(?:disse|falei|informei|passei|expliquei|mandei)\b",
    ),
    "insult": (
        r"\b(?:this|that|it)(?:'s| is| was) (?:so |just |completely |absolutely )?(?:ridiculous|absurd|useless|pointless|a joke|unacceptable|insane|frustrating|annoying|terrible|pathetic)\b",
        r"\byou(?:'re| are) (?:so |completely |totally |absolutely )?(?:useless|not helping|not listening|no help|stupid|an idiot|hopeless|terrible|worthless|pathetic|incompetent)\b",
        r"\b(?:useless|stupid|dumb|worthless) (?:bot|ai|assistant|machine|chatbot|robot)\b",
        r"\b(?:waste of (?:my )?time|what a joke|worst (?:service|support|experience|bot|company)|(?:not|isn't|wasn't) help(?:ful|ing) at all)\b",
        r"\bi(?:'m| am) (?:so |really |very )?(?:frustrated|annoyed|angry|furious|fed up|sick of|tired of)\b",
        r"\b(?:are you|r u) (?:even|actually) (?:listening|reading)\b",
        r"\b(?:esto|eso) es (?:un |una )?(?:rid[ií]culo|absurdo|in[uú]til|broma|inaceptable|verg[uü]enza)\b",
        r"\b(?:eres|es usted) (?:un |una )?(?:in[uú]til|est[uú]pid[oa]|tont[oa])\b",
        r"\bno (?:me )?sirve(?:s)? (?:para|de) nada\b",
        r"\bestoy (?:hart[oa]|cansad[oa] de|frustrad[oa]|enojad[oa]|molest[oa])\b",
        r"\bp[eé]rdida de tiempo\b",
        r"\bc'est (?:vraiment |compl[èe]tement )?(?:ridicule|absurde|inutile|n'importe quoi|nul|inadmissible|inacceptable)\b",
        r"\b(?:vous [êe]tes|tu es|t'es) (?:vraiment |compl[èe]tement )?(?:nul(?:le)?|inutile|incomp[ée]tent|stupide)\b",
        r"\bj'en ai marre\b|\bperte de temps\b|\b(?:ça|cela) ne m'aide pas\b",
        r"\b(?:das ist|ist das) (?:doch |echt |v[öo]llig )?(?:l[äa]cherlich|absurd|nutzlos|unm[öo]glich|eine frechheit|eine zumutung|inakzeptabel)\b",
        r"\b(?:du bist|sie sind) (?:v[öo]llig |total )?(?:nutzlos|unf[äa]hig|dumm|bl[öo]d)\b",
        r"\bich bin (?:so |total |echt )?(?:genervt|frustriert|sauer|w[üu]tend)\b|\bzeitverschwendung\b",
        r"\bhilft (?:mir )?(?:[üu]berhaupt |gar )?nicht\b",
        r"\b(?:isso|isto) [eé] (?:um |uma )?(?:rid[ií]culo|absurdo|in[uú]til|piada|inaceit[aá]vel)\b",
        r"\b(?:voc[eê]|vc) [eé] (?:muito )?(?:in[uú]til|burr[oa]|idiota)\b",
        r"\bestou (?:muito )?(?:cansad[oa]|irritad[oa]|frustrad[oa]|chatead[oa])\b|\bperda de tempo\b",
        r"\bn[aã]o (?:est[aá] )?(?:me )?ajudando\b",
    ),
    "profanity": (
        r"\b(?:f+u+c+k\w*|shit\w*|bullshit|crap|damn(?:it)?|goddamn\w*|wtf|ffs|stfu)\b",
        r"\b(?:mierda|joder|jodid[oa]|put[oa] madre|co[ñn]o|carajo|pendej[oa])\b",
        r"\b(?:merde|putain|bordel|connard|fait chier)\b",
        r"\b(?:schei(?:ß|ss)e?\w*|verdammt\w*|kacke|arschloch)\b",
        r"\b(?:porra|caralho|merda|vaffanculo|cazzo)\b",
    ),
    "give_up": _GIVE_UP,
})
_FRUSTRATION_CONFIDENCE = {
    "not_what_i_asked": 0.9,
    "repeating": 0.85,
    "insult": 0.85,
    "profanity": 0.8,
    "give_up": 0.75,
}

_ESCALATION_RX = _rx_groups({
    "human": (
        r"\b(?:speak|talk|chat) (?:to|with) (?:a |an |the |your |some )?(?:real |actual |live |human )?(?:human|person|agent|representative|rep|manager|supervisor|operator|someone|somebody|customer service)\b",
        r"\b(?:real|live|actual) (?:person|human|agent)\b|\bhuman (?:agent|being|support|representative)\b",
        r"\b(?:transfer|connect|put|escalate) (?:me|this|it)\b[^.?!]{0,20}\b(?:human|manager|supervisor|agent|representative|person|someone)\b",
        r"\b(?:get|give) me (?:a |an |the |your )?(?:human|manager|supervisor|representative|real person)\b",
        r"\bhablar con (?:una persona|un humano|un agente|un asesor|un representante|el gerente|un supervisor|alguien)\b|\bpersona real\b",
        r"\bparler (?:[àa]|avec) (?:un |une |le |la )?(?:vraie? )?(?:humain|personne|conseill[eè]re?|agent|responsable|superviseur|manager)\b",
        r"\bparler (?:[àa]|avec) quelqu'un\b|\bvraie personne\b",
        r"\bmit (?:einem|einer|dem|der|ihrem|ihren) (?:echten |richtigen )?(?:menschen|mitarbeiter\w*|person|vorgesetzten|manager|berater\w*|kundenberater\w*|supervisor)\b|\bechten menschen\b",
        r"\bfalar com (?:um |uma |o |a )?(?:humano|pessoa|atendente|agente|gerente|supervisor|representante|algu[eé]m)\b|\bpessoa real\b",
    ),
    "cancel": (
        r"\bcancel (?:my|the|our) (?:\w+ )?(?:subscription|account|membership|plan|service|contract)\b",
        r"\b(?:close|delete) (?:my|our) account\b",
        r"\bcancelar (?:mi|la|mis|minha|a|o meu) (?:suscripci[oó]n|cuenta|membres[ií]a|plan|assinatura|conta|plano|inscri[cç][aã]o)\b|\bdar(?:me)? de baja\b",
        r"\b(?:r[ée]silier|annuler|supprimer) mon (?:abonnement|compte|contrat)\b",
        r"\b(?:abo|abonnement|konto|vertrag|mitgliedschaft) (?:\w+ ){0,2}k[üu]ndigen\b|\bk[üu]ndig(?:en|e|ung)\b",
    ),
    "complaint": (
        r"\b(?:file|make|lodge|submit) a (?:formal )?complaint\b",
        r"\b(?:poner|presentar) una (?:queja|reclamaci[oó]n)\b",
        r"\b(?:porter plainte|d[ée]poser (?:une )?(?:plainte|r[ée]clamation))\b",
        r"\bbeschwerde (?:einreichen|einlegen)\b",
        r"\b(?:fazer|abrir|registrar) uma reclama[cç][aã]o\b",
    ),
})
_ESCALATION_CONFIDENCE = {"human": 0.9, "cancel": 0.8, "complaint": 0.75}

_REFUSAL_RX = _rx_groups({
    "cannot_help": (
        r"\bi(?: can't| cannot| can not| am unable to|'m unable to| am not able to|'m not able to| won't be able to) (?:help|assist|provide|answer|process|support|discuss|share|do that|transfer you|connect you|put you through|escalate (?:this|that|your|it))\b",
        r"\bthat(?:'s| is) (?:outside|beyond) (?:my|the) (?:scope|capabilities)\b",
        r"\bi(?:'m| am) not (?:allowed|permitted|authorized) to\b",
        r"\bno (?:puedo|podemos) (?:ayudar(?:te|le)?|asistir(?:te|le)?)\b|\blo siento,? (?:pero )?no puedo\b",
        r"\bje ne (?:peux|pourrai) pas (?:vous |t')?(?:aider|r[ée]pondre)\b|\bje ne suis pas en mesure de\b",
        r"\bich kann (?:ihnen |dir )?(?:dabei |damit |hier |leider )*nicht (?:helfen|weiterhelfen)\b|\bleider (?:kann ich|ist es mir nicht m[öo]glich)\b",
        r"\bn[aã]o (?:posso|consigo|podemos) (?:te |lhe )?ajudar\b|\bdesculpe,? (?:mas )?n[aã]o posso\b",
    ),
    "no_information": (
        r"\b(?:i|we) (?:don't|do not) have (?:any )?(?:information|access|details|data|knowledge) (?:about|on|regarding|to|for)\b",
        r"\bno tengo (?:informaci[oó]n|acceso|datos) (?:sobre|acerca|de|a)\b",
        r"\bje n'ai pas (?:d'informations?|acc[èe]s|de donn[ée]es)\b",
        r"\bich habe keine (?:informationen|daten|zugriff)\b",
        r"\bn[aã]o tenho (?:informa[cç](?:[oõ]es|[aã]o)|acesso|dados) (?:sobre|a|de)\b",
    ),
    "contact_support": (
        r"\b(?:contact|reach out to|get in touch with|call) (?:our |the |your )?(?:customer )?(?:support|service|care|help ?desk)\b",
        r"\b(?:contacte|contacta|comun[ií]quese|comun[ií]cate|p[oó]ngase en contacto)(?: con)? (?:el |nuestro |al |con el )?(?:soporte|servicio|equipo)\b",
        r"\b(?:veuillez|merci de) contacter (?:le |notre |votre )?(?:support|service|[ée]quipe)\b|\bcontactez (?:le |notre )?(?:support|service client)\b",
        r"\b(?:wenden sie sich|wende dich) (?:bitte )?an (?:den |unseren |unser )?(?:support|kundenservice|kundendienst|service)\b|\bkontaktieren sie (?:bitte )?(?:den |unseren )?(?:support|kundenservice|kundendienst)\b",
        r"\b(?:entre|entra) em contato com (?:o |nosso |a nossa |a )?(?:suporte|atendimento|equipe|servi[cç]o)\b",
    ),
})
_REFUSAL_CONFIDENCE = {"cannot_help": 0.9, "no_information": 0.8, "contact_support": 0.6}

_AGENT_ERROR_RX = _rx(
    r"\bsomething went wrong\b|\ban? (?:unexpected |internal |technical )?error (?:has )?occurred\b",
    r"\b(?:encountered|ran into|hit) an? (?:\w+ )?error\b|\btechnical (?:issue|difficulties|problem)s?\b",
    r"\b(?:temporarily )?unavailable\b|\btry again later\b",
    r"\balgo sali[oó] mal\b|\b(?:ha ocurrido|ocurri[oó]) un error\b|\bint[ée]ntalo (?:de nuevo )?m[aá]s tarde\b",
    r"\bune erreur (?:s'est produite|est survenue)\b|\bquelque chose s'est mal pass[ée]\b|\br[ée]essayez plus tard\b",
    r"\bein fehler ist aufgetreten\b|\betwas ist schiefgelaufen\b|\bversuchen sie es sp[äa]ter\b",
    r"\balgo deu errado\b|\bocorreu um erro\b|\btente novamente mais tarde\b",
)

_COURTESY_QUESTION_RX = _rx(
    r"\banything else\b|\bsomething else i can\b|\bother questions?\b|\bhelp (?:you )?with (?:anything|something) else\b",
    r"\balgo m[aá]s\b|\botra cosa\b",
    r"\bautre chose\b|\bd'autres questions\b",
    r"\bnoch etwas\b|\bsonst noch\b|\bweitere fragen\b",
    r"\bmais alguma coisa\b|\boutra coisa\b|\balgo mais\b",
)

_RESOLVED_RX = _rx(
    r"\b(?:thanks?|thank you|thx|perfect|that worked|it works|it worked|solved|resolved|got it|all good|found it|figured it out)\b",
    r"\b(?:gracias|perfecto|funcion[oó]|resuelto)\b",
    r"\b(?:merci|parfait|[çc]a marche|r[ée]solu)\b",
    r"\b(?:danke|perfekt|funktioniert|gel[öo]st)\b",
    r"\b(?:obrigad[oa]|perfeito|funcionou|resolvido|valeu)\b",
)
_NOT_RESOLVED_RX = _rx(
    r"\bthanks (?:for nothing|anyway)\b|\bno,? thanks\b|\bnot (?:solved|resolved|working)\b",
    r"\bgracias de todos modos\b|\bmerci quand m[êe]me\b|\btrotzdem danke\b|\bobrigad[oa] mesmo assim\b",
)

_ADMITS_NOT_FOUND_RX = _rx(
    r"\b(?:couldn't|could not|can't|cannot|wasn't able to|was not able to|unable to|didn't|did not) (?:find|locate|retrieve|confirm|verify|see)\b",
    r"\bno (?:results?|matching|matches|records?|information|info|data|details|entries|documents?)\b",
    r"\b(?:i|we) (?:don't|do not) (?:have|know|see)\b|\bnot sure\b|\bnot found\b|\b(?:doesn't|does not) (?:exist|appear)\b",
    r"\bno (?:encontr\w+|pude encontrar|he encontrado|hay resultados|tengo informaci[oó]n)\b|\bno encuentro\b",
    r"\bn'ai (?:pas|rien) trouv[ée]\b|\baucun(?:e)? (?:r[ée]sultat|[ée]l[ée]ment|enregistrement|information)\b|\bintrouvable\b|\bje ne trouve pas\b",
    r"\b(?:nicht|keine \w+) gefunden\b|\bkeine (?:ergebnisse|informationen|daten|treffer)\b|\bfinde (?:ich )?(?:keine|nicht)\b",
    r"\bn[aã]o (?:encontrei|consegui encontrar|achei|localizei|tenho informa[cç](?:[oõ]es|[aã]o))\b|\bnenhum resultado\b",
)

_EMPTY_RESULT_RX = re.compile(
    r"\s*(?:|\[\s*\]|\{\s*\}|\(\s*\)|null|none|nil|\"\"|''|n/?a"
    r"|(?:no|0|zero) (?:relevant |matching )?(?:results?|matches|documents?|docs|records?|items?|data|entries|hits|articles?|orders?)"
    r"(?: (?:were |was )?(?:found|returned|available))?(?: for [^\n]{0,80})?"
    r"|(?:not found|nothing found|no match(?:es)?|empty)(?: for [^\n]{0,80})?)\s*[.!]?\s*",
    re.IGNORECASE,
)

_TOOL_ERROR_RX = _rx_groups({
    "traceback": (r"traceback \(most recent call last\)", r"\b[a-z]\w*(?:error|exception): "),
    "server_error": (
        r"\b(?:http|status(?: code)?|error)\W{0,3}5\d\d\b",
        r"\b(?:internal server error|bad gateway|service unavailable|gateway time-?out)\b",
    ),
    "timeout": (r"\b(?:timed out|timeout error|connection (?:refused|reset|error|aborted)|econnrefused|etimedout)\b",),
    "client_error": (
        r"\b(?:http|status(?: code)?)\W{0,3}(?:401|403|429)\b|\b(?:unauthorized|forbidden|rate limit(?:ed)? exceeded|too many requests)\b",
    ),
    "error_field": (r"\"(?:error|exception|err)\"\s*:(?!\s*(?:null\b|false\b|\"\"|\{\s*\}|\[\s*\]|0\b))", r"\"status\"\s*:\s*\"(?:error|failed|failure)\""),
    "error_prefix": (r"^[\s\[*(]{0,3}(?:error|exception|fatal|failed|failure)\b",),
})
# Speed: every branch of _TOOL_ERROR_RX contains one of these words (case-insensitively), so a
# result without any of them cannot match and skips the regex (most tool results). KEEP IN SYNC
# when adding a branch above. ``re.IGNORECASE`` also matches ASCII letters to 4 non-ASCII ones
# (ſ K İ ı) that ``str.lower`` keeps apart: they are folded first, so the check never misses.
_TOOL_ERROR_WORDS = (
    "err", "exception", "traceback", "http", "status", "gateway", "unavailable", "time", "conn",
    "unauthorized", "forbidden", "rate limit", "too many requests", "fatal", "fail",
)
_RE_ASCII_FOLD = str.maketrans({"ſ": "s", "K": "k", "İ": "i", "ı": "i"})


def _may_be_tool_error(result: str) -> bool:
    low = result[:4000].translate(_RE_ASCII_FOLD).lower()
    return any(w in low for w in _TOOL_ERROR_WORDS)


_TOOL_ERROR_CONFIDENCE = {
    "traceback": 0.9,
    "server_error": 0.9,
    "timeout": 0.85,
    "client_error": 0.75,
    "error_field": 0.8,
    "error_prefix": 0.8,
}

# context_loss: what the agent asks for, and how a user gives it.
_ASK_ENTITY_RX = _rx_groups({
    "id": (
        r"\b(?:order|tracking|reference|confirmation|booking|reservation|account|invoice|ticket|case|customer) ?(?:number|no\.|#|id|code)\b",
        r"\bn[uú]mero de (?:pedido|orden|seguimiento|referencia|reserva|cuenta|factura|cliente)\b",
        r"\bnum[ée]ro de (?:commande|suivi|r[ée]f[ée]rence|r[ée]servation|compte|facture|client)\b",
        r"\b(?:bestell|auftrags|sendungs|referenz|buchungs|kunden|rechnungs|konto)(?:nummer|-nr\.?)\b",
        r"\bn[uú]mero d[oa] (?:pedido|encomenda|rastreamento|refer[eê]ncia|reserva|conta|fatura|cliente)\b",
    ),
    "email": (
        r"\be-?mail(?: address)?\b|\bcorreo(?: electr[oó]nico)?\b|\badresse (?:e-?mail|[ée]lectronique)\b|\bcourriel\b",
        r"\be-mail-adresse\b|\bendere[cç]o de e-?mail\b",
    ),
    "phone": (
        r"\b(?:phone|telephone|mobile)(?: number)?\b|\bn[uú]mero de tel[eé]fono\b|\btel[eé]fono\b",
        r"\bnum[ée]ro de t[ée]l[ée]phone\b|\btelefonnummer\b|\btelefone\b",
    ),
})
_ASK_VERB_RX = _rx(
    r"\b(?:could|can|would) you (?:please )?(?:provide|share|send|give|tell|confirm|let me know)\b",
    r"\bplease (?:provide|share|send|give|tell|confirm|enter)\b|\bmay i (?:have|get)\b|\bwhat(?:'s| is) (?:your|the)\b",
    r"\bi(?:'ll| will)? need (?:your|the)\b",
    r"\bpuede(?:s)? (?:darme|dar|proporcionar|indicar|decirme|facilitar)\b|\bproporci[oó]n(?:e|a)(?:me)?\b|\bind[ií]ca(?:me)?\b|\bcu[aá]l es (?:su|tu)\b",
    r"\bpourriez-vous\b|\bpouvez-vous\b|\bveuillez (?:fournir|indiquer|me donner|pr[ée]ciser)\b|\bquel est votre\b",
    r"\bk[öo]nnten sie\b|\bk[öo]nnen sie\b|\bbitte (?:geben|teilen|nennen)\b|\bwie lautet\b",
    r"\bpoderia\b|\bpode (?:me )?(?:informar|passar|fornecer|enviar)\b|\bqual (?:[eé] )?(?:o )?seu\b|\binforme\b",
)
_ID_KEYWORD_RX = _rx(
    r"\b(?:order|tracking|reference|ref|confirmation|booking|reservation|account|invoice|ticket|case|parcel|package|shipment)",
    r"\b(?:pedido|orden|seguimiento|referencia|reserva|cuenta|factura|encomenda|rastreamento|conta|fatura)\b",
    r"\b(?:commande|suivi|r[ée]f[ée]rence|compte|facture|colis)\b",
    r"(?:bestell|auftrag|sendung|referenz|buchung|kunden|rechnung|konto|paket)",
    r"#",
)
_DIGIT_RX = re.compile(r"\d")
_DIGITS3_RX = re.compile(r"\d{3}")  # every _ID_VALUE_RX match has 3 digits in a row
_ID_VALUE_RX = re.compile(r"(?<![\w@.#])(?:#\s?\w{0,4}-?\d{3,}|[A-Za-z]{1,4}-?\d{4,}|\d{5,})(?![\w@])")
_EMAIL_VALUE_RX = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_VALUE_RX = re.compile(r"(?<![\w+])\+?\d[\d\s().-]{5,}\d(?!\w)")
# "I couldn't find that order, could you double-check the order number?" is not forgetting.
_RECHECK_RX = _rx(
    r"\b(?:double[- ]?check|re-?check|verify|confirm|correct|valid|typo|mistyped)\b",
    r"\b(?:verifica\w*|comprueba|confirma\w*|corrig\w*|v[ée]rifi\w*|[üu]berpr[üu]f\w*|best[äa]tig\w*|pr[üu]fen)\b",
)

# An LLM that lost the conversation makes the user say so.
_USER_SAYS_LOST_RX = _rx(
    r"\bi(?:'ve| have)? already (?:told|gave|given|said|sent|mentioned|provided)\b",
    r"\b(?:as i|like i) (?:said|told you|mentioned)\b|\byou (?:forgot|don't remember|already asked)\b",
    r"\bya (?:te |se |le )?(?:lo )?(?:dije|he dicho|di)\b|\bcomo (?:te )?dije\b",
    r"\bje (?:vous |te )?l'ai d[ée]j[àa] (?:dit|donn[ée])\b|\bcomme je (?:l'ai|vous l'ai) dit\b",
    r"\b(?:schon|bereits) (?:\w+ ){0,2}(?:gesagt|mitgeteilt|angegeben)\b|\bwie (?:ich )?(?:schon )?gesagt\b",
    r"\beu j[aá] (?:te |lhe )?(?:disse|falei|informei|passei)\b|\bcomo eu (?:j[aá] )?disse\b",
)

_NEGATIVE_COMMENT_RX = _rx(
    r"(?<!not )(?<!not so )\b(?:useless|terrible|awful|horrible|wrong|incorrect|bad|worst|unhelpful|frustrat\w*|annoying|rude|slow|broken|garbage|rubbish)\b",
    r"\b(?:didn't|did not|doesn't|does not|not) (?:help|work|answer|solve|helpful|useful)\b",
    r"\b(?:in[uú]til|p[eé]sim[oa]|malo|mala|incorrect[oa]|no sirve|no me ayud[oó]|horrible)\b",
    r"\b(?:nul(?:le)?|inutile|pas utile|n'a pas aid[ée]|mauvais(?:e)?|faux)\b",
    r"\b(?:nutzlos|schlecht|hilft nicht|unbrauchbar|falsch)\b",
    r"\b(?:p[eé]ssim[oa]|ruim|n[aã]o ajudou|errad[oa])\b",
)
_NEGATIVE_LABELS = frozenset({
    "thumbs_down", "thumbsdown", "thumb_down", "negative", "bad", "dislike", "downvote", "-1",
    "unhelpful", "not_helpful", "incorrect", "wrong",
})
_NEGATIVE_OUTCOMES = frozenset({
    "churned", "churn", "escalated", "abandoned", "cancelled", "canceled", "refunded", "complaint",
    "unresolved", "failed", "lost",
})
_POSITIVE_OUTCOMES = frozenset({"converted", "resolved", "success", "succeeded", "solved", "retained"})


# --- language detection --------------------------------------------------------------------------

# (first code point, script) boundaries; a code point belongs to the last range starting at or
# before it. "latin" and None (not a letter script) end ranges.
_SCRIPT_RANGES: list[tuple[int, str | None]] = [
    (0x0000, "latin"), (0x0250, None), (0x0370, "el"), (0x0400, "cyrillic"), (0x0530, "hy"),
    (0x0590, "he"), (0x0600, "arabic"), (0x0700, None), (0x0750, "arabic"), (0x0780, None),
    (0x08A0, "arabic"), (0x0900, "hi"), (0x0980, "bn"), (0x0A00, "pa"), (0x0A80, "gu"),
    (0x0B00, "or"), (0x0B80, "ta"), (0x0C00, "te"), (0x0C80, "kn"), (0x0D00, "ml"), (0x0D80, "si"),
    (0x0E00, "th"), (0x0E80, "lo"), (0x0F00, "bo"), (0x1000, "my"), (0x10A0, "ka"), (0x1100, "ko"),
    (0x1200, "am"), (0x1380, None), (0x1780, "km"), (0x1800, None), (0x1E00, "latin"),
    (0x1F00, "el"), (0x2000, None), (0x3040, "kana"), (0x3100, None), (0x3130, "ko"), (0x3190, None),
    (0x31F0, "kana"), (0x3200, None), (0x3400, "han"), (0x4DC0, None), (0x4E00, "han"),
    (0xA000, None), (0xAC00, "ko"), (0xD7B0, None), (0xF900, "han"), (0xFB00, None),
    (0xFB1D, "he"), (0xFB50, "arabic"), (0xFE00, None), (0xFE70, "arabic"), (0xFF00, "latin"),
    (0xFF66, "kana"), (0xFFA0, "ko"), (0xFFE0, None), (0x20000, "han"), (0x2FA20, None),
]
_SCRIPT_STARTS = [start for start, _ in _SCRIPT_RANGES]

def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _wordset(
        "the and is are was were you your my i it this that what with for have has not can do "
        "does did how why of to in on me please would could be there they we will just but an "
        "hello hi thanks thank where when which been am any get from about"
    ),
    "es": _wordset(
        "el la los las de del que y en un una es por para con no mi mis su se lo al como pero más "
        "está estoy tengo quiero puedo hola gracias qué cómo porque yo usted muy ya también esto "
        "eso dónde cuando hay mí tu le necesito pedido"
    ),
    "fr": _wordset(
        "le la les de des du et est un une je vous tu il elle nous pas ne que qui pour dans sur "
        "avec mon ma mes votre ce cette c ai suis bonjour merci au aux mais ou où très n j qu l d "
        "s y a été besoin commande"
    ),
    "de": _wordset(
        "der die das und ist ich nicht ein eine einen mit für auf sie es zu den dem des mein meine "
        "meinen wie was warum bitte danke hallo habe haben bin sind kann können auch noch schon "
        "aber oder wo wir ihr von im bei nach ihnen mir mich wurde keine"
    ),
    "it": _wordset(
        "il lo la gli le di del della che e è un una per con non sono ho mi ti ci mio mia come "
        "perché ciao grazie questo questa anche ma molto dove quando voglio posso si al nel sul "
        "da ordine vorrei"
    ),
    "pt": _wordset(
        "o a os as de do da dos das que e é um uma para com não meu minha eu você por em no na "
        "nos se mas como obrigado obrigada olá está estou tenho quero posso muito já também isso "
        "onde quando seu sua pelo pela ainda"
    ),
    "nl": _wordset(
        "de het een en is ik je jij u niet van dat die met voor op te mijn wat hoe waarom maar ook "
        "nog al er bij naar zijn heb hebben kan kunt wil dank bedankt hallo alstublieft graag geen "
        "wel dit waar wanneer"
    ),
}
# A word shared by several languages is weaker evidence for each of them.
_STOPWORD_WEIGHTS: dict[str, list[tuple[str, float]]] = {}
for _lang, _words in _STOPWORDS.items():
    for _w in _words:
        _STOPWORD_WEIGHTS.setdefault(_w, []).append((_lang, 0.0))
for _w, _pairs in _STOPWORD_WEIGHTS.items():
    _STOPWORD_WEIGHTS[_w] = [(lang, 1.0 / len(_pairs)) for lang, _ in _pairs]
del _lang, _words, _w, _pairs
_DIACRITIC_HINTS: dict[str, tuple[tuple[str, float], ...]] = {
    "ñ": (("es", 1.5),), "¿": (("es", 1.5),), "¡": (("es", 1.5),),
    "ß": (("de", 1.5),), "ä": (("de", 1.0),), "ö": (("de", 1.0),), "ü": (("de", 0.5),),
    "ã": (("pt", 1.5),), "õ": (("pt", 1.5),), "ç": (("fr", 0.5), ("pt", 0.5)),
    "œ": (("fr", 1.5),), "ê": (("fr", 0.7), ("pt", 0.3)), "è": (("fr", 0.5), ("it", 0.5)),
    "ò": (("it", 1.0),), "ì": (("it", 1.0),), "ù": (("it", 0.5), ("fr", 0.5)),
}
_LATIN_WORD = re.compile(r"[^\W\d_]+")


def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    script = _SCRIPT_RANGES[bisect_right(_SCRIPT_STARTS, cp) - 1][1]
    if script is None and ch.isalpha():
        # Any other script: its Unicode name starts with the script ("CHEROKEE LETTER A").
        name = unicodedata.name(ch, "")
        script = name.split(" ", 1)[0].lower() if name else None
    return script


def detect_language(text: str) -> str | None:
    """The language of ``text`` as a short code, or None when the text is too short to tell.

    Non-Latin scripts are recognised by their Unicode script (``ja`` when kana appear, ``zh`` for
    Han alone, ``ko``, ``ar``/``fa``/``ur``, ``he``, ``ru``/``uk``, ``el``, ``hi``, ``th``, ... and
    for any other script the first word of its Unicode character names, e.g. ``cherokee``).
    Latin-script text is scored against stop-word profiles of en, es, fr, de, it, pt and nl; a
    language is returned only when it clearly wins (others, e.g. Polish, come back as None).
    """
    counts: dict[str, int] = {}
    if not text.isascii():
        for ch in text:
            if ch.isalpha():
                s = _script_of(ch)
                if s is not None:
                    counts[s] = counts.get(s, 0) + 1
        latin = counts.pop("latin", 0)
        total = latin + sum(counts.values())
        if counts:
            # Brand names, order ids and URLs are Latin even in Japanese or Arabic text, so a
            # non-Latin script wins from 30% of the letters.
            script, n = max(counts.items(), key=lambda kv: kv[1])
            if n >= 0.3 * total and n >= 2:
                return _language_of_script(script, text, counts)
    return _latin_language(text)


def _language_of_script(script: str, text: str, counts: Mapping[str, int]) -> str:
    if script in ("han", "kana"):
        return "ja" if counts.get("kana", 0) else "zh"
    if script == "arabic":
        if any(c in text for c in "ٹڈڑںےھ"):
            return "ur"
        if any(c in text for c in "پچژگکی"):
            return "fa"
        return "ar"
    if script == "cyrillic":
        return "uk" if any(c in text for c in "іїєґІЇЄҐ") else "ru"
    return script


_MACHINE_TOKEN = re.compile(r"[\d_=/\\\[\]{}<>@#|$%^~`*+]|\w[.:]\w")
"""A whitespace-separated token that is machine text (ids, hashes, key=value, paths, URLs, host
names, timestamps, code): its letters say nothing about the writer's language (the hex of a
request id splits into "a", "d", "e" ..., which are French and Spanish stop words)."""


def _prose_words(text: str) -> list[str]:
    """The words of ``text`` outside machine tokens (see ``_MACHINE_TOKEN``), lower case."""
    return [w for tok in text.casefold().split() if not _MACHINE_TOKEN.search(tok)
            for w in _LATIN_WORD.findall(tok)]


def _latin_language(text: str) -> str | None:
    words = _prose_words(text)
    if len(words) < 3:
        return None
    scores: dict[str, float] = {}
    for w in words:
        for lang, weight in _STOPWORD_WEIGHTS.get(w, ()):
            scores[lang] = scores.get(lang, 0.0) + weight
    if not text.isascii():
        low = text.casefold()
        for ch, hints in _DIACRITIC_HINTS.items():
            if ch in low:
                for lang, bonus in hints:
                    scores[lang] = scores.get(lang, 0.0) + bonus
    if not scores:
        return None
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best_lang, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    if best >= 1.5 and best >= 1.5 * second:
        return best_lang
    return None


LANGUAGE_NAMES: Mapping[str, str] = {
    # English name and endonym -> the code detect_language returns. Generic (ISO 639-1 codes of
    # widely used languages), so a prompt line that names a reply language can be compared with
    # the language the replies were detected in.
    "english": "en", "spanish": "es", "español": "es", "castilian": "es", "french": "fr",
    "français": "fr", "german": "de", "deutsch": "de", "italian": "it", "italiano": "it",
    "portuguese": "pt", "português": "pt", "dutch": "nl", "nederlands": "nl", "russian": "ru",
    "русский": "ru", "ukrainian": "uk", "українська": "uk", "greek": "el", "ελληνικά": "el",
    "hebrew": "he", "עברית": "he", "arabic": "ar", "العربية": "ar", "persian": "fa", "farsi": "fa",
    "فارسی": "fa", "urdu": "ur", "اردو": "ur", "hindi": "hi", "हिन्दी": "hi", "bengali": "bn",
    "bangla": "bn", "punjabi": "pa", "gujarati": "gu", "odia": "or", "tamil": "ta", "telugu": "te",
    "kannada": "kn", "malayalam": "ml", "sinhala": "si", "thai": "th", "ไทย": "th", "lao": "lo",
    "tibetan": "bo", "burmese": "my", "georgian": "ka", "armenian": "hy", "korean": "ko",
    "한국어": "ko", "amharic": "am", "khmer": "km", "japanese": "ja", "日本語": "ja",
    "chinese": "zh", "mandarin": "zh", "中文": "zh",
}
"""Language names (English and native, lower case) -> the codes :func:`detect_language` returns."""


# --- built-in detectors --------------------------------------------------------------------------


def _near_duplicate(a: str, b: str, ctx: DetectionContext) -> float | None:
    """Similarity of two user messages if they are a rephrase of each other, else None."""
    ta, tb = _tokens(a), _tokens(b)
    if len(ta) < 3 or len(tb) < 3:
        return None
    # "What about order 88124?" after "What about order 88123?" is a new request, not a rephrase.
    if {t for t in ta if t.isdigit()} != {t for t in tb if t.isdigit()}:
        return None
    sa, sb = set(ta), set(tb)
    jac = len(sa & sb) / len(sa | sb)
    if jac >= ctx.rephrase_jaccard:
        return jac
    ca, cb = " ".join(ta), " ".join(tb)
    sm = difflib.SequenceMatcher(None, ca, cb, autojunk=False)
    # quick_ratio is an upper bound of ratio: skip the expensive exact ratio when it cannot pass.
    if sm.real_quick_ratio() < ctx.rephrase_ratio or sm.quick_ratio() < ctx.rephrase_ratio:
        return None
    ratio = sm.ratio()
    return ratio if ratio >= ctx.rephrase_ratio else None


def _shouting(text: str) -> tuple[int, int] | None:
    """The span of a run of >= 3 ALL-CAPS words (>= 10 letters), if the message shouts."""
    # Speed: each upper-case word holds an upper-case character, so fewer than 3 of those in the
    # whole text cannot shout (most messages: "I" and a capital at the start).
    if sum(map(str.isupper, text)) < 3:
        return None
    run_start = run_end = -1
    run_words = run_letters = 0
    best: tuple[int, int] | None = None
    for m in _LATIN_WORD.finditer(text):
        w = m.group()
        if len(w) >= 2 and w.isupper():
            if run_words == 0:
                run_start = m.start()
            run_end = m.end()
            run_words += 1
            run_letters += len(w)
            if run_words >= 3 and run_letters >= 10:
                best = (run_start, run_end)
        elif w.lower() != w.upper() and not (len(w) == 1 and w.isupper()):
            # A lowercase word ends the run; a lone capital ("I", "A") does not.
            run_words = run_letters = 0
    return best


@register_detector("frustration")
def frustration(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The user is frustrated: rephrases the same request, swears, shouts, or says so.

    One signal per user turn at most (the strongest reason; all reasons in ``details``).
    """
    out: list[Signal] = []
    prev_text: str | None = None
    limit = ctx.evidence_max_chars
    for turn in thread.turns:
        users = _user_messages(turn)
        if not users:
            continue
        reasons: list[tuple[float, str, str]] = []
        for msg in users:
            text = msg.content
            for m in _FRUSTRATION_RX.finditer(text):
                reason = m.lastgroup or "phrase"
                reasons.append((_FRUSTRATION_CONFIDENCE.get(reason, 0.7), reason,
                                clip_quote(text, m.start(), m.end(), limit)))
            span = _shouting(text)
            if span is not None:
                reasons.append((0.6, "shouting", clip_quote(text, span[0], span[1], limit)))
        text = "\n".join(m.content for m in users)
        if prev_text is not None:
            sim = _near_duplicate(prev_text, text, ctx)
            if sim is not None:
                reasons.append((0.55 + 0.3 * sim, "rephrase", clip_quote(users[-1].content, 0, None, limit)))
        prev_text = text
        if reasons:
            conf, reason, quote = max(reasons, key=lambda r: r[0])
            out.append(_signal(thread, "frustration", turn, quote, conf, reason=reason,
                               reasons=sorted({r[1] for r in reasons})))
    return out


def _refusal_match(text: str) -> re.Match[str] | None:
    return _REFUSAL_RX.search(text)


def _ends_with_question(text: str) -> tuple[int, int] | None:
    """Span of the last sentence when the reply ends on a question (¿...? counts too)."""
    stripped = text.rstrip()
    if not stripped.endswith(("?", "？", "؟")):
        return None
    end = len(stripped)
    start = 0
    for m in _SENTENCE_END.finditer(stripped, 0, end - 1):
        start = m.end()
    while start < end and stripped[start].isspace():
        start += 1
    return start, end


_POSITIVE_LABELS = frozenset({"thumbs_up", "positive", "good", "helpful", "up", "like", "liked"})


def went_well(thread: Thread) -> bool:
    """Positive evidence that the conversation served the user: a positive outcome or feedback
    (thumbs-up, a score of at least 0.75 of a 0..1 scale), or a user message after the opening
    one that thanks or confirms ("Thanks, that works!", "¡Gracias!"). Silence is not evidence:
    a user who got a useless answer often just leaves."""
    for f in thread.feedback:
        label = (f.label or "").strip().lower()
        if (f.kind == "outcome" and label in _POSITIVE_OUTCOMES) or label in _POSITIVE_LABELS:
            return True
        if f.kind != "outcome" and f.score is not None and 0.75 <= f.score <= 1.0:
            return True
    return any(_RESOLVED_RX.search(turn.user_text) for turn in thread.turns[1:])


def _is_resolved(thread: Thread) -> bool:
    return any(
        f.kind == "outcome" and (f.label or "").lower() in _POSITIVE_OUTCOMES for f in thread.feedback
    )


@register_detector("abandonment")
def abandonment(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The thread ends right after a failure: the last reply is an error, a refusal or deflection,
    or a question the user never answered, or the user's last words are giving up."""
    if not thread.turns or _is_resolved(thread):
        return []
    last = thread.turns[-1]
    limit = ctx.evidence_max_chars
    user = last.user_text
    reply = last.reply_text

    def sig(quote: str, conf: float, reason: str) -> list[Signal]:
        return [_signal(thread, "abandonment", last, quote, conf, reason=reason)]

    if _RESOLVED_RX.search(user) and not _NOT_RESOLVED_RX.search(user):
        return []  # "thanks, that's all": the user closed the conversation themselves
    m = _GIVE_UP_RX.search(user)
    if m:
        return sig(clip_quote(user, m.start(), m.end(), limit), 0.8, "user_gave_up")
    if last.error and not reply:
        return sig(clip_quote(last.error, 0, None, limit), 0.9, "turn_error")
    if not reply:
        errors = [c.error for c in last.llm_calls if c.error] + [t.error for t in last.tool_calls if t.error]
        if errors:
            return sig(clip_quote(errors[-1], 0, None, limit), 0.85, "error_no_reply")
        if user.strip():
            return sig(clip_quote(user, 0, None, limit), 0.7, "no_reply")
        return []
    m = _AGENT_ERROR_RX.search(reply)
    if m:
        return sig(_sentence(reply, m.start(), m.end(), limit), 0.8, "error_reply")
    m = _refusal_match(reply)
    if m:
        return sig(_sentence(reply, m.start(), m.end(), limit), 0.7, "refusal")
    q = _ends_with_question(reply)
    if q is not None and not _COURTESY_QUESTION_RX.search(reply, q[0], q[1]):
        return sig(clip_quote(reply, q[0], q[1], limit), 0.5, "unanswered_question")
    return []


@register_detector("escalation")
def escalation(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The user asks for a human (agent, manager, supervisor), to cancel, or to complain."""
    out: list[Signal] = []
    for turn in thread.turns:
        best: tuple[float, str, str] | None = None
        for msg in _user_messages(turn):
            for m in _ESCALATION_RX.finditer(msg.content):
                reason = m.lastgroup or "human"
                conf = _ESCALATION_CONFIDENCE.get(reason, 0.7)
                if best is None or conf > best[0]:
                    best = (conf, reason, clip_quote(msg.content, m.start(), m.end(), ctx.evidence_max_chars))
        if best is not None:
            out.append(_signal(thread, "escalation", turn, best[2], best[0], reason=best[1]))
    return out


@register_detector("refusal")
def refusal(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent refuses or deflects ("I can't help with that", "please contact support")."""
    out: list[Signal] = []
    for turn in thread.turns:
        best: tuple[float, str, str] | None = None
        for msg in _assistant_messages(turn):
            for m in _REFUSAL_RX.finditer(msg.content):
                reason = m.lastgroup or "cannot_help"
                conf = _REFUSAL_CONFIDENCE.get(reason, 0.7)
                if best is None or conf > best[0]:
                    best = (conf, reason, _sentence(msg.content, m.start(), m.end(), ctx.evidence_max_chars))
        if best is not None:
            out.append(_signal(thread, "refusal", turn, best[2], best[0], reason=best[1]))
    return out


def _ordered_tools(turn: Turn) -> list[ToolCall]:
    return sorted(turn.tool_calls, key=lambda t: t.seq)


@register_detector("tool_error")
def tool_error(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """A tool call failed: its ``error`` is set, or its result reads like an error (traceback,
    HTTP 5xx, timeout, ``{"error": ...}``). One signal per failing call."""
    out: list[Signal] = []
    limit = ctx.evidence_max_chars
    for turn in thread.turns:
        for call in _ordered_tools(turn):
            if call.error and call.error.strip():
                out.append(_signal(thread, "tool_error", turn, clip_quote(call.error, 0, None, limit), 1.0,
                                   tool=call.name, reason="error", tool_call_id=call.id))
                continue
            result = call.result or ""
            m = _TOOL_ERROR_RX.search(result, 0, 4000) if _may_be_tool_error(result) else None
            if m:
                reason = m.lastgroup or "error"
                out.append(_signal(thread, "tool_error", turn, clip_quote(result, m.start(), m.end(), limit),
                                   _TOOL_ERROR_CONFIDENCE.get(reason, 0.7), tool=call.name,
                                   reason=reason, tool_call_id=call.id))
    return out


def _is_empty_result(result: str | None) -> bool:
    if result is None:
        return True
    if len(result) > 300:
        return False
    if _EMPTY_RESULT_RX.fullmatch(result):
        return True
    s = result.strip()
    if s[:1] in ("{", "["):
        try:
            value = json.loads(s)
        except ValueError:
            return False
        return _empty_json(value)
    return False


def _empty_json(value: Any) -> bool:
    """True for [], {}, null, and objects whose every field is empty/zero (``{"results": [], "total": 0}``)."""
    if value is None or value == "" or value == [] or value == {}:
        return True
    if isinstance(value, dict):
        return all(v is None or v in ("", 0, [], {}) or isinstance(v, bool) for v in value.values()) and any(
            isinstance(v, (list, dict)) or v is None for v in value.values()
        )
    return False


@register_detector("ungrounded")
def ungrounded(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """A retrieval tool came back empty, yet the agent's reply answers without saying it found
    nothing (no "I couldn't find", no refusal, not a question back)."""
    tool_rx = re.compile(ctx.retrieval_tool_pattern, re.IGNORECASE)
    out: list[Signal] = []
    for turn in thread.turns:
        tools = [t for t in _ordered_tools(turn) if tool_rx.search(t.name)]
        if not tools:
            continue
        empty: ToolCall | None = None
        for call in tools:
            if call.error:
                continue
            # A later retrieval that found something resets: the answer may rest on it.
            empty = (empty or call) if _is_empty_result(call.result) else None
        reply = turn.reply_text
        if empty is None or len(reply.strip()) < 20:
            continue
        if (_ADMITS_NOT_FOUND_RX.search(reply) or _REFUSAL_RX.search(reply)
                or _ends_with_question(reply) is not None):
            continue
        out.append(_signal(thread, "ungrounded", turn, clip_quote(reply, 0, None, ctx.evidence_max_chars),
                           0.7, tool=empty.name, tool_result=empty.result,
                           arguments=_jsonable_args(empty.arguments)))
    return out


def _jsonable_args(args: Any) -> Any:
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        return repr(args)
    return args


def _canonical_args(args: Any) -> str:
    """One string per distinct argument value ('{"a": 1, "b": 2}' and '{"b":2,"a":1}' agree)."""
    value: Any = args
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except ValueError:
            return args.strip()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _resolution_turn(thread: Thread) -> int | None:
    """Position of the first user message that sounds like the problem was solved."""
    for pos, turn in enumerate(thread.turns):
        user = turn.user_text
        if pos > 0 and _RESOLVED_RX.search(user) and not _NOT_RESOLVED_RX.search(user):
            return pos
    return None


@register_detector("stall")
def stall(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The conversation goes round in circles: more than ``max_turns`` turns before any sign of
    resolution, or one tool called with identical arguments ``repeated_tool_calls`` times."""
    out: list[Signal] = []
    limit = ctx.evidence_max_chars
    resolved_at = _resolution_turn(thread)
    unresolved = len(thread.turns) if resolved_at is None else resolved_at
    if unresolved > ctx.max_turns and thread.turns:
        crossing = thread.turns[ctx.max_turns]
        quote_src = thread.opening_request or crossing.user_text
        if quote_src.strip():
            excess = unresolved - ctx.max_turns
            out.append(_signal(thread, "stall", crossing, clip_quote(quote_src, 0, None, limit),
                               0.5 + 0.1 * excess, reason="too_many_turns", turns=len(thread.turns),
                               unresolved_turns=unresolved, max_turns=ctx.max_turns))
    counts: dict[tuple[str, str], int] = {}
    for turn in thread.turns:
        for call in _ordered_tools(turn):
            key = (call.name, _canonical_args(call.arguments))
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == ctx.repeated_tool_calls:
                quote_src = turn.user_text if turn.user_text.strip() else call.name
                out.append(_signal(thread, "stall", turn, clip_quote(quote_src, 0, None, limit), 0.8,
                                   reason="repeated_tool_call", tool=call.name,
                                   arguments=_jsonable_args(call.arguments), calls=counts[key]))
    return out


def _conversation_size(messages: Iterable[Message]) -> int:
    # User and assistant text only: tool results and empty tool-calling assistant messages are
    # often pruned on purpose, and system messages are not conversation.
    return sum(1 for m in messages if m.role in ("user", "assistant") and m.content.strip())


@register_detector("context_loss")
def context_loss(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent lost (part of) the conversation: a call's input went past the model's token
    budget, earlier messages were dropped from what the LLM saw, the agent asks again for an
    order number / email / phone the user already gave, or the user says "I already told you"."""
    out: list[Signal] = []
    limit = ctx.evidence_max_chars
    budget_hit: Signal | None = None
    dropped_hit: Signal | None = None
    budget_turns = dropped_turns = 0
    max_tokens = 0
    history: list[Message] = []  # user/assistant messages of the turns before the current one
    history_size = 0  # == _conversation_size(history), kept up to date instead of recounted
    given: dict[str, list[tuple[str, int]]] = {"id": [], "email": [], "phone": []}
    agent_asked_for: set[str] = set()
    budgets: dict[str | None, int] = {}  # context_budget() per model: one prefix scan per model

    def budget(model: str | None) -> int:
        if model not in budgets:
            budgets[model] = ctx.context_budget(model)
        return budgets[model]

    for turn in thread.turns:
        users = _user_messages(turn)
        # 1. Token budget.
        over = [c for c in turn.llm_calls
                if c.input_tokens is not None and c.input_tokens > budget(c.model)]
        if over:
            budget_turns += 1
            worst = max(over, key=lambda c: c.input_tokens or 0)
            max_tokens = max(max_tokens, worst.input_tokens or 0)
            if budget_hit is None:
                src = turn.user_text or worst.error or ""
                if src.strip():
                    budget_hit = _signal(thread, "context_loss", turn, clip_quote(src, 0, None, limit), 0.9,
                                         reason="token_budget", input_tokens=worst.input_tokens,
                                         budget=budget(worst.model), model=worst.model)
        # 2. Messages dropped from the LLM input.
        expected = history_size + len(users)
        for call in turn.llm_calls:
            if not call.input_messages:
                continue  # input not captured: nothing to compare
            got = _conversation_size(call.input_messages)
            if got < expected:
                dropped_turns += 1
                if dropped_hit is None:
                    seen = {m.content for m in call.input_messages}
                    lost = next((m for m in history if m.role in ("user", "assistant")
                                 and m.content.strip() and m.content not in seen), None)
                    src = lost.content if lost is not None else turn.user_text
                    if src.strip():
                        dropped_hit = _signal(thread, "context_loss", turn, clip_quote(src, 0, None, limit),
                                              0.6, reason="messages_dropped", expected=expected,
                                              sent=got, llm_call_id=call.id)
                break
        # 3. Entities the user gives, then the agent asking for them again.
        for msg in users:
            text = msg.content
            # Speed: an email needs an "@", an id 3 digits in a row, a phone number a digit; most
            # messages have none, and then the keyword regexes need not run (same result).
            if "@" in text:
                for v in _EMAIL_VALUE_RX.findall(text):
                    given["email"].append((v, turn.index))
            if _DIGIT_RX.search(text) is not None:
                if (_DIGITS3_RX.search(text) is not None
                        and ("id" in agent_asked_for or _ID_KEYWORD_RX.search(text))):
                    for v in _ID_VALUE_RX.findall(text):
                        if "@" not in v:
                            given["id"].append((v.lstrip("#").strip(), turn.index))
                # The "phone" group of the ask regex doubles as the keyword when a user gives one.
                if "phone" in agent_asked_for or any(
                        m.lastgroup == "phone" for m in _ASK_ENTITY_RX.finditer(text)):
                    for v in _PHONE_VALUE_RX.findall(text):
                        if sum(c.isdigit() for c in v) >= 7:
                            given["phone"].append((v.strip(), turn.index))
            m = _USER_SAYS_LOST_RX.search(text)
            if m and turn.index > 0:
                out.append(_signal(thread, "context_loss", turn, clip_quote(text, m.start(), m.end(), limit),
                                   0.6, reason="user_repeats"))
        agent_asked_for = set()
        for amsg in _assistant_messages(turn):
            reply = amsg.content
            for m in _ASK_ENTITY_RX.finditer(reply):
                kind = m.lastgroup or "id"
                sentence = _sentence(reply, m.start(), m.end(), 10_000)
                is_ask = sentence.rstrip().endswith(("?", "？")) or sentence.lstrip().startswith("¿") \
                    or _ASK_VERB_RX.search(sentence) is not None
                if not is_ask:
                    continue
                agent_asked_for.add(kind)
                if _RECHECK_RX.search(sentence) or _ADMITS_NOT_FOUND_RX.search(reply):
                    continue
                known = [(v, i) for v, i in given[kind] if v not in reply]
                if given[kind] and len(known) == len(given[kind]):
                    value, given_at = known[-1]
                    out.append(_signal(thread, "context_loss", turn,
                                       _sentence(reply, m.start(), m.end(), limit), 0.8,
                                       reason="asks_again", entity=kind, value=value,
                                       given_in_turn=given_at))
                    break
        added = [m for m in turn.messages if m.role in ("user", "assistant")]
        history.extend(added)
        history_size += _conversation_size(added)

    if budget_hit is not None:
        budget_hit.details.update(turns_affected=budget_turns, max_input_tokens=max_tokens)
        out.append(budget_hit)
    if dropped_hit is not None:
        dropped_hit.details["turns_affected"] = dropped_turns
        out.append(dropped_hit)
    out.sort(key=lambda s: s.turn_index if s.turn_index is not None else -1)
    return out


@register_detector("language_switch")
def language_switch(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The user's language changes mid-thread (e.g. English, then Japanese).

    Messages whose language cannot be told (too short, unknown Latin-script language) are skipped;
    ``details`` says whether the agent's reply followed the switch.
    """
    out: list[Signal] = []
    current: str | None = None
    for turn in thread.turns:
        text = turn.user_text
        lang = detect_language(text)
        if lang is None:
            continue
        if current is not None and lang != current:
            reply_lang = detect_language(turn.reply_text) if turn.reply_text else None
            script_change = _is_script_language(lang) or _is_script_language(current)
            out.append(_signal(thread, "language_switch", turn,
                               clip_quote(text, 0, None, ctx.evidence_max_chars),
                               0.9 if script_change else 0.7, **{"from": current, "to": lang},
                               reply_language=reply_lang,
                               agent_followed=None if reply_lang is None else reply_lang == lang))
        current = lang
    return out


def _is_script_language(lang: str) -> bool:
    return lang not in _STOPWORDS


@register_detector("language_mismatch")
def language_mismatch(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent replied in another language than the user's message of the same turn.

    Both languages must be told by :func:`detect_language` (too short or unknown texts are
    skipped), so a reply quoting a product name or a command does not count. Unlike
    ``language_switch`` (the *user* changes language mid-thread), this fires on the first turn
    too: a user who writes Spanish from the start and is answered in English. ``details`` holds
    both languages.
    """
    out: list[Signal] = []
    for turn in thread.turns:
        if not turn.user_text or not turn.reply_text:
            continue
        user_lang = detect_language(turn.user_text)
        reply_lang = detect_language(turn.reply_text)
        if user_lang is None or reply_lang is None or user_lang == reply_lang:
            continue
        script_change = _is_script_language(user_lang) or _is_script_language(reply_lang)
        out.append(_signal(thread, "language_mismatch", turn,
                           clip_quote(turn.reply_text, 0, None, ctx.evidence_max_chars),
                           0.85 if script_change else 0.7, user_language=user_lang,
                           reply_language=reply_lang))
    return out


# A marker a harness or tool leaves at the end of output it cut: "[truncated]", "… [truncated:
# 812 more characters]", "(output truncated)", "<truncated>", "... (1,234 more lines)".
_TRUNCATION_MARKER = re.compile(
    r"[\[(<]\s*(?:output |result |response |text )?truncated\b[^\])>]{0,80}[\])>]"
    r"|\btruncated (?:after|at|to) [\d,]+ ?(?:chars?|characters|bytes|tokens|lines)\b"
    r"|(?:\.\.\.|…)\s*[\[(]?[\d,]+ (?:more )?(?:chars?|characters|bytes|tokens|lines)"
    r"(?: (?:truncated|omitted|hidden))?[\])]?",
    re.IGNORECASE,
)
_TRUNCATION_SIZE = re.compile(
    r"(?P<after>\b(?:after|at|to)\s+)?(?P<n>\d[\d,]*)\s*(?P<more>more\s+)?"
    r"(?P<unit>chars?|characters|bytes|tokens|lines)\b", re.IGNORECASE)
_UNITS = {"char": "characters", "chars": "characters", "characters": "characters",
          "bytes": "bytes", "tokens": "tokens", "lines": "lines"}


def truncation_sizes(marker: str) -> dict[str, Any]:
    """What a truncation marker says about the cut: ``limit`` ("truncated after 300 chars"),
    ``dropped`` ("… [truncated: 828 more characters]") and their ``unit`` (characters, bytes,
    tokens or lines); empty when it says nothing measurable."""
    m = _TRUNCATION_SIZE.search(marker)
    if m is None:
        return {}
    n = int(m.group("n").replace(",", ""))
    out: dict[str, Any] = {"unit": _UNITS[m.group("unit").lower()]}
    out["limit" if m.group("after") and not m.group("more") else "dropped"] = n
    return out


_TRUNCATION_TAIL = 160
"""Characters at the end of a tool result searched for a truncation marker."""


@register_detector("tool_output_truncated")
def tool_output_truncated(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """A tool result reached the model cut short: it ends with a truncation marker.

    The marker must be the last thing in the result (a marker inside a document the tool
    returned is not a cut). One signal per turn; ``details`` names the tools and, per cut result,
    ``kept_chars`` (the content before the marker, without the ellipsis that introduces it) and
    what the marker says of the cut (:func:`truncation_sizes`: ``dropped`` / ``limit`` and ``unit``).
    """
    out: list[Signal] = []
    for turn in thread.turns:
        cut: list[dict[str, Any]] = []
        for call in turn.tool_calls:
            result = call.result or ""
            tail = result.rstrip()[-_TRUNCATION_TAIL:]
            found = list(_TRUNCATION_MARKER.finditer(tail))
            # The marker must *end* the result: one inside the text is the text's own word.
            m = found[-1] if found else None
            if m is None or tail[m.end():].strip(" .\n"):
                continue
            # Content kept before the marker, without the ellipsis/space that introduces it.
            text = result.rstrip()
            kept = len(text[: len(text) - len(tail) + m.start()].rstrip(" .…\n"))
            cut.append({"tool": call.name, "kept_chars": kept, "marker": m.group(0),
                        **truncation_sizes(m.group(0))})
        if cut:
            first = cut[0]
            out.append(_signal(thread, "tool_output_truncated", turn,
                               clip_quote(first["marker"], 0, None, ctx.evidence_max_chars), 0.9,
                               tools=sorted({c["tool"] for c in cut}), cuts=cut))
    return out


@register_detector("latency_outlier")
def latency_outlier(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """A turn much slower than the batch (``ctx.latency_threshold_ms``, see :func:`latency_threshold`)."""
    threshold = ctx.latency_threshold_ms
    if threshold is None:
        return []
    cut = max(threshold, ctx.latency_floor_ms)
    out: list[Signal] = []
    for turn in thread.turns:
        lat = turn_latency_ms(turn)
        if lat is None or lat <= cut:
            continue
        src = turn.user_text if turn.user_text.strip() else turn.reply_text
        if not src.strip():
            continue
        # Name the slowest step: the first thing to look at when diagnosing a slow turn.
        steps: list[tuple[float, str | None]] = [
            (c.latency_ms or 0.0, f"llm:{c.model or c.id}") for c in turn.llm_calls
        ]
        steps += [(t.latency_ms or 0.0, f"tool:{t.name}") for t in turn.tool_calls]
        slowest = max(steps, default=(0.0, None))
        # Twice the threshold is certain; just over it is a coin flip.
        out.append(_signal(thread, "latency_outlier", turn, clip_quote(src, 0, None, ctx.evidence_max_chars),
                           0.5 + 0.5 * min(1.0, math.log2(lat / cut)),
                           latency_ms=round(lat, 1), threshold_ms=round(cut, 1),
                           slowest_step=slowest[1]))
    return out


@register_detector("negative_feedback")
def negative_feedback(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """Explicit negative feedback (score <= ``negative_score_max``, a thumbs-down label, a negative
    comment) or a bad business outcome (churned, escalated, ...)."""
    out: list[Signal] = []
    by_id = {t.id: t for t in thread.turns}
    limit = ctx.evidence_max_chars
    for fb in thread.feedback:
        reason = _negative_reason(fb, ctx)
        if reason is None:
            continue
        turn = by_id.get(fb.turn_id) if fb.turn_id else None
        rated = turn or (thread.turns[-1] if thread.turns else None)
        if fb.comment and fb.comment.strip():
            m = _NEGATIVE_COMMENT_RX.search(fb.comment)
            quote = clip_quote(fb.comment, m.start(), m.end(), limit) if m else clip_quote(fb.comment, 0, None, limit)
        elif rated is not None and rated.reply_text.strip():
            quote = clip_quote(rated.reply_text, 0, None, limit)
        elif fb.label:
            quote = fb.label
        else:
            continue
        conf = 1.0 if reason in ("score", "label", "outcome") else 0.7
        out.append(_signal(thread, "negative_feedback", turn, quote, conf, reason=reason,
                           feedback_id=fb.id, feedback_kind=fb.kind, score=fb.score, label=fb.label))
    return out


def _negative_reason(fb: Feedback, ctx: DetectionContext) -> str | None:
    label = (fb.label or "").strip().lower()
    if fb.kind == "outcome":
        return "outcome" if label in _NEGATIVE_OUTCOMES else None
    if fb.score is not None and fb.score <= ctx.negative_score_max:
        return "score"
    if label in _NEGATIVE_LABELS:
        return "label"
    if fb.comment and _NEGATIVE_COMMENT_RX.search(fb.comment):
        return "comment"
    return None


@register_detector("self_report")
def self_report(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent reported its own failure: a call of the ``report_problem`` tool that
    ``LoopMiddleware(report_problems=True)`` gives it (stuck, a tool keeps failing, cannot do
    what was asked). One signal per report, with its reason as evidence: a source no offline
    detector can see."""
    out: list[Signal] = []
    for turn in thread.turns:
        for call in _ordered_tools(turn):
            if call.name != SELF_REPORT_TOOL:
                continue
            args = call.arguments if isinstance(call.arguments, dict) else {}
            reason = str(args.get("reason") or call.arguments or "").strip()
            out.append(_signal(thread, "self_report", turn,
                               clip_quote(reason, 0, None, ctx.evidence_max_chars), 1.0,
                               reason=reason[:500], tool_call_id=call.id))
    return out


BUILTIN_DETECTORS: tuple[str, ...] = tuple(default_registry.names())
"""Names of the built-in detectors, in run order."""
