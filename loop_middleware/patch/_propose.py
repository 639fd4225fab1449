"""Stage 5, before publishing: from ranked diagnoses to reviewable, checked fixes.

For each diagnosis (one fix at most)::

    edit (library of edits per failure mode, _edits.py; optional LLM drafting)
      -> make_diff (minimal unified diff of one file)
      -> guard: AllowedPaths.check + check_diff (only the host's allowed globs, whatever the
         conversations say)
      -> contract: check_file_contract (template variables and sections kept; config parses)
      -> replay guardrail (optional): dropped when the candidate agent is worse
      -> Fix: rationale with the numbers, evidence refs, metric to watch, cohort size

Nothing is written to the host repository here; publishing (``publish_fix``) re-checks the diff
against the committed file before committing it to a branch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loop_middleware.errors import ConfigError, LoopError
from loop_middleware.extract._signals import detect_signals
from loop_middleware.measure._stats import sample_size_per_group
from loop_middleware.patch._contract import apply_unified_diff, check_file_contract, make_diff
from loop_middleware.patch._edits import (
    EditContext,
    ProposeConfig,
    ProposedEdit,
    neutralise,
    propose_edit,
)
from loop_middleware.patch._guard import AllowedPaths
from loop_middleware.patch._replay import ReplayGuard, ReplayResult, agent_side, sample_threads
from loop_middleware.types import Diagnosis, Fix, Thread

__all__ = ["ProposeConfig", "SkippedDiagnosis", "expected_sample_size", "fix_id", "propose_fixes",
           "render_rationale"]

logger = logging.getLogger("loop_middleware.patch")

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.:\-]")


@dataclass(frozen=True)
class SkippedDiagnosis:
    """A diagnosis that got no fix, and why (collected when ``skipped=[]`` is passed)."""

    diagnosis_id: str
    reason: str
    replay: ReplayResult | None = None


def fix_id(diagnosis_id: str, diff: str) -> str:
    """The stable id of a fix: a hash of its diagnosis id and its diff."""
    return "fix-" + hashlib.sha256(f"{diagnosis_id}\x1f{diff}".encode()).hexdigest()[:16]


def expected_sample_size(rate: float, config: ProposeConfig) -> int:
    """Threads per cohort (in the intent) to confirm the fix cut ``rate`` by
    ``config.expected_relative_effect`` (two-sided ``alpha``, ``power``); 0 when not computable
    (a zero rate has nothing to cut)."""
    if not 0.0 < rate <= 1.0:
        return 0
    try:
        return sample_size_per_group(rate, -rate * config.expected_relative_effect,
                                     alpha=config.alpha, power=config.power)
    except ConfigError:
        return 0


def _safe_id(value: str) -> str:
    return _SAFE_ID.sub("_", value)[:80]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _evidence(d: Diagnosis, config: ProposeConfig) -> list[dict[str, Any]]:
    return [{"thread_id": _safe_id(ev.thread_id), "turn_index": ev.turn_index,
             "quote": neutralise(ev.quote, config.max_quote_chars)}
            for ev in d.evidence[: config.max_quotes]]


def _intents_line(d: Diagnosis) -> str:
    """"; in 3 intents: A 48 (96.0%), B 38 (95.0%), C 12 (80.0%)" for a diagnosis merged across
    intents (``details["intents"]``), else nothing."""
    rows = d.details.get("intents")
    if not isinstance(rows, list) or len(rows) < 2:
        return ""
    parts = []
    for r in rows[:6]:
        if not isinstance(r, dict):
            continue
        rate = r.get("rate")
        parts.append(f"{neutralise(str(r.get('intent_name') or r.get('intent_id') or '?'), 60)} "
                     f"{r.get('sessions', '?')}"
                     + (f" ({_pct(float(rate))})" if isinstance(rate, int | float) else ""))
    more = f", {len(rows) - 6} more" if len(rows) > 6 else ""
    return f"; in {len(rows)} intents: " + ", ".join(parts) + more


def render_rationale(d: Diagnosis, edit: ProposedEdit, config: ProposeConfig,
                     replay: ReplayResult | None = None, sample_size: int = 0) -> str:
    """The rationale of a fix, as light Markdown (plain lines and ``-`` lists only, so it reads
    the same raw, in a commit message, and once :func:`render_pr_body` escapes it).

    Everything that comes from conversations (the summary, intent names, quotes) is neutralised.
    """
    total = round(d.sessions_affected / d.share_of_sessions) if d.share_of_sessions > 0 else None
    kinds = [str(k) for k in (d.details.get("signals") or [d.signal])]
    intent = neutralise(d.intent_name, 80)
    signal = neutralise(d.signal, 40)
    lines = [
        *([neutralise(d.headline, 300), ""] if d.headline else []),
        neutralise(d.summary, 600),
        "",
        f"- Failure mode: {neutralise(d.failure_mode, 40)} (signal: {signal}"
        + (f"; merged: {neutralise(', '.join(kinds), 120)}" if len(kinds) > 1 else "") + ")",
        f"- Sessions affected: {d.sessions_affected}"
        + (f" of {total}" if total else "") + f" ({_pct(d.share_of_sessions)} of sessions)"
        + _intents_line(d),
        f"- {signal} rate: {_pct(d.rate_in_intent)} in intent '{intent}' vs "
        f"{_pct(d.rate_elsewhere)} elsewhere; lift {d.lift:.1f}x; p={d.p_value:.2g}, q={d.q_value:.2g}",
        f"- Confidence in the cause: {d.confidence:.2f}",
    ]
    ev = _evidence(d, config)
    if ev:
        lines += ["", "Evidence:"]
        for item in ev:
            turn = f", turn {item['turn_index']}" if isinstance(item["turn_index"], int) else ""
            quote = f": \u201c{item['quote']}\u201d" if item["quote"] else ""
            lines.append(f"- thread:{item['thread_id']}{turn}{quote}")
    lines += ["", f"What changed: {edit.description}"
              + (" (text drafted by an LLM, checked like any edit)." if edit.drafted_by == "llm" else ".")]
    if replay is not None:
        lines.append(replay.summary())
    effect = config.expected_relative_effect
    target = d.rate_in_intent * (1 - effect)
    watch = (f"Watch: {signal} rate in intent {intent}, expected to decrease by {effect:.0%} "
             f"(from {_pct(d.rate_in_intent)} to {_pct(target)})")
    if sample_size:
        watch += (f"; {sample_size} threads per cohort in the intent confirm that "
                  f"(alpha {config.alpha:g}, power {config.power:g}).")
    else:
        watch += "."
    lines.append(watch)
    return "\n".join(lines) + "\n"


class _Pool:
    """Threads by id, with their stored-signal verdict computed once (for the replay's sample of
    other threads that passed in production)."""

    def __init__(self, threads: Iterable[Thread]) -> None:
        self.by_id: dict[str, Thread] = {}
        for t in threads:
            self.by_id.setdefault(t.thread_id, t)
        self._passed: set[str] | None = None

    def passed(self) -> set[str]:
        if self._passed is None:
            failing = {s.thread_id for s in detect_signals(self.by_id.values()) if agent_side(s)}
            self._passed = set(self.by_id) - failing
        return self._passed


def _replay_threads(d: Diagnosis, pool: _Pool, guard: ReplayGuard,
                    assignments: Mapping[str, str | None] | None) -> tuple[list[Thread], list[Thread]]:
    ids: list[str] = []
    for tid in [*(ev.thread_id for ev in d.evidence), *(d.details.get("affected_thread_ids") or [])]:
        if tid in pool.by_id and tid not in ids:
            ids.append(tid)
    evidence = [pool.by_id[t] for t in ids[: guard.max_threads]]
    affected = set(ids)
    candidates = [
        t for tid, t in pool.by_id.items()
        if tid not in affected and tid in pool.passed()
        and (assignments is None or d.intent_id is None or assignments.get(tid) != d.intent_id)
    ]
    return evidence, sample_threads(candidates, guard.max_threads, d.id)


def propose_fixes(
    diagnoses: Sequence[Diagnosis],
    *,
    repo_dir: str | os.PathLike[str],
    allowed: AllowedPaths,
    config: ProposeConfig | None = None,
    threads: Iterable[Thread] | None = None,
    replay: ReplayGuard | None = None,
    llm: Any | None = None,
    previous_text: Callable[[str], str | None] | None = None,
    assignments: Mapping[str, str | None] | None = None,
    skipped: list[SkippedDiagnosis] | None = None,
) -> list[Fix]:
    """One checked fix per diagnosis that has an edit, in the diagnoses' order.

    Args:
        diagnoses: Ranked diagnoses (``diagnose``'s output).
        repo_dir: The host agent's repository (read only here).
        allowed: The only files a fix may change. Every fix's target and diff headers pass it.
        config: Settings (:class:`ProposeConfig`); the defaults work offline.
        threads: Stored threads: the evidence threads (tool names, prompt versions, replay) and,
            for the replay's regression check, other threads (those with no agent-side failure
            signal, outside the diagnosis' intent when ``assignments`` is given, are sampled).
        replay: A :class:`ReplayGuard`: fixes whose candidate agent is worse are dropped.
        llm: An ``instructor``-compatible client that drafts prompt text (optional).
        previous_text: ``sha256 -> prompt text`` for reverting regressions (optional; prompt
            versions found in ``threads`` and the diagnosis' stored diff are tried too).
        assignments: ``thread_id -> intent id``, to sample other-intent threads for the replay.
        skipped: When a list is given, a :class:`SkippedDiagnosis` is appended for every
            diagnosis that got no fix, with the reason (also logged).

    Returns:
        The fixes, ``status="proposed"``, with stable ids (hash of diagnosis id and diff).
        A diagnosis whose edit would touch a file outside ``allowed``, break the contract, or
        that the replay found worse, gets no fix; the others are never raised as errors either.
    """
    cfg = config if config is not None else ProposeConfig()
    if not isinstance(cfg, ProposeConfig):
        raise ConfigError(f"config must be a ProposeConfig, got {type(cfg).__name__}")
    root = Path(repo_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"repo_dir {str(root)!r} is not a directory")
    pool = _Pool(threads or [])
    ctx = EditContext(config=cfg, allowed=allowed, threads=pool.by_id, previous_text=previous_text,
                      llm=llm)
    required = cfg.required_sections or None
    out: list[Fix] = []
    by_key: dict[str, Fix] = {}

    def skip(d: Diagnosis, reason: str, result: ReplayResult | None = None) -> None:
        logger.info("no fix for diagnosis %s (%s): %s", d.id, d.failure_mode, reason)
        if skipped is not None:
            skipped.append(SkippedDiagnosis(d.id, reason, result))

    for d in diagnoses:
        try:
            edit = propose_edit(d, root, ctx)
        except LoopError as exc:
            skip(d, f"no edit: {exc}")
            continue
        if edit is None:
            skip(d, "unexplained: nothing to change" if d.failure_mode == "unexplained"
                 else f"no {d.failure_mode} edit applies (file missing, setting absent, or already done)")
            continue
        first = by_key.get(edit.dedupe_key) if edit.dedupe_key else None
        if first is not None:
            first.details.setdefault("also_addresses", []).append(d.id)
            skip(d, f"same change as fix {first.id}")
            continue
        try:
            rel = allowed.check(edit.target_file, root)
            diff = make_diff(rel, edit.old_text, edit.new_text)
            if not diff:
                skip(d, "the edit changes nothing")
                continue
            allowed.check_diff(diff, rel)
            if apply_unified_diff(edit.old_text, diff) != edit.new_text:
                skip(d, "the diff does not reproduce the edit")  # pragma: no cover - defensive
                continue
            check_file_contract(rel, edit.old_text, edit.new_text, required)
        except LoopError as exc:
            skip(d, f"refused: {exc}")
            continue

        fid = fix_id(d.id, diff)
        n = expected_sample_size(d.rate_in_intent, cfg)
        metric = f"{neutralise(d.signal, 40)} rate in intent {neutralise(d.intent_name, 80)}"
        fix = Fix(id=fid, diagnosis_id=d.id, kind=edit.kind, target_file=rel, diff=diff,
                  title=neutralise(edit.title, 200), rationale="", metric=metric,
                  expected_direction="decrease", sample_size_needed=n, status="proposed",
                  created_at=datetime.now(UTC))
        result: ReplayResult | None = None
        if replay is not None:
            evidence, others = _replay_threads(d, pool, replay, assignments)
            result = replay.evaluate(fix, d, evidence, root, other_threads=others)
            if result.worse:
                logger.warning("fix %s for diagnosis %s dropped by the replay: %s", fid, d.id,
                               result.reason)
                skip(d, f"replay: {result.reason}", result)
                continue
            if cfg.require_improvement and not (result.ran and result.improved):
                skip(d, f"replay shows no improvement ({result.summary()})", result)
                continue
        fix.rationale = render_rationale(d, edit, cfg, result, n)
        fix.details = {
            "failure_mode": d.failure_mode,
            "signal": d.signal,
            "intent_id": d.intent_id,
            "edit": edit.description,
            "drafted_by": edit.drafted_by,
            "expected_relative_effect": cfg.expected_relative_effect,
            "baseline_rate": d.rate_in_intent,
            "evidence": _evidence(d, cfg),
            "replay": result.model_dump(mode="json") if result is not None else None,
            "sources": list(edit.sources),
        }
        if isinstance(d.details.get("intent_ids"), list):
            # A diagnosis merged across intents: measured over all of them (measure_fix).
            fix.details["intent_ids"] = [str(i) for i in d.details["intent_ids"]]
        fix.placeholders = list(edit.placeholders)
        if edit.dedupe_key:
            by_key[edit.dedupe_key] = fix
        out.append(fix)
    return out
