"""Detectors of what the people in the conversation say and do.

The user side: ``frustration`` (rephrasing, swearing, shouting, saying so), ``escalation``
(asking for a human, to cancel, to complain), ``abandonment`` (the thread ends right after a
failure), ``negative_feedback`` (thumbs-down, bad outcomes). The agent side: ``refusal`` (it
refuses or deflects) and ``self_report`` (it reported its own failure through the
``report_problem`` tool). :func:`went_well` is the positive counterpart diagnosis compares against.
"""

from __future__ import annotations

import difflib
import re

from ..types import SELF_REPORT_TOOL, Feedback, Signal, Thread
from ._detection import DetectionContext
from ._evidence import (
    _assistant_messages,
    _ends_with_question,
    _ordered_tools,
    _sentence,
    _signal,
    _user_messages,
    clip_quote,
)
from ._language import _LATIN_WORD
from ._phrases import (
    _AGENT_ERROR_RX,
    _COURTESY_QUESTION_RX,
    _ESCALATION_CONFIDENCE,
    _ESCALATION_RX,
    _FRUSTRATION_CONFIDENCE,
    _FRUSTRATION_RX,
    _GIVE_UP_RX,
    _NEGATIVE_COMMENT_RX,
    _NEGATIVE_LABELS,
    _NEGATIVE_OUTCOMES,
    _NOT_RESOLVED_RX,
    _POSITIVE_OUTCOMES,
    _REFUSAL_CONFIDENCE,
    _REFUSAL_RX,
    _RESOLVED_RX,
)

_WORD = re.compile(r"\w+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


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
