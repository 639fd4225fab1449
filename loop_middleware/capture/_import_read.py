"""Readers shared by the import formats: timestamps, counts, tool arguments, and messages in
every shape an export writes them (OpenAI dicts, LangChain dicts and serialized messages,
``(role, text)`` pairs), made into loop-middleware's message dicts. Every reader raises
:class:`~loop_middleware.errors.IngestError` naming the record and field it could not read.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .._text import clean_text
from ..errors import IngestError
from ._messages import jsonable, text_of

__all__ = [
    "RECORD_ERRORS",
    "count",
    "input_messages",
    "message",
    "messages",
    "note",
    "output_messages",
    "parse_arguments",
    "parse_time",
    "result_text",
    "say",
    "trailing_user",
]

RECORD_ERRORS = (IngestError, TypeError, ValueError, KeyError, AttributeError, IndexError,
                 OverflowError, RecursionError)
"""What reading one malformed record may raise: it is skipped with its message, never fatal."""


def note(message: str, where: str, fld: str | None = None) -> str:
    """A report line about one record, worded like :class:`IngestError` (record, field)."""
    return str(IngestError(message, record=where, field=fld))


def say(exc: BaseException, where: str) -> str:
    """The message of a record error, naming the record also when the error did not."""
    if isinstance(exc, IngestError):
        return str(exc)
    return note(f"malformed record ({type(exc).__name__}: {exc})", where)


# --- small readers --------------------------------------------------------------------------

_MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: Any, where: str, name: str) -> datetime | None:
    """A timestamp from ISO 8601 text or epoch seconds / ms / µs / ns (told apart by size);
    naive times are UTC.

    Raises:
        IngestError: The value is not a timestamp (naming ``where`` and ``name``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
            except ValueError:
                raise IngestError(f"{name} {value[:60]!r} is not an ISO 8601 timestamp",
                                  record=where, field=name) from None
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise IngestError(f"{name} must be a timestamp (ISO 8601 text or epoch number), got "
                          f"{type(value).__name__}", record=where, field=name)
    seconds = float(value)
    # Epoch seconds, or ms / µs / ns (seconds that large would be after the year 5000).
    for limit, scale in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
        if abs(seconds) >= limit:
            seconds /= scale
            break
    try:
        return _MIN_TS + timedelta(seconds=seconds)
    except OverflowError:
        raise IngestError(f"{name} {value!r} is out of range", record=where, field=name) from None


def count(value: Any) -> int | None:
    """A token count, or None when the value is not a plausible non-negative integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < 2**63 else None


def parse_arguments(raw: Any) -> Any:
    """Tool arguments as the model gave them: JSON text decoded (and the Python ``repr`` of a
    dict that some tracers write), anything else as it is."""
    if not isinstance(raw, str):
        return jsonable(raw)
    text = raw.strip()
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)  # literals only: never runs code
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return raw
            return jsonable(value)
    return raw


def result_text(value: Any) -> str:
    """A tool result as text: a message's content, a string, or the JSON of anything else."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        if "content" in value and ("tool_call_id" in value or value.get("type") == "tool"):
            return text_of(value.get("content")) if not isinstance(value.get("content"), Mapping) \
                else json.dumps(jsonable(value["content"]), ensure_ascii=False)
        kwargs = value.get("kwargs")
        if value.get("lc") == 1 and isinstance(kwargs, Mapping) and "content" in kwargs:
            return result_text({**kwargs, "type": "tool"})
    return clean_text(json.dumps(jsonable(value), ensure_ascii=False))


# --- messages -------------------------------------------------------------------------------

_ROLES = {
    "user": "user", "human": "user", "humanmessage": "user", "humanmessagechunk": "user",
    "assistant": "assistant", "ai": "assistant", "aimessage": "assistant",
    "aimessagechunk": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system", "developer": "system", "systemmessage": "system",
    "tool": "tool", "function": "tool", "toolmessage": "tool", "functionmessage": "tool",
    "toolmessagechunk": "tool",
}


def _role(raw: Mapping[str, Any], where: str, fld: str) -> str:
    value = raw.get("role", raw.get("type"))
    if not isinstance(value, str) or not value:
        raise IngestError("message has no 'role'", record=where, field=f"{fld}.role")
    role = _ROLES.get(value.lower())
    if role is None:
        raise IngestError(f"role {value[:40]!r} is not one of system, user, assistant, tool",
                          record=where, field=f"{fld}.role")
    return role


def _content(raw: Any, role: str, where: str, fld: str) -> str:
    if raw is None or isinstance(raw, str):
        return text_of(raw)
    if isinstance(raw, list):
        if all(isinstance(p, (str, Mapping)) for p in raw):
            return text_of(raw)
    elif isinstance(raw, Mapping) and role == "tool":
        return result_text(raw)
    elif isinstance(raw, Mapping) and isinstance(raw.get("text"), str):
        return text_of([raw])
    raise IngestError(f"content must be text or a list of content parts, got {type(raw).__name__}",
                      record=where, field=f"{fld}.content")


def _tool_calls(raw: Mapping[str, Any], where: str, fld: str) -> list[dict[str, Any]]:
    calls = raw.get("tool_calls")
    out: list[dict[str, Any]] = []
    if calls is not None:
        if not isinstance(calls, list):
            raise IngestError("tool_calls must be a list", record=where, field=f"{fld}.tool_calls")
        for i, c in enumerate(calls):
            cf = f"{fld}.tool_calls[{i}]"
            if not isinstance(c, Mapping):
                raise IngestError("a tool call must be an object", record=where, field=cf)
            fn = c.get("function")
            if isinstance(fn, Mapping):  # OpenAI: {"id", "type": "function", "function": {...}}
                name, args = fn.get("name"), parse_arguments(fn.get("arguments"))
                nf = f"{cf}.function.name"
            else:  # LangChain {"name", "args", "id"}; Anthropic tool_use {"name", "input", "id"}
                name = c.get("name")
                args = parse_arguments(c["args"] if "args" in c else c.get("input"))
                nf = f"{cf}.name"
            if not isinstance(name, str) or not name:
                raise IngestError("tool call without a name", record=where, field=nf)
            cid = c.get("id")
            out.append({"id": None if cid is None else str(cid), "name": name, "args": args})
    fc = raw.get("function_call")  # the OpenAI functions API, before tool_calls
    if isinstance(fc, Mapping) and isinstance(fc.get("name"), str):
        out.append({"id": None, "name": fc["name"], "args": parse_arguments(fc.get("arguments"))})
    return out


def message(raw: Any, where: str, fld: str) -> dict[str, Any]:
    """One message in loop-middleware's shape, from an OpenAI-style dict, a LangChain message
    dict (``{"type": "human", ...}``, ``messages_to_dict``'s ``{"type", "data"}``, or the
    serialized ``{"lc": 1, "type": "constructor", ...}`` form), a ``(role, text)`` pair, or a
    bare string (a user message, as LangChain reads it).

    Raises:
        IngestError: Not a message, or a field of the wrong type (naming ``fld``).
    """
    if isinstance(raw, str):
        return {"role": "user", "content": clean_text(raw), "name": None, "tool_calls": [],
                "tool_call_id": None, "id": None}
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and isinstance(raw[0], str):
        return message({"role": raw[0], "content": raw[1]}, where, fld)
    if not isinstance(raw, Mapping):
        raise IngestError(f"a message must be an object, got {type(raw).__name__}",
                          record=where, field=fld)
    if raw.get("lc") == 1 and isinstance(raw.get("kwargs"), Mapping):
        ident = raw.get("id")
        cls = ident[-1] if isinstance(ident, list) and ident and isinstance(ident[-1], str) else ""
        kwargs = dict(raw["kwargs"])
        kwargs.setdefault("type", cls)
        if cls.lower().startswith("chatmessage"):
            kwargs["type"] = kwargs.get("role", "")
        return message(kwargs, where, fld)
    if "data" in raw and isinstance(raw["data"], Mapping) and "role" not in raw:
        return message({**raw["data"], "type": raw.get("type") or raw["data"].get("type")}, where, fld)
    role = _role(raw, where, fld)
    if role == "system" and raw.get("type") == "chat":
        role = _role({"role": raw.get("role")}, where, fld)
    name, cid, mid = raw.get("name"), raw.get("tool_call_id"), raw.get("id")
    for key, v in (("name", name), ("tool_call_id", cid)):
        if v is not None and not isinstance(v, str):
            raise IngestError(f"{key} must be a string", record=where, field=f"{fld}.{key}")
    return {
        "role": role,
        "content": _content(raw.get("content"), role, where, fld),
        "name": name,
        "tool_calls": _tool_calls(raw, where, fld) if role == "assistant" else [],
        "tool_call_id": cid,
        "id": None if mid is None or isinstance(mid, (list, Mapping)) else str(mid),
    }


def messages(raw: Any, where: str, fld: str) -> list[dict[str, Any]]:
    """A message list (a list, a batch ``[[...]]`` as chat-model tracers write it, one message,
    or ``{"messages": [...]}``); tool definitions some tracers append as ``tool`` messages
    without a call id are dropped."""
    if isinstance(raw, Mapping) and "messages" in raw and "role" not in raw:
        raw = raw["messages"]
    if raw is None:
        return []
    if not isinstance(raw, list):
        return [message(raw, where, fld)]
    if len(raw) == 1 and isinstance(raw[0], list):  # one batch
        raw, fld = raw[0], f"{fld}[0]"
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, Mapping) and m.get("role") == "tool" and not m.get("tool_call_id") \
                and isinstance(m.get("content"), Mapping):
            continue  # Langfuse's LangChain handler lists the tool *schemas* this way
        out.append(message(m, where, f"{fld}[{i}]"))
    return out


