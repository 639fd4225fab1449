"""Shared fakes for tests: the *host agent's* LLM (never what a test is testing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage


class FakeToolModel(GenericFakeChatModel):
    """langchain-core's GenericFakeChatModel that also accepts ``bind_tools`` (as agents need)."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> FakeToolModel:  # type: ignore[override]
        return self


def tool_call(name: str, args: dict[str, Any], call_id: str = "call-1") -> AIMessage:
    """An assistant message asking for one tool call."""
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}],
        usage_metadata={"input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
    )


def reply(text: str) -> AIMessage:
    """A final assistant reply with token usage."""
    return AIMessage(
        content=text, usage_metadata={"input_tokens": 30, "output_tokens": 7, "total_tokens": 37}
    )


def fake_model(*messages: AIMessage) -> FakeToolModel:
    """A host model that answers with ``messages`` in order."""
    return FakeToolModel(messages=iter(list(messages)))
