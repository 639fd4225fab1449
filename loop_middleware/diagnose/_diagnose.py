"""Stage 4: from signals and intents to ranked root-cause diagnoses with numbers.

::

    cells = cell_table(threads, signals, assignments)      # every intent x signal, Fisher + BH
    significant_cells(cells)                                # q <= alpha, >= min_sessions, by impact
      -> explain(cell)                                      # coverage_gap, regression, tool_failure,
                                                            # ungrounded_answer, context_loss,
                                                            # loop_stall, or unexplained
      -> one Diagnosis per (intent, failure mode)           # cells of several signals merged
    version jumps of cells and situations                   # exact tests, one BH family
      -> one regression Diagnosis per intent / situation
    cells a regressed situation added                       # attributed to it (no test)
    diagnoses of one mechanism across intents               # merged: one per root cause (_merge)

Regressions (what is tested, over which family, why false positives stay controlled)
-------------------------------------------------------------------------------------
A regression claims "sessions of this group fail more since the prompt changed from version A to
the next version B". Sessions are grouped by the version of their main prompt; versions of one
prompt are ordered by first appearance over *all* sessions analysed. Two kinds of group are
tested, both with the one-sided exact conditional test of
:func:`~loop_middleware.diagnose._stats.stratified_exact_test`:

* **cells**: the sessions of one intent, affected = the cell's signal fired (one stratum: Fisher's
  exact test), for every intent x failure signal with ``min_sessions`` affected sessions;
* **situations** (``regression_situations``): the sessions in which signal kind X fired (a user
  asked for a human, a tool failed), affected = failure kind Y fired at a later turn, for every
  X != Y with ``min_sessions`` affected sessions, *stratified by intent*: each intent's sessions
  are compared only with the same intent's sessions on the other version, so a shift of the
  intent mix between versions is no jump, while the few sessions each intent contributes add up.
  A prompt change usually breaks how the agent handles one situation, in every intent that
  reaches it; a split or small intent (five requests for a human in each of four intents) never
  has the numbers on its own.

Either way a group needs ``min_version_sessions`` sessions on both versions of a consecutive
pair; its p is the smallest over the pairs, Bonferroni-corrected for the number of pairs. Every
p of every group tested (cells and situations, significant as a cell or not) forms **one**
Benjamini-Hochberg family at ``regression_alpha``; only groups whose q passes and whose rate went
up become ``regression`` diagnoses. Why that keeps false regressions rare:

* each test is exact and valid for any sample size (conditional on the margins, no normal
  approximation), and the version label is the only thing compared;
* which groups enter the family depends only on the margins the exact tests condition on
  (sessions per version, affected sessions in total), never on which version the affected
  sessions are on, so selecting them does not bias the p-values; and each group is tested once,
  with one statistic (no best-of-several tests);
* BH controls the expected share of false regressions among those reported at ``regression_alpha``
  for independent or positively dependent tests; the tests here share sessions (a cell and a
  situation can hold the same threads) and their statistics move together, the positive
  dependence (PRDS) case. Under "the change did nothing" BH also caps the chance of reporting any
  regression at ``regression_alpha``. ``benchmarks/loop_benchmark.py`` measures both on the
  example agent: version labels shuffled within intents, and a prompt change that alters nothing.

Cells a situation regression explains (an attribution, not a test)
-----------------------------------------------------------------
A prompt change that breaks a situation also shows in the cells of the intents that reach it most:
the users who ask for a human are refused, and in the intent made mostly of such users the refusal
cell is significant. Its own version jump may well not pass (the intent also had refusals for
other reasons before the change, or too few sessions), and it would read as a coverage gap. So a
significant cell whose cause would be ``coverage_gap`` or ``unexplained``, and which no other
cause of its intent explains (step 4 of :func:`diagnose`), joins a regressed situation "after X"
when the change added most of it: within the cell's intent, take the sessions in which X fired,
per version of the regression's pair; the cell's sessions with X at or before their failure
number ``a_new`` of ``n_new`` on the new version and ``a_old`` of ``n_old`` on the old one; the
sessions the change added, ``a_new - n_new * a_old / n_old``, must be at least ``min_support`` of
the cell's affected sessions (none when one version has no session in the situation). Its
consequences (step 4) go with it. This is the rule step 4 applies between cells, with the version
comparison that makes "the change caused it" more than "it came after the situation": a gap the
old version had in the same situation just as often (every request for a human refused on both
versions) adds nothing, however many of its sessions ran on the new version. Nothing is tested:
the cell passed its own test (Fisher + BH) and the situation its own (exact, in the one BH
family); the situation diagnosis keeps the numbers of that test and lists the cells in
``details["attributed_cells"]`` (and names them in its summary), so no p-value, q-value or
impact is computed from a selection made after looking at the data.

The output is deterministic for the same input (sorted everywhere, no sampling), and a
diagnosis' ``id`` depends only on the intent, its primary signal, the failure mode and the
prompt version to fix, so the loop recognises a diagnosis it has already acted on and does not
open a second pull request for it. A diagnosis merged from several (one root cause reached by
several intents, :mod:`~loop_middleware.diagnose._merge`) keeps the id of its strongest member
and lists the others in ``details["merged_ids"]``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from ..errors import ConfigError
from ..types import Diagnosis, Intent, PromptVersion, Signal, Thread
from ._hypotheses import (
    CellContext,
    Hypothesis,
    _collect_evidence,
    explain,
    regression,
    regression_test,
    situation_regression,
    situation_tests,
    version_order,
)
from ._merge import MergeContext, merge_root_causes, plural
from ._population import Population
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
    "tool_output_truncated": "gets tool output cut short",
    "language_mismatch": "is answered in another language",
}


def diagnosis_id(intent_id: str | None, signal: str, failure_mode: str, prompt_sha256: str | None,
                 situation: str | None = None) -> str:
    """The stable id of a diagnosis: a hash of what identifies the problem and its fix target
    (``situation``: the trigger signal of a situation regression, which has no intent)."""
    parts: tuple[str, ...] = (intent_id or "", signal, failure_mode, prompt_sha256 or "")
    if situation is not None:
        parts += (f"after:{situation}",)
    key = "\x1f".join(parts)
    return "dx-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _short(clause: str) -> str:
    """A cause without its parenthetical details: "the prompt has no refund policy"."""
    depth, out = 0, []
    for ch in clause:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return " ".join("".join(out).split()).rstrip(" ;,")


_HEADING_RX = re.compile(r"^([-+])\s{0,3}#{1,6}\s+(.*\S)\s*$")


def _removed_sections(diff: str) -> list[str]:
    """The Markdown headings a prompt diff removes (and does not add back)."""
    removed: list[str] = []
    added: set[str] = set()
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        m = _HEADING_RX.match(line)
        if m is None:
            continue
        if m.group(1) == "-":
            removed.append(m.group(2).strip())
        else:
            added.add(m.group(2).strip().casefold())
    return list(dict.fromkeys(h for h in removed if h.casefold() not in added))


_LIST_MARK_RX = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def _norm_line(text: str) -> str:
    """A prompt line without its list marker or numbering (a renumbered step is not a change)."""
    return " ".join(_LIST_MARK_RX.sub("", text).split()).casefold()


def _removed_lines(diff: str) -> tuple[list[str], bool]:
    """The content lines a prompt diff removes and does not add back (list numbering ignored),
    headings excluded: what a reader recognises when no whole section went; and whether the diff
    also adds new lines (then the lines were changed rather than dropped)."""
    removed: list[str] = []
    added: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")) or _HEADING_RX.match(line):
            continue
        if line.startswith("-") and line[1:].strip():
            removed.append(line[1:].strip())
        elif line.startswith("+") and line[1:].strip():
            added.append(_norm_line(line[1:]))
    old = {_norm_line(x) for x in removed}
    return [x for x in removed if _norm_line(x) not in added], any(a not in old for a in added)


def _quote(text: str, limit: int = 72) -> str:
    text = _LIST_MARK_RX.sub("", text).strip().rstrip(";,:")
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    if cut.count("(") > cut.count(")"):  # never leave a parenthesis open
        cut = cut[: cut.rfind("(")]
    return cut.rstrip(" ;,:") + "…"


def _cause(h: Hypothesis) -> str:
    """The cause of a headline: a regression names what the new version dropped (the removed
    sections, else the first removed line: what a reader recognises and the revert restores),
    anything else its clause without details."""
    if h.failure_mode != "regression":
        return _short(h.clause)
    diff = str(h.details.get("diff") or "")
    sections = _removed_sections(diff)
    lines, rewritten = ([], False) if sections else _removed_lines(diff)
    if not sections and not lines:
        return _short(h.clause)
    path = str(h.details.get("prompt_path") or (h.prompt.path if h.prompt else "") or "the prompt")
    label = "/".join(Path(path).parts[-2:]) if path != "the prompt" else path
    new = str(h.details.get("new_sha256") or "")[:12]
    when = f" in version {new}" if new else ""
    if not sections:
        verb = "changed" if rewritten else "dropped"
        return f"{label} {verb} the line '{_quote(lines[0])}'{when}"
    names = " and ".join(f"'{x}'" for x in sections[:3])
    return f"{label} dropped its {names} section{'s' if len(sections[:3]) > 1 else ''}{when}"


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


_MECHANISMS = ("ungrounded_answer", "tool_failure", "context_loss", "loop_stall",
               "truncated_tool_output", "forced_language", "prompt_instruction")
"""Failure modes that name an event in the thread (a tool result, dropped context, a loop, a cut
tool result, a language instruction, a prompt instruction followed)."""

_OWN_MODE: Mapping[str, str] = {"ungrounded": "ungrounded_answer", "tool_error": "tool_failure",
                                "context_loss": "context_loss", "stall": "loop_stall",
                                "tool_output_truncated": "truncated_tool_output",
                                "language_mismatch": "forced_language"}
"""The failure mode that is the direct reading of a signal kind."""

_Key = tuple[str, str]  # CellStat.key


def _pick(cell: CellStat, hyps: Sequence[Hypothesis]) -> Hypothesis:
    """The one cause of a cell: the mode its own signal names, else the most confident
    mechanism, else the first of the rest (coverage_gap, then unexplained)."""
    own = _OWN_MODE.get(cell.signal)
    # "The conversation stalls" without a repeated tool call only restates a stall signal; a
    # mechanism found before it (context dropped, a tool failing) is the better cause.
    mech = [h for h in hyps if h.failure_mode in _MECHANISMS
            and not (h.failure_mode == "loop_stall" and h.details.get("tool") is None)]
    for h in hyps:
        if h.failure_mode == own and (h in mech or len(mech) == 0):
            return h
    if mech:
        return max(mech, key=lambda h: h.confidence)  # first on ties: HYPOTHESES order
    return hyps[0]


def _first_turns(signals: Sequence[Signal]) -> dict[tuple[str, str], float]:
    """(thread id, kind) -> the earliest turn index of that kind (inf: not tied to a turn)."""
    out: dict[tuple[str, str], float] = {}
    for s in signals:
        at = float(s.turn_index) if s.turn_index is not None else math.inf
        key = (s.thread_id, s.kind)
        out[key] = min(out.get(key, math.inf), at)
    return out


def _preceded(x: CellStat, y: CellStat, first: Mapping[tuple[str, str], float]) -> float:
    """Share of ``x``'s affected sessions in which ``y``'s signal came at or before ``x``'s."""
    if not x.thread_ids:
        return 0.0
    hit = 0
    for tid in x.thread_ids:
        at_y = first.get((tid, y.signal))
        if at_y is not None and at_y <= first.get((tid, x.signal), math.inf):
            hit += 1
    return hit / len(x.thread_ids)


