"""Turn whatever the host passes as messages into plain, JSON-safe dicts.

Hosts pass LangChain ``BaseMessage`` objects, OpenAI-style dicts, ``(role, content)`` tuples or
bare strings; content may be a list of parts. Conversion never raises: anything unexpected is
kept as its ``repr`` so nothing is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.messages import BaseMessage

from .._text import clean_text as clean_text

_ROLE_BY_TYPE = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "AIMessageChunk": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


def text_of(content: Any) -> str:
    """The text of a message content (a string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif part.get("type") not in (None, "text"):
                    out.append(f"[{part.get('type')}]")
        return clean_text("".join(out))
    return clean_text(str(content))


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable copy of ``value`` (deep structures are cut at depth 50)."""
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth > 50:
        return repr(value)[:1000]
    if isinstance(value, Mapping):
        return {clean_text(str(k)): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "replace"))
    if isinstance(value, BaseMessage):
        return message_dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), _depth + 1)
        except Exception:  # noqa: BLE001 - a broken model_dump must not lose the value
            pass
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _tool_calls(msg: Any) -> list[dict[str, Any]]:
    calls = getattr(msg, "tool_calls", None) or []
    out = []
    for c in calls:
        if isinstance(c, Mapping):
            out.append({"id": c.get("id"), "name": c.get("name"), "args": jsonable(c.get("args"))})
    return out


def message_dict(msg: Any) -> dict[str, Any]:
    """One message as ``{"role", "content", "name", "tool_calls", "tool_call_id", "id"}``."""
    if isinstance(msg, BaseMessage):
        role = _ROLE_BY_TYPE.get(msg.type, "other")
        if msg.type == "chat":
            role = _ROLE_BY_TYPE.get(str(getattr(msg, "role", "")), "other")
        return {
            "role": role,
            "content": text_of(msg.content),
            "name": msg.name,
            "tool_calls": _tool_calls(msg),
            "tool_call_id": getattr(msg, "tool_call_id", None),
            "id": msg.id,
        }
    if isinstance(msg, Mapping):
        role = _ROLE_BY_TYPE.get(str(msg.get("role") or msg.get("type") or ""), "other")
        return {
            "role": role,
            "content": text_of(msg.get("content")),
            "name": msg.get("name"),
            "tool_calls": jsonable(msg.get("tool_calls") or []),
            "tool_call_id": msg.get("tool_call_id"),
            "id": msg.get("id"),
        }
    if isinstance(msg, tuple) and len(msg) == 2:
        return {"role": _ROLE_BY_TYPE.get(str(msg[0]), "other"), "content": text_of(msg[1]),
                "name": None, "tool_calls": [], "tool_call_id": None, "id": None}
    if isinstance(msg, str):
        return {"role": "user", "content": msg, "name": None, "tool_calls": [],
                "tool_call_id": None, "id": None}
    return {"role": "other", "content": repr(msg), "name": None, "tool_calls": [],
            "tool_call_id": None, "id": None}


def messages_list(messages: Any) -> list[dict[str, Any]]:
    """A list of message dicts from a message, a list of them, or a nested list (batches)."""
    if messages is None:
        return []
    if isinstance(messages, (str, BaseMessage, Mapping)) or (
        isinstance(messages, tuple) and len(messages) == 2 and isinstance(messages[0], str)
    ):
        return [message_dict(messages)]
    if isinstance(messages, Iterable):
        out: list[dict[str, Any]] = []
        for m in messages:
            if isinstance(m, list):  # chat model callbacks pass a batch: list[list[BaseMessage]]
                out.extend(message_dict(x) for x in m)
            else:
                out.append(message_dict(m))
        return out
    return [message_dict(messages)]


def user_messages_from_inputs(inputs: Any) -> list[dict[str, Any]]:
    """The user's new message(s) in a graph/chain input.

    LangGraph agents get ``{"messages": [...]}`` (with a checkpointer, only the new ones);
    chains may get a string or ``{"input": "..."}``. From a message list we keep the trailing
    user messages, which is what the turn is answering.
    """
    if inputs is None:
        return []
    if isinstance(inputs, str):
        return [message_dict(inputs)]
    if isinstance(inputs, Mapping):
        if "messages" in inputs:
            msgs = messages_list(inputs["messages"])
            tail: list[dict[str, Any]] = []
            for m in reversed(msgs):
                if m["role"] == "user":
                    tail.append(m)
                elif tail:
                    break
            return list(reversed(tail))
        for key in ("input", "question", "query", "user_input"):
            if isinstance(inputs.get(key), str):
                return [message_dict(inputs[key])]
        return []
    if isinstance(inputs, (list, tuple)):
        return user_messages_from_inputs({"messages": inputs})
    return []


# --- what a run produced ---------------------------------------------------------------------


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "name": None, "tool_calls": [],
            "tool_call_id": None, "id": None}


def output_messages(outputs: Any) -> list[dict[str, Any]]:
    """The messages a turn's top-level run produced: its reply.

    A LangGraph state's ``messages`` holds the whole conversation with a checkpointer, so only
    the trailing messages after the last user message are the reply; a chain's ``output``/
    ``answer``/... string, a bare string, or messages are taken as they are.
    """
    if outputs is None:
        return []
    if isinstance(outputs, Mapping) and "messages" in outputs:
        msgs = messages_list(outputs["messages"])
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i]["role"] == "user":
                return msgs[i + 1 :]
        return msgs[-1:]
    if isinstance(outputs, Mapping):
        for key in ("output", "answer", "text", "result", "response"):
            value = outputs.get(key)
            if isinstance(value, str):
                return [_assistant(clean_text(value))]
            if isinstance(value, BaseMessage):
                return [message_dict(value)]
        return []
    if isinstance(outputs, str):
        return [_assistant(clean_text(outputs))]
    try:
        return [m for m in messages_list(outputs) if m["role"] != "other"]
    except Exception:  # noqa: BLE001 - an odd output never loses the turn
        return []


def llm_output(out: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(messages, first generation_info, llm_output) of a chat model's result."""
    messages: list[Any] = []
    gen_info: dict[str, Any] = {}
    llm_out: dict[str, Any] = {}
    generations = getattr(out, "generations", None)
    if generations is not None:  # LLMResult
        llm_out = getattr(out, "llm_output", None) or {}
        for batch in generations:
            for g in batch:
                msg = getattr(g, "message", None)
                messages.append(msg if msg is not None else {"role": "assistant", "content": g.text})
                gen_info = gen_info or (g.generation_info or {})
    elif isinstance(out, list):
        messages = out
    elif out is not None:
        messages = [out]
    return messages, gen_info, llm_out


def tool_call_ids(out: Any) -> list[str]:
    """The ids of the tool calls a chat model's result asks for, in the message's order."""
    ids: list[str] = []
    for m in llm_output(out)[0]:
        for c in getattr(m, "tool_calls", None) or (m.get("tool_calls") if isinstance(m, Mapping) else None) or []:
            cid = c.get("id") if isinstance(c, Mapping) else None
            if isinstance(cid, str) and cid:
                ids.append(cid)
    return ids


def user_text_inputs(inputs: Any) -> list[dict[str, Any]]:
    """The user's message(s) in a top-level input, with a last resort for custom input keys:
    a mapping holding exactly one string value is that string."""
    found = user_messages_from_inputs(inputs)
    if found or not isinstance(inputs, Mapping) or "messages" in inputs:
        return found
    strings = [v for v in inputs.values() if isinstance(v, str)]
    return [message_dict(strings[0])] if len(strings) == 1 else []
