"""Detectors of what the agent's tools returned.

``tool_error``: a call failed, or its result reads like an error. ``ungrounded``: a retrieval
tool came back empty and the agent answered anyway. ``tool_output_truncated``: a result reached
the model cut short (a harness's "[truncated]" marker ends it); :func:`truncation_sizes` reads
what the marker says of the cut, which diagnosis uses to suggest a limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..types import Signal, Thread, ToolCall
from ._detection import DetectionContext
from ._evidence import _ends_with_question, _jsonable_args, _ordered_tools, _signal, clip_quote
from ._phrases import (
    _ADMITS_NOT_FOUND_RX,
    _EMPTY_RESULT_RX,
    _REFUSAL_RX,
    _TOOL_ERROR_CONFIDENCE,
    _TOOL_ERROR_RX,
    _may_be_tool_error,
)


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