def _situation_excess(cell: CellStat, trigger: str, old_sha: str, new_sha: str,
                      intent_threads: Sequence[Thread], first: Mapping[tuple[str, str], float],
                      version_of: Mapping[str, str]) -> float:
    """Share of ``cell``'s affected sessions that a situation regression (``trigger``, prompt
    ``old_sha`` -> ``new_sha``) accounts for: within the cell's intent, the sessions in which
    ``trigger`` fired at or before the cell's signal on ``new_sha``, beyond what ``old_sha``'s
    rate among the intent's sessions in the situation predicts (0 when the intent has no session
    in the situation on one of the two versions: nothing to compare with)."""
    if not cell.thread_ids or trigger == cell.signal:
        return 0.0
    affected = set(cell.thread_ids)
    n = {old_sha: 0, new_sha: 0}  # the intent's sessions in the situation, per version
    a = {old_sha: 0, new_sha: 0}  # ... and of them, failed at or after the trigger
    for t in intent_threads:
        v = version_of.get(t.thread_id)
        at_x = first.get((t.thread_id, trigger))
        if v not in n or at_x is None:
            continue
        n[v] += 1
        if t.thread_id in affected and at_x <= first.get((t.thread_id, cell.signal), math.inf):
            a[v] += 1
    if n[old_sha] == 0 or n[new_sha] == 0:
        return 0.0
    excess = a[new_sha] - n[new_sha] * a[old_sha] / n[old_sha]
    return max(0.0, excess) / len(cell.thread_ids)


