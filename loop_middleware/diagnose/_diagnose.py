"""Stage 4: from signals and intents to ranked root-cause diagnoses with numbers.

::

    cells = cell_table(threads, signals, assignments)      # every intent x signal, Fisher + BH
    significant_cells(cells)                                # q <= alpha, >= min_sessions, by impact
      -> explain(cell)                                      # coverage_gap, regression, tool_failure,
                                                            # ungrounded_answer, context_loss,
                                                            # loop_stall, or unexplained
      -> one Diagnosis per (intent, failure mode)           # cells of several signals merged

The output is deterministic for the same input (sorted everywhere, no sampling), and a
diagnosis' ``id`` depends only on the intent, its primary signal, the failure mode and the
prompt version to fix, so the loop recognises a diagnosis it has already acted on and does not
open a second pull request for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scipy.stats import fisher_exact

from ..errors import ConfigError
from ..types import Diagnosis, Evidence, Intent, PromptVersion, Signal, Thread
from ._hypotheses import CellContext, Hypothesis, explain
from ._stats import UNASSIGNED, CellStat, DiagnoseConfig, cell_table, significant_cells

if TYPE_CHECKING:
    from ._llm import DiagnosisWriter

__all__ = ["DiagnoseConfig", "diagnose", "diagnosis_id"]

_SIGNAL_PHRASES: Mapping[str, str] = {
    "abandonment": "is abandoned",
    "escalation": "escalates to a human",
    "refusal": "gets refusals",
    "frustration": "frustrates users",
    "tool_error": "hits tool errors",
    "ungrounded": "gets ungrounded answers",
    "stall": "stalls",
    "context_loss": "loses context",
    "latency_outlier": "is slow",
    "negative_feedback": "gets negative feedback",
}


def diagnosis_id(intent_id: str | None, signal: str, failure_mode: str, prompt_sha256: str | None) -> str:
    """The stable id of a diagnosis: a hash of what identifies the problem and its fix target."""
    key = "\x1f".join((intent_id or "", signal, failure_mode, prompt_sha256 or ""))
    return "dx-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def diagnose(
    threads: Sequence[Thread],
    signals: Sequence[Signal],
    intents: Sequence[Intent],
    assignments: Mapping[str, str | None],
    *,
    config: DiagnoseConfig | None = None,
    llm: DiagnosisWriter | None = None,
) -> list[Diagnosis]:
    """Diagnose why intents fail: significant intent x signal cells, explained and ranked by impact.

    Args:
        threads: Every session analysed (the denominator of ``share_of_sessions``).
        signals: The failure signals found in them.
        intents: The intents (for names and keyphrases); an id in ``assignments`` missing here is
            diagnosed under its id as name.
        assignments: ``thread_id -> intent id`` (``None`` / missing: unassigned).
        config: Thresholds, severities, stop words; defaults documented on :class:`DiagnoseConfig`.
        llm: Optional :class:`~loop_middleware.diagnose._llm.DiagnosisWriter` that rewrites each
            root-cause sentence from sample threads (quotes checked verbatim; on any failure the
            offline sentence is kept).

    Returns:
        One :class:`~loop_middleware.types.Diagnosis` per (intent, failure mode), highest impact
        first. Empty when no cell passes the false-discovery-rate control.
    """
    cfg = config if config is not None else DiagnoseConfig()
    if not isinstance(cfg, DiagnoseConfig):
        raise ConfigError(f"config must be a DiagnoseConfig, got {type(cfg).__name__}")
    cells = significant_cells(cell_table(threads, signals, assignments, config=cfg), cfg)
    if not cells:
        return []
    intents_by_id = {i.id: i for i in intents}
    members: dict[str | None, list[Thread]] = {}
    for t in threads:
        members.setdefault(assignments.get(t.thread_id), []).append(t)
    known = {t.thread_id for t in threads}
    signals_by_thread: dict[str, list[Signal]] = {}
    for s in signals:
        if s.thread_id in known:
            signals_by_thread.setdefault(s.thread_id, []).append(s)

    shared: dict[str, Any] = {}
    groups: dict[tuple[str | None, str], list[tuple[CellStat, Hypothesis]]] = {}
    for cell in cells:  # already in rank order: the first member of a group is its primary
        intent_threads = members.get(cell.intent_id, [])
        in_ids = {t.thread_id for t in intent_threads}
        ctx = CellContext(cell=cell, intent=intents_by_id.get(cell.intent_id or ""),
                          intent_threads=intent_threads,
                          other_threads=[t for t in threads if t.thread_id not in in_ids],
                          signals_by_thread=signals_by_thread, config=cfg, shared=shared)
        for h in explain(ctx):
            groups.setdefault((cell.intent_id, h.failure_mode), []).append((cell, h))

    out = [_build(key[0], group, intents_by_id, members, signals_by_thread, cfg)
           for key, group in groups.items()]
    out.sort(key=lambda d: (-d.impact, -d.confidence, d.q_value, d.id))
    if llm is not None:
        by_id = {t.thread_id: t for t in threads}
        out = llm.write_all(out, by_id)
    return out


def _build(
    intent_id: str | None,
    group: list[tuple[CellStat, Hypothesis]],
    intents_by_id: Mapping[str, Intent],
    members: Mapping[str | None, list[Thread]],
    signals_by_thread: Mapping[str, list[Signal]],
    cfg: DiagnoseConfig,
) -> Diagnosis:
    """Merge the cells of one (intent, failure mode) into one diagnosis with union numbers."""
    primary_cell, primary = group[0]
    kinds = sorted({c.signal for c, _ in group})
    intent = intents_by_id.get(intent_id or "")
    name = intent.name if intent is not None else (intent_id or UNASSIGNED)
    # Numbers for "any of the merged signals", counted per session once.
    affected = sorted({tid for c, _ in group for tid in c.thread_ids})
    in_ids = {t.thread_id for t in members.get(intent_id, [])}
    n_in, total = primary_cell.sessions_in_intent, primary_cell.total_sessions
    n_out = total - n_in
    elsewhere = {tid for tid, sigs in signals_by_thread.items()
                 if tid not in in_ids and any(s.kind in kinds for s in sigs)}
    a, b = len(affected), len(elsewhere)
    rate_in, rate_out = a / n_in, (b / n_out if n_out else 0.0)
    if n_out:
        lift = rate_in / max(rate_out, 0.5 / n_out)
        p = float(fisher_exact([[a, n_in - a], [b, n_out - b]], alternative="greater")[1])
    else:
        lift, p = 1.0, 1.0
    # Each merged cell passed BH on its own; the largest of their q-values is a conservative
    # statement for the union (the union itself was not one of the tested hypotheses).
    q = max(c.q_value for c, _ in group)
    # Impact: each session counts once, at the severity of its worst merged signal.
    impact = 0.0
    for tid in affected:
        impact += max(cfg.severity_of(s.kind) for s in signals_by_thread[tid] if s.kind in kinds)

    prompt: PromptVersion | None = next((h.prompt for _, h in group if h.prompt is not None), None)
    evidence: list[Evidence] = []
    seen: set[tuple[str, str]] = set()
    pools = [list(h.evidence) for _, h in group]
    for i in range(max(len(pl) for pl in pools)):
        for pl in pools:
            if i < len(pl) and (pl[i].thread_id, pl[i].quote) not in seen and len(evidence) < cfg.max_evidence:
                seen.add((pl[i].thread_id, pl[i].quote))
                evidence.append(pl[i])

    what = " and ".join(_SIGNAL_PHRASES.get(k, f"shows {k}") for k in
                        [primary_cell.signal, *[k for k in kinds if k != primary_cell.signal]])
    subject = f"'{name}' intent {what}"
    numbers = (f"{a} sessions ({_pct(a / total)} of sessions); {'/'.join(kinds)} rate "
               f"{_pct(rate_in)} in the intent vs {_pct(rate_out)} elsewhere "
               f"(lift {lift:.1f}x, q={q:.2g})")
    if primary.failure_mode == "unexplained":
        summary = f"{subject}, cause not identified: {numbers}"
    else:
        summary = f"{subject} because {primary.clause}: {numbers}"

    details: dict[str, Any] = dict(primary.details)
    details["signals"] = kinds
    details["affected_thread_ids"] = affected[:100]
    details["cells"] = [
        {"signal": c.signal, "sessions_affected": c.sessions_affected,
         "rate_in_intent": c.rate_in_intent, "rate_elsewhere": c.rate_elsewhere, "lift": c.lift,
         "p_value": c.p_value, "q_value": c.q_value, "impact": c.impact,
         "hypothesis_confidence": h.confidence}
        for c, h in group
    ]
    if len(group) > 1:
        details["by_signal"] = {c.signal: {"clause": h.clause, **h.details} for c, h in group[1:]}
    return Diagnosis(
        id=diagnosis_id(intent_id, primary_cell.signal, primary.failure_mode,
                        prompt.sha256 if prompt else None),
        intent_id=intent_id, intent_name=name, signal=primary_cell.signal,
        failure_mode=primary.failure_mode, summary=summary,
        sessions_affected=a, share_of_sessions=a / total, rate_in_intent=rate_in,
        rate_elsewhere=rate_out, lift=lift, p_value=p, q_value=q, impact=impact,
        confidence=max(h.confidence for _, h in group),
        prompt_sha256=prompt.sha256 if prompt else None,
        prompt_path=prompt.path if prompt else None,
        evidence=evidence, details=details,
    )
