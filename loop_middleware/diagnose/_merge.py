"""One diagnosis per root cause: the per-intent diagnoses of one mechanism merge into one.

:func:`~loop_middleware.diagnose.diagnose` explains every significant intent x signal cell on
its own, so a root cause that several intents reach shows once per intent: the same empty
``search_kb`` answered with confidence in three intents, the prompt without a refund policy in
two refund-like intents, one prompt change that regressed a situation and two intents. One fix
removes all of them, so a team reads them as one item with a per-intent breakdown.

What is the same root cause (:func:`mechanism_key`): what a fix would change, read from the
hypothesis' own details, never from an intent's name:

==================  ==================================================================
failure mode        the same mechanism when ...
==================  ==================================================================
coverage_gap        the same prompt file (by file name: a prompt's versions may be recorded
                    from different folders) lacks the same topic (``details["topic"]``)
ungrounded_answer   the same prompt file answers after the same tool returned nothing
tool_failure        the same tool fails the same way (mostly errors / mostly empty)
loop_stall          the same tool is called over and over (a stall without tool: none)
context_loss        the harness drops context (one mechanism per agent)
regression          the same prompt file changed between the same two versions (the
                    same removed section, the diff being that of the version pair)
(any explained)     the same ``details["root_cause"]`` when the hypothesis names what its
                    fix changes (``"agent.yaml:max_tool_output_chars"``, a prompt section),
                    before the rows above
unexplained         never by key (nothing to compare)
==================  ==================================================================

Then two kinds of *unexplained* diagnosis join a cause instead of standing alone:

* **restatements by reply pattern**: in at least ``min_support`` of its affected sessions the
  agent said it cannot help with one topic (:func:`~loop_middleware._topics.refusal_topics`), the
  topic a coverage gap names: the same agent reply, in an intent whose own cell the coverage
  test did not explain (its key terms happen to be in the prompt, say). Unexplained diagnoses
  refusing one topic that no gap names merge with each other.
* **consequences**: at least ``min_support`` of its affected sessions are sessions of an explained
  root cause in which that cause's signal fired at or before its own (users who are refused, then
  leave). A signal that came *before* the cause's (a request for a human that a regression then
  refused) is not a consequence, so a situation's trigger never joins the situation.

The merged diagnosis is its strongest member's (highest impact, the *primary*): its id (so a
diagnosis the loop acted on keeps its id while other intents join it), failure mode, signal,
cause, prompt, rate in its intent, lift and p-value (the fix is measured on the primary's intent
and signal). Over the union: ``sessions_affected`` (each session once; with a
:class:`~loop_middleware.diagnose.Population`, each member's sampled sessions weigh what its
exact count says), ``share_of_sessions``, the evidence (round-robin over the members), the
signals; ``q_value`` is the largest of the members' (each passed its own test; the union was not
tested); ``impact`` adds what each member brings beyond the sessions already counted, except for
a regression, whose impact counts only sessions the change added and stays the largest member's.
A consequence adds neither sessions nor impact (those of its sessions that followed the cause
are the cause's already): it is listed in ``details["consequences"]`` and its signal in
``details["signals"]``. ``details["intents"]`` breaks the sessions down per intent (they sum to
``sessions_affected``), ``details["merged"]`` lists the members.
Every diagnosis gets ``details["intents"]``; one with a single member is otherwise unchanged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from .._topics import refusal_topics, topic_label
from ..privacy import MIN_GROUP_SIZE
from ..types import Diagnosis, Thread
from ._hypotheses import _collect_evidence
from ._stats import UNASSIGNED, DiagnoseConfig

__all__ = ["MergeContext", "mechanism_key", "merge_root_causes", "plural"]

_Key = tuple[str, ...]

_PLURAL_VERBS = {"gets": "get", "is": "are", "escalates": "escalate", "frustrates": "frustrate",
                 "hits": "hit", "stalls": "stall", "loses": "lose", "shows": "show"}
_VERB_RX = re.compile(r"\b(" + "|".join(_PLURAL_VERBS) + r")\b")


def plural(what: str) -> str:
    """The failure phrases of a headline (``"gets refusals and is abandoned"``) for a plural
    subject (``"get refusals and are abandoned"``)."""
    return _VERB_RX.sub(lambda m: _PLURAL_VERBS[m.group(1)], what)


@dataclass(frozen=True)
class MergeContext:
    """What merging needs besides the diagnoses (built by :func:`diagnose`)."""

    affected: Mapping[str, Sequence[str]]
    """Diagnosis id -> every affected (sampled) session, not only the first 100 of
    ``details["affected_thread_ids"]``."""
    threads: Mapping[str, Thread]
    first: Mapping[tuple[str, str], float]
    """``(thread id, signal kind) -> earliest turn`` (inf: not tied to a turn)."""
    assignments: Mapping[str, str | None]
    intent_names: Mapping[str | None, str]
    intent_sizes: Mapping[str | None, int]
    """Sessions per intent, over every session (the population's when sampling)."""
    total: int
    """Sessions in all (the denominator of ``share_of_sessions``)."""
    config: DiagnoseConfig


def _tool_outcome(details: Mapping[str, Any]) -> str:
    errors, empty = int(details.get("errors") or 0), int(details.get("empty_results") or 0)
    return "error" if errors >= empty else "empty"


def _file_name(path: object) -> str:
    return PurePath(str(path)).name if path else ""


def mechanism_key(d: Diagnosis) -> _Key | None:
    """What a diagnosis' fix changes, as a key two diagnoses of one root cause share (the table
    of the module docstring); ``None``: not comparable (unexplained, or a mechanism without an
    identity such as a stall that repeats no tool call)."""
    # A prompt file by its name: its versions may be recorded from different folders (a history
    # folder, a deployment), and what a fix edits is "the support prompt" either way.
    det, mode, path = d.details, d.failure_mode, _file_name(d.prompt_path)
    if mode != "unexplained" and isinstance(det.get("root_cause"), str) and det["root_cause"]:
        return (mode, "root_cause", str(det["root_cause"]))  # named by the hypothesis itself
    if mode == "regression":
        old, new = det.get("old_sha256"), det.get("new_sha256")
        if not old or not new:
            return None
        return (mode, _file_name(det.get("prompt_path")) or path, str(old), str(new))
    if mode == "coverage_gap":
        topic = topic_label(str(det.get("topic") or "").split())  # "api requests" = "api request"
        return (mode, path, topic) if topic else None
    if mode == "ungrounded_answer":
        return (mode, path, str(det.get("tool") or ""))
    if mode == "tool_failure":
        tool = det.get("tool")
        return (mode, str(tool), _tool_outcome(det)) if tool else None
    if mode == "loop_stall":
        tool = det.get("tool")
        return (mode, str(tool)) if tool else None
    if mode == "context_loss":
        return (mode,)
    return None


def _refused_topic(ids: Sequence[str], ctx: MergeContext) -> str | None:
    """The topic the agent says it cannot help with in at least ``min_support`` of the sessions
    ``ids`` (sessions not in the sample do not count), else ``None``."""
    said: Counter[str] = Counter()
    seen = 0
    for tid in ids:
        t = ctx.threads.get(tid)
        if t is None:
            continue
        seen += 1
        replies = [m.content for turn in t.turns for m in turn.messages
                   if m.role == "assistant" and m.content]
        said.update({label for words in refusal_topics(replies) if (label := topic_label(words))})
    if not said:
        return None
    label, n = min(said.items(), key=lambda kv: (-kv[1], kv[0]))
    return label if n >= ctx.config.min_support * seen else None


def _followed_share(u: Diagnosis, cause: Sequence[Diagnosis], cause_ids: set[str],
                    ctx: MergeContext) -> float:
    """Share of ``u``'s affected sessions that are sessions of ``cause`` (a group) in which one of
    its members' signals fired at or before ``u``'s signal."""
    ids = ctx.affected.get(u.id, ())
    if not ids:
        return 0.0
    kinds = {m.signal for m in cause}
    hit = 0
    for tid in ids:
        if tid not in cause_ids:
            continue
        at_u = ctx.first.get((tid, u.signal), math.inf)
        at_cause = min((ctx.first.get((tid, k), math.inf) for k in kinds), default=math.inf)
        if at_cause <= at_u and at_cause < math.inf:
            hit += 1
    return hit / len(ids)


@dataclass
class _Group:
    members: list[tuple[Diagnosis, str]]  # (diagnosis, role); the first is the primary
    shares: dict[str, float]  # consequence id -> share of its sessions that followed the cause


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _names(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    if len(names) > 3:
        return f"{', '.join(names[:3])} and {len(names) - 3} more intents"
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _largest_remainder(weights: Mapping[str | None, float]) -> dict[str | None, int]:
    """Integer counts that sum to the rounded total of ``weights`` (largest remainder)."""
    target = round(sum(weights.values()))
    floors = {k: math.floor(w + 1e-9) for k, w in weights.items()}
    left = target - sum(floors.values())
    order = sorted(weights, key=lambda k: (-(weights[k] - floors[k]), str(k)))
    for k in order[: max(0, left)]:
        floors[k] += 1
    return floors


def _breakdown(members: Sequence[Diagnosis], ctx: MergeContext
               ) -> tuple[list[str], dict[str | None, int], dict[str, float]]:
    """The union of the members' sessions (primary's first), the sessions per intent, and the
    share of each member's sessions not already counted by an earlier member."""
    union: list[str] = []
    claimed: set[str] = set()
    weights: dict[str | None, float] = {}
    new_share: dict[str, float] = {}
    for m in members:
        ids = list(ctx.affected.get(m.id, ()))
        if not ids:  # counted over every session, none in the sample: its own intent
            weights[m.intent_id] = weights.get(m.intent_id, 0.0) + m.sessions_affected
            new_share[m.id] = 1.0
            continue
        f = m.sessions_affected / len(ids)  # 1 unless the counts are the population's
        fresh = [tid for tid in ids if tid not in claimed]
        for tid in fresh:
            claimed.add(tid)
            union.append(tid)
            intent = ctx.assignments.get(tid, m.intent_id) if m.intent_id is None else m.intent_id
            weights[intent] = weights.get(intent, 0.0) + f
        new_share[m.id] = len(fresh) / len(ids)
    return union, _largest_remainder(weights), new_share


def _describe(d: Diagnosis) -> str:
    if d.intent_id is None and d.details.get("situation"):
        return f"'{d.intent_name}' situation"
    return f"'{d.intent_name}' intent"


def _build(group: _Group, ctx: MergeContext) -> Diagnosis:
    members = [d for d, _ in group.members]
    primary = members[0]
    # A consequence's sessions that followed the cause are the cause's already; the others are
    # not the cause's doing: its sessions are listed with it, not added to the cause's.
    roots = [d for d, role in group.members if role != "consequence"]
    union, per_intent, new_share = _breakdown(roots, ctx)
    sessions = sum(per_intent.values())
    share = sessions / ctx.total if ctx.total else 0.0
    intents = [
        {"intent_id": i, "intent_name": ctx.intent_names.get(i, i or UNASSIGNED), "sessions": n,
         "rate": round(n / ctx.intent_sizes[i], 4) if ctx.intent_sizes.get(i) else 0.0}
        for i, n in sorted(per_intent.items(), key=lambda kv: (-kv[1], str(kv[0])))
        if n > 0
    ]
    if len(members) == 1:
        return primary.model_copy(update={"details": {**primary.details, "intents": intents}})

    if primary.failure_mode == "regression":
        impact = max(d.impact for d in roots)
    else:
        impact = sum(d.impact * new_share[d.id] for d in roots)
    signals = sorted({str(k) for d in members for k in (d.details.get("signals") or [d.signal])})

    # Headline: the primary's, naming every intent of the root cause and the union's share.
    stem = primary.headline.rstrip(".")
    suffix = f", {_pct(primary.share_of_sessions)} of sessions"
    if stem.endswith(suffix):
        stem = stem[: -len(suffix)]
    named = list(dict.fromkeys(d.intent_name for d in roots if d.intent_id is not None))
    situation = primary.details.get("situation")
    lead = f"After {situation}, sessions"
    if primary.intent_id is not None and stem.lower().startswith(primary.intent_name.lower()):
        rest = stem[len(primary.intent_name):]
        if len(named) > 1:  # the failure phrases only, not the cause after them
            cut = min((i for i in (rest.find(" because "), rest.find(", cause not identified"))
                       if i >= 0), default=len(rest))
            rest = plural(rest[:cut]) + rest[cut:]
        stem = _names(named) + rest
    elif primary.intent_id is None and situation and stem.startswith(lead) and len(intents) > 1:
        stem = f"{lead} in {len(intents)} intents{stem[len(lead):]}"
    headline = f"{stem[:1].upper()}{stem[1:]}, {_pct(share)} of sessions."

    same = [d for d, role in group.members[1:] if role != "consequence"]
    after = [d for d, role in group.members if role == "consequence"]
    summary = primary.summary
    # Groups smaller than the privacy floor are counted, never named: a summary goes into reports
    # and PR bodies, where a group of a few threads could point at one customer.
    named_same = [d for d in same if d.sessions_affected >= MIN_GROUP_SIZE]
    small = [d for d in same if d.sessions_affected < MIN_GROUP_SIZE]
    if named_same:
        summary += "; the same root cause in " + ", ".join(
            f"{_describe(d)} ({d.sessions_affected} sessions, {d.signal}"
            + (f" rate {_pct(d.rate_in_intent)}" if d.intent_id is not None else "") + ")"
            for d in named_same)
    if small:
        summary += (f"{' and' if named_same else '; the same root cause in'} {len(small)} smaller "
                    f"group{'s' if len(small) > 1 else ''} "
                    f"({sum(d.sessions_affected for d in small)} sessions)")
    if after:
        summary += "; it also explains " + ", ".join(
            f"{_describe(d)} {d.signal} ({d.sessions_affected} sessions, "
            f"{_pct(group.shares[d.id])} of them after it)" for d in after)
    summary += f"; {sessions} sessions in all ({_pct(share)} of sessions)"

    details: dict[str, Any] = dict(primary.details)
    details.update(
        signals=signals, affected_thread_ids=union, intents=intents,
        intent_ids=[e["intent_id"] for e in intents],
        merged=[{"id": d.id, "role": "primary" if d is primary else role,
                 "intent_id": d.intent_id, "intent_name": d.intent_name, "signal": d.signal,
                 "failure_mode": d.failure_mode,
                 "signals": list(d.details.get("signals") or [d.signal]),
                 "sessions_affected": d.sessions_affected,
                 "rate_in_intent": d.rate_in_intent, "q_value": d.q_value, "impact": d.impact,
                 **({"followed_share": round(group.shares[d.id], 4)} if role == "consequence"
                    else {}),
                 "headline": d.headline}
                for d, role in group.members],
        merged_ids=[d.id for d in members[1:]],
    )
    if after:
        details["consequences"] = [
            {"id": d.id, "intent_id": d.intent_id, "intent_name": d.intent_name,
             "signal": d.signal, "sessions_affected": d.sessions_affected,
             "followed_share": round(group.shares[d.id], 4)} for d in after]
    return primary.model_copy(update={
        "summary": summary, "headline": headline, "sessions_affected": sessions,
        "share_of_sessions": share, "q_value": max(d.q_value for d in members), "impact": impact,
        "confidence": max(d.confidence for d in roots),
        "evidence": _collect_evidence(*(d.evidence for d in members),
                                      limit=ctx.config.max_evidence),
        "details": details,
    })


def _strength(d: Diagnosis) -> tuple[float, float, float, str]:
    return (-d.impact, -d.confidence, d.q_value, d.id)


def merge_root_causes(diagnoses: Sequence[Diagnosis], ctx: MergeContext) -> list[Diagnosis]:
    """One diagnosis per root cause (see the module docstring); the order is not the ranking
    (:func:`diagnose` ranks the result)."""
    by_key: dict[_Key, list[Diagnosis]] = {}
    loose: list[Diagnosis] = []  # no mechanism key
    for d in sorted(diagnoses, key=_strength):
        k = mechanism_key(d)
        if k is None:
            loose.append(d)
        else:
            by_key.setdefault(k, []).append(d)
    groups: dict[_Key, _Group] = {k: _Group([(d, "root") for d in ds], {})
                                  for k, ds in by_key.items()}

    # Restatements: an unexplained diagnosis whose agent refuses a topic a coverage gap names
    # (the gap of its own prompt file first), or that other unexplained ones refuse too.
    gaps: dict[str, list[_Key]] = {}
    for k in groups:
        if k[0] == "coverage_gap":
            gaps.setdefault(k[2], []).append(k)
    rest: list[Diagnosis] = []
    for d in loose:
        topic = _refused_topic(ctx.affected.get(d.id, ()), ctx) if d.failure_mode == "unexplained" else None
        if topic is None:
            rest.append(d)
            continue
        cands = sorted(gaps.get(topic, []), key=lambda k: (k[1] != _file_name(d.prompt_path), k))
        if cands:
            groups[cands[0]].members.append((d, "restatement"))
        else:
            key = ("unexplained", "refuses", topic)
            groups.setdefault(key, _Group([], {})).members.append((d, "root"))

    # Consequences: an unexplained diagnosis whose sessions are mostly a root cause's, after it.
    union_of = {k: {tid for m, _ in g.members for tid in ctx.affected.get(m.id, ())}
                for k, g in groups.items()}
    left: list[Diagnosis] = []
    for d in rest:
        best: tuple[float, tuple[float, float, float, str], _Key] | None = None
        if d.failure_mode == "unexplained":
            for k, g in groups.items():
                if k[0] == "unexplained":
                    continue
                causes = [m for m, role in g.members if role != "consequence"]
                share = _followed_share(d, causes, union_of[k], ctx)
                if share >= ctx.config.min_support and share > 0:
                    cand = (-share, _strength(causes[0]), k)
                    best = cand if best is None or cand[:2] < best[:2] else best
        if best is None:
            left.append(d)
            continue
        groups[best[2]].members.append((d, "consequence"))
        groups[best[2]].shares[d.id] = -best[0]

    out = [_build(g, ctx) for _, g in sorted(groups.items(), key=lambda kg: _strength(kg[1].members[0][0]))]
    out += [_build(_Group([(d, "root")], {}), ctx) for d in left]
    return out