def _root_key(d: Diagnosis) -> tuple[str, ...]:
    """What a diagnosis' fix changes: two diagnoses with one key are one root cause in two places
    (the same tool answering ungrounded in three intents, one prompt change regressing two)."""
    mode = d.failure_mode
    if isinstance(d.details.get("root_cause"), str):  # the hypothesis names what its fix changes
        return (mode, str(d.details["root_cause"]))
    if mode == "regression":
        return (mode, str(d.details.get("old_sha256")), str(d.details.get("new_sha256")))
    if mode in ("ungrounded_answer", "tool_failure", "loop_stall"):
        return (mode, str(d.details.get("tool")))
    if mode == "context_loss":
        return (mode,)
    return (mode, d.intent_id or "", d.signal if mode == "unexplained" else "")


def _rank(diagnoses: list[Diagnosis]) -> list[Diagnosis]:
    """Explained before unexplained; within each, the first (highest-impact) diagnosis of each
    root cause before the repeats of a root cause already listed; then by impact."""
    by_impact = sorted(diagnoses, key=lambda d: (-d.impact, -d.confidence, d.q_value, d.id))
    seen: set[tuple[str, ...]] = set()
    repeat: dict[str, bool] = {}
    for d in by_impact:
        k = _root_key(d)
        repeat[d.id] = k in seen
        seen.add(k)
    return sorted(by_impact, key=lambda d: (d.failure_mode == "unexplained", repeat[d.id],
                                            -d.impact, -d.confidence, d.q_value, d.id))


