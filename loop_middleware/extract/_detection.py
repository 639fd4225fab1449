"""The detector framework: what a detector is, the settings it runs with, and how a batch is run.

A *detector* is a plain function ``(thread, ctx) -> list[Signal]``. Detectors live in a
:class:`DetectorRegistry`, run in registration order (so results are deterministic), and share
one :class:`DetectionContext` per run: thresholds, per-model context budgets and the batch
statistics that only make sense across many threads (the turn-latency outlier threshold,
computed by :func:`detect_signals` before any thread is examined).

This module knows nothing about *which* detectors exist: the built-ins live in the
``_*_signals`` / ``_language`` modules and are registered on :data:`default_registry` by
``_signals`` (which keeps their run order in one place). Registries, contexts and detectors are
pickled to worker processes (``extract._units``), so everything here is defined at module level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, overload

from ..errors import ConfigError, ExtractionError
from ..types import Signal, Thread, Turn

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
