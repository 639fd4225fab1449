"""OpenAI-style message lists: one conversation per record.

A record is a bare list of messages, or an object::

    {"id": "conv-1",                      # or thread_id / conversation_id / session_id
     "created_at": "2025-03-01T09:00:00Z", # or timestamp / start_time / time (ISO or epoch)
     "user_id": "u-7", "metadata": {...},
     "messages": [
        {"role": "system", "content": "You are ..."},
        {"role": "user", "content": "Where is my order?", "timestamp": ...},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "track_order", "arguments": "{\"id\": \"A-7\"}"}}],
         "model": "gpt-4o", "usage": {"prompt_tokens": 812, "completion_tokens": 19}},
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "assistant", "content": "It shipped.", "feedback": "thumbs_down"}],
     "feedback": {"score": 0, "comment": "..."},   # or thumbs / score / rating / comment
     "outcome": "churned"}                         # or {"label": ..., "value": ...}, a list

Messages may also be LangChain message dicts; ``content`` may be a list of parts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from .._text import clean_text
from ..errors import IngestError
from ._import_model import Conversation, Step
from ._import_read import count, message, parse_time

__all__ = ["conversation", "looks_like", "message_like"]

_ID_KEYS = ("thread_id", "conversation_id", "id", "session_id")
_TIME_KEYS = ("created_at", "timestamp", "start_time", "started_at", "time", "createdAt",
              "create_time")
_USER_KEYS = ("user_id", "userId", "user", "customer_id")
_UP = {"up", "thumbs_up", "thumbsup", "positive", "good", "+1", "like", "\N{THUMBS UP SIGN}"}
_DOWN = {"down", "thumbs_down", "thumbsdown", "negative", "bad", "-1", "dislike",
         "\N{THUMBS DOWN SIGN}"}


def message_like(value: Any) -> bool:
    """A dict that is a chat message (a role, and content or tool calls)."""
    return isinstance(value, Mapping) and isinstance(value.get("role"), str) and (
        "content" in value or "tool_calls" in value or "function_call" in value)


def looks_like(record: Any) -> bool:
    """A bare list of messages, or an object with a ``messages`` list."""
    if isinstance(record, list):
        return bool(record) and all(message_like(m) for m in record)
    return isinstance(record, Mapping) and isinstance(record.get("messages"), list)


def _first(obj: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if obj.get(k) not in (None, ""):
            return k, obj[k]
    return None, None


def _ident(value: Any, where: str, fld: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise IngestError(f"{fld} must be a string or an integer, got {type(value).__name__}",
                          record=where, field=fld)
    return clean_text(str(value))


def _score(value: Any, where: str, fld: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise IngestError(f"a score must be a number, got {value!r:.40}", record=where, field=fld)


def feedback_items(value: Any, where: str, fld: str, *, kind: str = "feedback") -> list[dict[str, Any]]:
    """Feedback or outcomes in the forms people write them: a thumbs string or boolean, a
    number, ``{"score"/"value"/"rating", "thumbs", "label"/"key"/"name", "comment",
    "created_at", "turn"}``, or a list of those."""
    if value is None:
        return []
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in feedback_items(v, where, f"{fld}[{i}]", kind=kind)]
    if kind == "outcome":
        if isinstance(value, str):
            return [{"kind": "outcome", "label": clean_text(value)}] if value.strip() else []
        if not isinstance(value, Mapping):
            raise IngestError("an outcome must be a label or an object", record=where, field=fld)
        _, label = _first(value, ("label", "outcome", "name", "key"))
        if not isinstance(label, str) or not label.strip():
            raise IngestError("an outcome needs a label", record=where, field=f"{fld}.label")
        return [{"kind": "outcome", "label": clean_text(label),
                 "score": _score(value.get("value", value.get("score")), where, f"{fld}.value"),
                 "comment": _text(value.get("comment"), where, f"{fld}.comment"),
                 "created_at": _when(value, where, fld), "turn_index": _turn(value)}]
    if isinstance(value, (bool, int, float)):
        return [{"kind": "feedback", "score": _score(value, where, fld)}]
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _UP or low in _DOWN:
            up = low in _UP
            return [{"kind": "feedback", "score": 1.0 if up else 0.0,
                     "label": "thumbs_up" if up else "thumbs_down"}]
        return [{"kind": "feedback", "comment": clean_text(value)}] if value.strip() else []
    if not isinstance(value, Mapping):
        raise IngestError(f"feedback must be a thumbs, a score or an object, got {type(value).__name__}",
                          record=where, field=fld)
    item: dict[str, Any] = {"kind": "feedback"}
    thumbs = value.get("thumbs")
    if thumbs is not None:
        item = feedback_items(thumbs if isinstance(thumbs, (bool, str)) else str(thumbs),
                              where, f"{fld}.thumbs")[0]
    key, score = _first(value, ("score", "value", "rating"))
    if key is not None and not (key == "value" and isinstance(score, str)):
        item["score"] = _score(score, where, f"{fld}.{key}")
    _, label = _first(value, ("label", "key", "name"))
    if isinstance(value.get("value"), str):
        label = value["value"]  # a categorical value says more than the feedback's name
    if label is not None:
        item["label"] = _text(label, where, f"{fld}.label")
    item["comment"] = _text(value.get("comment", value.get("text")), where, f"{fld}.comment")
    item["created_at"] = _when(value, where, fld)
    item["turn_index"] = _turn(value)
    if item.get("score") is None and not item.get("label") and not item["comment"]:
        raise IngestError("feedback has no score, thumbs, label or comment", record=where, field=fld)
    return [item]


def _text(value: Any, where: str, fld: str) -> str | None:
    if value is None or isinstance(value, str):
        return None if value is None else clean_text(value)
    raise IngestError(f"must be text, got {type(value).__name__}", record=where, field=fld)


def _when(obj: Mapping[str, Any], where: str, fld: str) -> Any:
    key, v = _first(obj, _TIME_KEYS)
    return parse_time(v, where, f"{fld}.{key}") if key else None


def _turn(obj: Mapping[str, Any]) -> int | None:
    v = obj.get("turn_index", obj.get("turn"))
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _usage(m: Mapping[str, Any]) -> tuple[int | None, int | None]:
    u = m.get("usage") or m.get("usage_metadata")
    rm = m.get("response_metadata")
    if u is None and isinstance(rm, Mapping):
        u = rm.get("token_usage")
    if not isinstance(u, Mapping):
        return None, None
    return (count(u.get("prompt_tokens", u.get("input_tokens"))),
            count(u.get("completion_tokens", u.get("output_tokens"))))


def _step(raw: Any, i: int, where: str) -> Step:
    fld = f"messages[{i}]"
    msg = message(raw, where, fld)
    step = Step(msg=msg, loc=fld)
    if not isinstance(raw, Mapping):
        return step
    key, at = _first(raw, _TIME_KEYS)
    step.at = parse_time(at, where, f"{fld}.{key}") if key else None
    if msg["role"] == "assistant":
        step.model = raw["model"] if isinstance(raw.get("model"), str) else None
        step.input_tokens, step.output_tokens = _usage(raw)
        lat = raw.get("latency_ms")
        step.latency_ms = float(lat) if isinstance(lat, (int, float)) and not isinstance(lat, bool) \
            and math.isfinite(lat) and lat >= 0 else None
        step.finish_reason = raw["finish_reason"] if isinstance(raw.get("finish_reason"), str) else None
        step.error = _text(raw.get("error"), where, f"{fld}.error")
    elif msg["role"] == "tool":
        err = raw.get("error")
        if raw.get("status") == "error" or raw.get("is_error") is True:
            step.error = msg["content"] or (err if isinstance(err, str) else "error")
        elif isinstance(err, str) and err:
            step.error = clean_text(err)
    fb = feedback_items(raw.get("feedback"), where, f"{fld}.feedback")
    step.feedback = [{**f, "key": f"m{i}:{k}"} for k, f in enumerate(fb)]
    return step


def conversation(record: Any, where: str, *, prefix: str = "") -> Conversation:
    """One record as a :class:`Conversation`.

    Raises:
        IngestError: The record is not a conversation, or a field has the wrong type.
    """
    raw: Any
    if isinstance(record, list):
        obj: Mapping[str, Any] = {}
        raw = record
    elif isinstance(record, Mapping):
        obj, raw = record, record.get("messages")
        if not isinstance(raw, list):
            raise IngestError("'messages' must be a list of messages" if "messages" in record
                              else "not a conversation: no 'messages' list",
                              record=where, field="messages")
    else:
        raise IngestError(f"a conversation must be a list of messages or an object with "
                          f"'messages', got {type(record).__name__}", record=where)
    if not raw:
        raise IngestError("empty conversation: no messages", record=where, field="messages")
    key, ident = _first(obj, _ID_KEYS)
    if key is not None:
        thread_id = _ident(ident, where, key)
    else:
        # No id: the content's hash, so importing the same file again finds the same thread.
        blob = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        thread_id = "conv-" + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    tkey, t = _first(obj, _TIME_KEYS)
    ukey, user = _first(obj, _USER_KEYS)
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise IngestError("metadata must be an object", record=where, field="metadata")
    feedback: list[dict[str, Any]] = []
    for k in ("feedback", "thumbs"):
        feedback += feedback_items(obj.get(k), where, k)
    for k in ("score", "rating"):
        if obj.get(k) is not None:
            feedback += [{"kind": "feedback", "score": _score(obj[k], where, k),
                          "comment": _text(obj.get("comment"), where, "comment")}]
    if not any(k in obj for k in ("feedback", "thumbs", "score", "rating")) and obj.get("comment"):
        feedback += feedback_items(_text(obj["comment"], where, "comment"), where, "comment")
    for k in ("outcome", "outcomes"):
        feedback += feedback_items(obj.get(k), where, k, kind="outcome")
    return Conversation(
        thread_id=prefix + thread_id, record=where, fmt="openai",
        steps=[_step(m, i, where) for i, m in enumerate(raw)],
        user_id=_ident(user, where, ukey) if ukey else None,
        created_at=parse_time(t, where, tkey) if tkey else None,
        metadata=dict(meta or {}), feedback=feedback,
    )