def diagnose(
    threads: Sequence[Thread],
    signals: Sequence[Signal],
    intents: Sequence[Intent],
    assignments: Mapping[str, str | None],
    *,
    config: DiagnoseConfig | None = None,
    llm: DiagnosisWriter | None = None,
    population: Population | None = None,
) -> list[Diagnosis]:
    """Diagnose why intents fail: significant intent x signal cells, explained and ranked by impact.

    Steps (all deterministic):

    1. User-side signals on a thread's first turn (``opening_excluded_signals``) are set aside:
       the agent had not answered yet.
    2. Cells are tested (Fisher + Benjamini-Hochberg, :func:`cell_table`); each significant cell
       gets **one** cause (:func:`_pick`: the mode its own signal names, else the most confident
       mechanism, else ``coverage_gap``, else ``unexplained``).
    3. Every cell with enough sessions on two prompt versions is tested for a version jump,
       significant or not as a cell, and so is every situation ("after X, Y", stratified by
       intent; see the module docstring); the jumps that pass BH (one family) at
       ``regression_alpha`` become ``regression`` diagnoses: one per intent, and one per
       situation trigger X (``intent_id=None``, named "after X (all intents)",
       ``details["situation"] = X``). A cell with such a jump keeps no ``coverage_gap`` /
       ``unexplained`` cause of its own (the change explains it).
    4. A cell whose affected sessions mostly (``min_support``) had another explained cell's
       signal of the same intent at or before their own failure -- and not the other way round --
       is a consequence of it (users who get refused then get frustrated and leave): it joins
       that cell's diagnosis instead of getting its own. One intent, one diagnosis per cause.
       A ``coverage_gap`` / ``unexplained`` cause that no other cause explains joins a regressed
       situation instead, with its consequences, when the change added at least ``min_support``
       of its affected sessions in that situation (see "Cells a situation regression explains"
       in the module docstring): listed in ``details["attributed_cells"]`` of the situation's
       diagnosis, which keeps its tested numbers.
    5. One diagnosis per root cause across intents (``_merge.merge_root_causes``): diagnoses
       with the same mechanism (the same missing topic in the same prompt, the same tool outcome, the same prompt version pair, ...) merge into their strongest one,
       with the sessions of the union and a per-intent breakdown in ``details["intents"]``; an
       unexplained diagnosis whose agent refuses a topic a coverage gap names joins that gap,
       and one whose sessions mostly followed an explained cause joins it as a consequence.
    6. Ranking: explained before unexplained, a root cause's first diagnosis before its repeats
       in other intents (:func:`_root_key`), then impact. A regression's impact counts only the
       sessions the change added (``excess_sessions``: affected on the new version beyond the
       old version's rate).

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
        population: When ``threads`` is a sample of a larger store (see
            :func:`~loop_middleware.diagnose.diagnose_store`): the exact counts over every
            session. Mechanisms, tests and evidence come from the sample; each diagnosis's
            sessions affected, shares, rates, lift and Fisher p are the population's, its impact
            and the sessions a change added are scaled to it, and ``details["sample"]`` says so.

    Returns:
        One :class:`~loop_middleware.types.Diagnosis` per root cause (merged across intents and
        situations), in the order above. Empty when no cell and no version jump passes the
        false-discovery-rate control.
    """
    cfg = config if config is not None else DiagnoseConfig()
    if not isinstance(cfg, DiagnoseConfig):
        raise ConfigError(f"config must be a DiagnoseConfig, got {type(cfg).__name__}")
    first_turn = {t.thread_id: min((tt.index for tt in t.turns), default=0) for t in threads}
    signals = [s for s in signals
               if not (s.kind in cfg.opening_excluded_signals and s.turn_index is not None
                       and s.turn_index == first_turn.get(s.thread_id))]
    all_cells = cell_table(threads, signals, assignments, config=cfg)
    cells = significant_cells(all_cells, cfg)
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
    # Which of two prompt versions came first is decided once, on every session.
    shared["version_order"] = version_order(threads, shared.setdefault("main_prompt", {}))
    others_of: dict[str | None, list[Thread]] = {}

    def context(cell: CellStat) -> CellContext:
        if cell.intent_id not in others_of:
            in_ids = {t.thread_id for t in members.get(cell.intent_id, [])}
            others_of[cell.intent_id] = [t for t in threads if t.thread_id not in in_ids]
        return CellContext(cell=cell, intent=intents_by_id.get(cell.intent_id or ""),
                           intent_threads=members.get(cell.intent_id, []),
                           other_threads=others_of[cell.intent_id],
                           signals_by_thread=signals_by_thread, config=cfg, shared=shared)

    # 3. Version jumps, in every cell and every situation with enough sessions (one BH family).
    tests: list[tuple[CellStat, CellContext, dict[str, Any]]] = []
    for cell in all_cells:
        if cell.sessions_affected < cfg.min_sessions:
            continue
        ctx = context(cell)
        if (test := regression_test(ctx)) is not None:
            tests.append((cell, ctx, test))
    sit_tests = (situation_tests(threads, signals_by_thread, assignments, cfg, shared)
                 if cfg.regression_situations else [])
    regressions: dict[_Key, tuple[CellStat, Hypothesis]] = {}
    situations: dict[str, list[tuple[dict[str, Any], Hypothesis]]] = {}
    if tests or sit_tests:
        ps = [t["p_adjusted"] for _, _, t in tests] + [t["p_adjusted"] for t in sit_tests]
        qs = [float(min(1.0, q)) for q in multipletests(ps, method="fdr_bh")[1]]
        for (cell, ctx, test), q in zip(tests, qs[: len(tests)], strict=True):
            if (h := regression(ctx, test, q)) is not None:
                regressions[cell.key] = (cell, h)
        by_id = {t.thread_id: t for t in threads}
        for test, q in zip(sit_tests, qs[len(tests):], strict=True):
            if (h := situation_regression(test, by_id, signals_by_thread, cfg, q)) is not None:
                situations.setdefault(test["trigger"], []).append((test, h))
    if not cells and not regressions and not situations:
        return []

    # 2. One cause per significant cell.
    causes: dict[_Key, tuple[CellStat, Hypothesis]] = {}
    for cell in cells:  # in rank order
        h = _pick(cell, explain(context(cell), skip=("regression",)))
        if cell.key in regressions and h.failure_mode in ("coverage_gap", "unexplained"):
            continue
        causes[cell.key] = (cell, h)

    # 4. Consequences join the cause they follow.
    first = _first_turns(signals)
    order = {key: i for i, key in enumerate(causes)}
    parent: dict[_Key, _Key] = {}
    for xk, (x, _) in causes.items():
        best: tuple[float, int, _Key] | None = None
        for yk, (y, hy) in causes.items():
            if yk == xk or y.intent_id != x.intent_id or hy.failure_mode == "unexplained":
                continue
            pxy = _preceded(x, y, first)
            if pxy >= cfg.min_support and pxy > _preceded(y, x, first):
                cand = (-pxy, order[yk], yk)
                best = cand if best is None or cand < best else best
        if best is not None:
            parent[xk] = best[2]

    def root(key: _Key) -> _Key:
        seen = {key}
        while key in parent and parent[key] not in seen:
            key = parent[key]
            seen.add(key)
        return key

    # 4b. A root cause a regressed situation accounts for joins that regression, with its
    # consequences (an attribution of cells already significant, not a test: module docstring).
    attributed: dict[str, list[dict[str, Any]]] = {}
    gone: set[_Key] = set()
    if situations:
        version_of = {tid: pv.sha256 for tid, pv in shared["main_prompt"].items() if pv is not None}
        for key, (cell, h) in causes.items():
            if root(key) != key or h.failure_mode not in ("coverage_gap", "unexplained"):
                continue
            pick: tuple[float, str, str] | None = None  # (excess share, trigger, its failure kind)
            for trigger, sit_group in situations.items():
                for test, sh in sit_group:
                    share = _situation_excess(cell, trigger, str(sh.details["old_sha256"]),
                                              str(sh.details["new_sha256"]),
                                              members.get(cell.intent_id, []), first, version_of)
                    if share >= cfg.min_support and (pick is None or (-share, trigger) < (-pick[0], pick[1])):
                        pick = (share, trigger, str(test["signal"]))
            if pick is None:
                continue
            intent = intents_by_id.get(cell.intent_id or "")
            for k in sorted((k for k in causes if root(k) == key), key=lambda k: (k != key, order[k])):
                c = causes[k][0]
                attributed.setdefault(pick[1], []).append({
                    "intent_id": c.intent_id,
                    "intent_name": intent.name if intent is not None else (c.intent_id or UNASSIGNED),
                    "signal": c.signal, "instead_of": h.failure_mode,
                    "sessions_affected": c.sessions_affected, "q_value": c.q_value,
                    **({"excess_share": round(pick[0], 4), "situation_signal": pick[2]} if k == key
                       else {"follows": cell.signal,
                             "preceded_share": round(_preceded(c, cell, first), 4)})})
                gone.add(k)

    groups: dict[tuple[str | None, str], list[tuple[CellStat, Hypothesis]]] = {}
    # The primary cell of a group (its signal is what a fix is measured on): a cell whose own
    # signal names the group's mode (the context_loss cell of a context_loss diagnosis, not the
    # stall signal that fires at the same turn), then roots, then rank.
    for key in sorted(causes, key=lambda k: (_OWN_MODE.get(k[1]) != causes[root(k)][1].failure_mode,
                                             root(k) != k, order[k])):
        if key in gone:
            continue
        r = root(key)
        cell, h = causes[key]
        if r != key:
            h = Hypothesis(failure_mode=causes[r][1].failure_mode, clause=causes[r][1].clause,
                           confidence=h.confidence, evidence=h.evidence,
                           details={"follows": causes[r][0].signal,
                                    "preceded_share": round(_preceded(cell, causes[r][0], first), 4)})
        groups.setdefault((cell.intent_id, h.failure_mode), []).append((cell, h))
    reg_groups: dict[str | None, list[tuple[CellStat, Hypothesis]]] = {}
    for cell, h in sorted(regressions.values(),
                          key=lambda ch: (-ch[1].details["excess_sessions"] * ch[0].severity, ch[0].key)):
        reg_groups.setdefault(cell.intent_id, []).append((cell, h))

    out = [_build(key[0], group, intents_by_id, members, signals_by_thread, cfg,
                  population=population)
           for key, group in groups.items()]
    out += [_build(intent_id, group, intents_by_id, members, signals_by_thread, cfg, regression=True,
                   population=population)
            for intent_id, group in reg_groups.items()]
    for trigger, sit_group in sorted(situations.items()):
        sit_group.sort(key=lambda th: (-th[0]["excess_sessions"] * cfg.severity_of(th[0]["signal"]),
                                       th[0]["signal"]))
        out.append(_build_situation(trigger, sit_group, len(threads), signals_by_thread, cfg,
                                    attributed=attributed.get(trigger, []),
                                    population=population))
    # 5. One diagnosis per root cause across intents (see _merge), then the stored id lists cut.
    sizes: dict[str | None, int] = (dict(population.sessions) if population is not None
                                    else {k: len(v) for k, v in members.items()})
    names: dict[str | None, str] = {k: (intents_by_id[k].name if k in intents_by_id else k or UNASSIGNED)
                                    for k in members}
    names.update({i.id: i.name for i in intents})
    merge_ctx = MergeContext(
        affected={d.id: list(d.details.get("affected_thread_ids") or []) for d in out},
        threads={t.thread_id: t for t in threads}, first=_first_turns(signals),
        assignments=assignments, intent_names=names, intent_sizes=sizes,
        total=population.total if population is not None else len(threads), config=cfg)
    out = [d.model_copy(update={"details": {**d.details, "affected_thread_ids":
                                            list(d.details.get("affected_thread_ids") or [])[:100]}})
           for d in merge_root_causes(out, merge_ctx)]
    out = _rank(out)
    if llm is not None:
        by_id = {t.thread_id: t for t in threads}
        out = llm.write_all(out, by_id)
    return out


