"""What an ingest adapter reads from one span's attributes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

SpanRole = Literal["llm", "tool", "agent"]


@dataclass
class LLMData:
    model: str | None = None
    provider: str | None = None
    input_messages: list[dict[str, Any]] = field(default_factory=list)
    output_messages: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class ToolData:
    name: str = "tool"
    arguments: Any = None
    result: str | None = None
    tool_call_id: str | None = None


class SpanAdapter(Protocol):
    """Reads one runtime's attribute conventions."""

    name: str

    def role(self, attrs: dict[str, Any]) -> SpanRole | None:
        """What the span is (an LLM call, a tool call, an agent/turn), or None if unknown."""

    def conversation_id(self, attrs: dict[str, Any]) -> str | None:
        """The conversation (thread) id on this span, if any."""

    def user_id(self, attrs: dict[str, Any]) -> str | None:
        """The end user's id on this span, if any."""

    def llm(self, attrs: dict[str, Any]) -> LLMData:
        """The LLM call's details."""

    def tool(self, attrs: dict[str, Any]) -> ToolData:
        """The tool call's details."""

    def io(self, attrs: dict[str, Any]) -> tuple[str | None, str | None]:
        """(input text, output text) of an agent/turn span."""


def msg(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    """A message dict in loop-middleware's shape."""
    roles = {"human": "user", "ai": "assistant", "model": "assistant", "developer": "system"}
    r = roles.get(str(role), str(role))
    if r not in ("system", "user", "assistant", "tool"):
        r = "other"
    text = content if isinstance(content, str) else ("" if content is None else json.dumps(content, ensure_ascii=False))
    return {"role": r, "content": text, "name": extra.get("name"), "tool_calls": extra.get("tool_calls") or [],
            "tool_call_id": extra.get("tool_call_id"), "id": None}


def as_int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def maybe_json(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v
