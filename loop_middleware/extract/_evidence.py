"""Reading a thread and quoting it: the helpers every built-in detector shares.

A signal's evidence must be findable **verbatim** in the thread, so a reviewer can jump to the
spot: :func:`clip_quote` and :func:`_sentence` only ever cut windows out of the text, never add
ellipses or rewrite it. :func:`_signal` is the one place a built-in detector builds a
:class:`~loop_middleware.types.Signal` (clamped, rounded confidence).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..types import Message, Signal, Thread, ToolCall, Turn


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


def _ordered_tools(turn: Turn) -> list[ToolCall]:
    return sorted(turn.tool_calls, key=lambda t: t.seq)


def _jsonable_args(args: Any) -> Any:
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        return repr(args)
    return args