def _sample_note(population: Population) -> dict[str, Any]:
    return {"sessions": population.sample, "of": population.total,
            "counts": "exact, counted over every session"}


def _build(
    intent_id: str | None,
    group: list[tuple[CellStat, Hypothesis]],
    intents_by_id: Mapping[str, Intent],
    members: Mapping[str | None, list[Thread]],
    signals_by_thread: Mapping[str, list[Signal]],
    cfg: DiagnoseConfig,
    *,
    regression: bool = False,
    population: Population | None = None,
) -> Diagnosis:
    """Merge the cells of one (intent, failure mode) into one diagnosis with union numbers.

    For a ``regression`` group the q-value is the version-jump test's (BH across the cells
    tested) and the impact counts only the sessions the change added (the largest
    ``excess_sessions x severity`` of its cells), not every affected session: a cell that failed
    at 60% before the change and 85% after owes the change 25 points, not 85.
    """
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
    in_sample = a
    if population is not None:  # every session's counts, not the sample's
        a, b = population.affected(kinds, intent_id)
        n_in, total = max(population.sessions.get(intent_id, 0), a, 1), population.total
        n_out = total - n_in
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
    excess = 0.0
    if regression:
        q = max(float(h.details["q_value"]) for _, h in group)
        impact = max(float(h.details["excess_sessions"]) * c.severity for c, h in group)
        excess = max(float(h.details["excess_sessions"]) for _, h in group)
    if population is not None:
        # Severities come from the sampled sessions; counts from every session.
        impact *= population.scale if regression else (a / in_sample if in_sample else 0.0)
        excess *= population.scale

    prompt: PromptVersion | None = next((h.prompt for _, h in group if h.prompt is not None), None)
    evidence = _collect_evidence(*(h.evidence for _, h in group), limit=cfg.max_evidence)

    what = " and ".join(_SIGNAL_PHRASES.get(k, f"shows {k}") for k in
                        [primary_cell.signal, *[k for k in kinds if k != primary_cell.signal]])
    subject = f"'{name}' intent {what}"
    if regression:
        numbers = (f"{a} sessions ({_pct(a / total)} of sessions), about {excess:.0f} of them added "
                   f"by the change; {'/'.join(kinds)} rate {_pct(rate_in)} in the intent vs "
                   f"{_pct(rate_out)} elsewhere")
    else:
        numbers = (f"{a} sessions ({_pct(a / total)} of sessions); {'/'.join(kinds)} rate "
                   f"{_pct(rate_in)} in the intent vs {_pct(rate_out)} elsewhere "
                   f"(lift {lift:.1f}x, q={q:.2g})")
    if primary.failure_mode == "unexplained":
        summary = f"{subject}, cause not identified: {numbers}"
        headline = f"{name} {what}, cause not identified, {_pct(a / total)} of sessions"
    else:
        summary = f"{subject} because {primary.clause}: {numbers}"
        headline = f"{name} {what} because {_cause(primary)}, {_pct(a / total)} of sessions"

    details: dict[str, Any] = dict(primary.details)
    details["signals"] = kinds
    details["affected_thread_ids"] = affected  # cut to 100 after merging
    details["cells"] = [
        {"signal": c.signal, "sessions_affected": c.sessions_affected,
         "rate_in_intent": c.rate_in_intent, "rate_elsewhere": c.rate_elsewhere, "lift": c.lift,
         "p_value": c.p_value, "q_value": c.q_value, "impact": c.impact,
         "hypothesis_confidence": h.confidence}
        for c, h in group
    ]
    if len(group) > 1:
        details["by_signal"] = {c.signal: {"clause": h.clause, **h.details} for c, h in group[1:]}
    if population is not None:
        details["sample"] = _sample_note(population)
    return Diagnosis(
        id=diagnosis_id(intent_id, primary_cell.signal, primary.failure_mode,
                        prompt.sha256 if prompt else None),
        intent_id=intent_id, intent_name=name, signal=primary_cell.signal,
        failure_mode=primary.failure_mode, summary=summary, headline=_sentence(headline),
        sessions_affected=a, share_of_sessions=a / total, rate_in_intent=rate_in,
        rate_elsewhere=rate_out, lift=lift, p_value=p, q_value=q, impact=impact,
        confidence=max(h.confidence for _, h in group),
        prompt_sha256=prompt.sha256 if prompt else None,
        prompt_path=prompt.path if prompt else None,
        evidence=evidence, details=details,
    )