def trailing_user(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user messages at the end of a list: what a turn's input adds to the history."""
    tail: list[dict[str, Any]] = []
    for m in reversed(msgs):
        if m["role"] == "user":
            tail.append(m)
        elif tail or m["role"] != "system":
            break
    return list(reversed(tail))



# --- a turn's input and output, from a root span's free-form input/output ------------------

_IN_KEYS = ("input", "question", "query", "user_input", "prompt", "text", "message")
_OUT_KEYS = ("output", "answer", "text", "result", "response", "content", "message")


def _after_last_user(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i]["role"] == "user":
            return msgs[i + 1 :]
    return msgs


def input_messages(value: Any, where: str, fld: str) -> list[dict[str, Any]]:
    """The user's new message(s) in a trace's input: the trailing user messages of a message
    list, or the text under ``input`` / ``question`` / ``query`` / ... (like live capture)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [message(value, where, fld)]
    if isinstance(value, list):
        return trailing_user(messages(value, where, fld))
    if isinstance(value, Mapping):
        if "messages" in value or "role" in value:
            return trailing_user(messages(value, where, fld))
        for key in _IN_KEYS:
            v = value.get(key)
            if isinstance(v, str):
                return [message(v, where, f"{fld}.{key}")]
            if isinstance(v, (list, Mapping)):
                return input_messages(v, where, f"{fld}.{key}")
    return []


def output_messages(value: Any, where: str, fld: str) -> list[dict[str, Any]]:
    """The agent's messages in a trace's output: after the last user message of a message
    list (a LangGraph state), or one assistant message from the text under ``output`` / ..."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{**message(value, where, fld), "role": "assistant"}]
    if isinstance(value, list):
        return _after_last_user(messages(value, where, fld))
    if isinstance(value, Mapping):
        if "messages" in value or "role" in value or value.get("lc") == 1:
            return _after_last_user(messages(value, where, fld))
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            return [message(choices[0].get("message") or {}, where, f"{fld}.choices[0].message")]
        for key in _OUT_KEYS:
            if value.get(key) is not None:
                return output_messages(value[key], where, f"{fld}.{key}")
    return []
