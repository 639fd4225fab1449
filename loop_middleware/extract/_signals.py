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

This module is the public face of signal detection and the one place the built-ins are
registered. The code lives in private modules by responsibility:

- ``_detection``: the framework (:class:`DetectionContext`, :class:`DetectorRegistry`, the
  batch runner :func:`detect_signals`, latency statistics, per-model context budgets);
- ``_phrases``: the multilingual phrase lists and the regex builder that compiles them;
- ``_evidence``: verbatim quoting and the other helpers every detector shares;
- ``_conversation_signals``: what the user and the agent say (frustration, abandonment,
  escalation, refusal, negative feedback, self-reports, :func:`went_well`);
- ``_tool_signals``: what the tools returned (errors, empty retrievals, truncated output);
- ``_progress_signals``: a conversation that does not move forward (stall, context loss, slow turns);
- ``_language``: language detection and the language detectors.
"""

from __future__ import annotations

from ._conversation_signals import (
    abandonment,
    escalation,
    frustration,
    negative_feedback,
    refusal,
    self_report,
    went_well,
)
from ._detection import (
    DEFAULT_CONTEXT_BUDGETS,
    DetectionContext,
    Detector,
    DetectorRegistry,
    context_budget_for,
    default_registry,
    detect_signals,
    detect_thread,
    latency_threshold,
    register_detector,
    turn_latency_ms,
)

# Not in ``__all__`` (it never was) but imported from here by ``extract._extract``, which this
# split does not touch: re-exported explicitly so that import keeps working (and mypy, strict
# about implicit re-exports, accepts it).
from ._detection import latency_ms_of as latency_ms_of
from ._evidence import clip_quote
from ._language import LANGUAGE_NAMES, detect_language, language_mismatch, language_switch
from ._progress_signals import context_loss, latency_outlier, stall
from ._tool_signals import tool_error, tool_output_truncated, truncation_sizes, ungrounded

# Every name below is imported from this module by code this split left alone
# (``extract/__init__``, ``extract._extract``, ``extract._units``, ``diagnose._stats``,
# ``diagnose._hypotheses``, ``patch._propose``, ``patch._replay``, tests, and hosts following the
# docstring above): they are re-exported from the private modules that now define them, so every
# such import keeps working.
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

# The built-ins, registered here rather than by decorators in their own modules: the registry
# runs detectors in registration order, that order is part of the output (signals come back in
# it, ``BUILTIN_DETECTORS`` lists it), and with the detectors spread over several modules a
# decorator would make it depend on import order. One list keeps it explicit and unchanged.
for _name, _detector in (
    ("frustration", frustration),
    ("abandonment", abandonment),
    ("escalation", escalation),
    ("refusal", refusal),
    ("tool_error", tool_error),
    ("ungrounded", ungrounded),
    ("stall", stall),
    ("context_loss", context_loss),
    ("language_switch", language_switch),
    ("language_mismatch", language_mismatch),
    ("tool_output_truncated", tool_output_truncated),
    ("latency_outlier", latency_outlier),
    ("negative_feedback", negative_feedback),
    ("self_report", self_report),
):
    register_detector(_name, _detector)
del _name, _detector

BUILTIN_DETECTORS: tuple[str, ...] = tuple(default_registry.names())
"""Names of the built-in detectors, in run order."""