def _build_situation(
    trigger: str,
    group: list[tuple[dict[str, Any], Hypothesis]],
    total: int,
    signals_by_thread: Mapping[str, list[Signal]],
    cfg: DiagnoseConfig,
    *,
    attributed: Sequence[Mapping[str, Any]] = (),
    population: Population | None = None,
) -> Diagnosis:
    """One diagnosis for the failures that became more frequent after ``trigger`` with a prompt
    change (the :func:`~loop_middleware.diagnose._hypotheses.situation_tests` that passed BH).

    ``attributed``: the significant cells this regression explains (step 4 of :func:`diagnose`),
    listed in ``details["attributed_cells"]`` and named in the summary; they change none of the
    numbers, which stay those of the situation tests.

    A situation spans intents, so the diagnosis has ``intent_id=None`` and is named after the
    situation; ``details["situation"]`` is the trigger and ``details["by_intent"]`` the counts
    per intent. The numbers mirror an intent's: the rate "in the intent" is the failures' rate
    after the trigger, "elsewhere" their rate in sessions without the trigger; ``p_value`` is
    the version-jump test's (Bonferroni over version pairs) and ``q_value`` its BH q, the largest
    over the merged failure kinds; the impact counts only the sessions the change added.
    """
    primary_test, primary = group[0]
    kinds = [t["signal"] for t, _ in group]
    in_situation = set(primary_test["trigger_turns"])
    n_in = len(in_situation)
    affected = sorted({tid for t, _ in group for tid in t["affected_ids"]})
    elsewhere = {tid for tid, sigs in signals_by_thread.items()
                 if tid not in in_situation and any(s.kind in kinds for s in sigs)}
    n_out = total - n_in
    a, b = len(affected), len(elsewhere)
    rate_in, rate_out = a / n_in, (b / n_out if n_out else 0.0)
    lift = rate_in / max(rate_out, 0.5 / n_out) if n_out else 1.0
    q = max(float(h.details["q_value"]) for _, h in group)
    p = max(float(t["p_adjusted"]) for t, _ in group)
    excess = max(float(t["excess_sessions"]) for t, _ in group)
    impact = max(float(t["excess_sessions"]) * cfg.severity_of(t["signal"]) for t, _ in group)
    if population is not None:
        # A situation is a set of turns, not a column the database groups by: its counts come
        # from the sample and are scaled to every session (rates are the sample's).
        a, b, total = (round(x * population.scale) for x in (a, b, total))
        excess, impact = excess * population.scale, impact * population.scale
    evidence = _collect_evidence(*(h.evidence for _, h in group), limit=cfg.max_evidence)
    name = f"after {trigger} (all intents)"
    what = " and ".join(_SIGNAL_PHRASES.get(k, f"shows {k}") for k in kinds)
    summary = (f"'{name}' situation {what} because {primary.clause}: {a} sessions "
               f"({_pct(a / total)} of sessions), about {excess:.0f} of them added by the change; "
               f"{'/'.join(sorted(kinds))} after {trigger} {_pct(rate_in)} vs {_pct(rate_out)} in "
               f"sessions without {trigger}")
    headline = (f"After {trigger}, sessions {plural(what)} because {_cause(primary)}, "
                f"{_pct(a / total)} of sessions")
    roots = [c for c in attributed if "follows" not in c]
    if roots:
        summary += "; it also explains " + ", ".join(
            f"'{c['intent_name']}' intent {_SIGNAL_PHRASES.get(c['signal'], 'shows ' + c['signal'])} "
            f"({c['sessions_affected']} sessions, about {_pct(c['excess_share'])} of them added after "
            f"{trigger} by the change)" for c in roots)
    details: dict[str, Any] = dict(primary.details)
    details["signals"] = sorted(kinds)
    details["affected_thread_ids"] = affected  # cut to 100 after merging
    details["cells"] = [
        {"signal": t["signal"], "sessions_affected": len(t["affected_ids"]),
         "old_rate": h.details["old_rate"], "new_rate": h.details["new_rate"],
         "p_value": t["p_value"], "p_adjusted": t["p_adjusted"], "q_value": h.details["q_value"],
         "excess_sessions": t["excess_sessions"], "hypothesis_confidence": h.confidence}
        for t, h in group
    ]
    if len(group) > 1:
        details["by_signal"] = {t["signal"]: {"clause": h.clause, **h.details} for t, h in group[1:]}
    if attributed:
        details["attributed_cells"] = [dict(c) for c in attributed]
    if population is not None:
        details["sample"] = {**_sample_note(population), "counts": "estimated from the sample"}
    prompt = primary.prompt
    assert prompt is not None  # a situation regression always names the new version
    return Diagnosis(
        id=diagnosis_id(None, primary_test["signal"], "regression", prompt.sha256, situation=trigger),
        intent_id=None, intent_name=name, signal=primary_test["signal"], failure_mode="regression",
        summary=summary, headline=_sentence(headline), sessions_affected=a, share_of_sessions=a / total, rate_in_intent=rate_in,
        rate_elsewhere=rate_out, lift=lift, p_value=p, q_value=q, impact=impact,
        confidence=max(h.confidence for _, h in group),
        prompt_sha256=prompt.sha256, prompt_path=prompt.path, evidence=evidence, details=details,
    )
