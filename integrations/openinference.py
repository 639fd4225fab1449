"""OpenInference conventions (Arize Phoenix): ``openinference.span.kind``, ``llm.*``, ``session.id``."""

from __future__ import annotations

from typing import Any

from ._base import LLMData, SpanRole, ToolData, as_int, maybe_json, msg

_KINDS: dict[str, SpanRole] = {"LLM": "llm", "TOOL": "tool", "AGENT": "agent", "CHAIN": "agent"}


def _messages(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    out = []
    i = 0
    while f"{prefix}.{i}.message.role" in attrs or f"{prefix}.{i}.message.content" in attrs:
        base = f"{prefix}.{i}.message"
        content = attrs.get(f"{base}.content")
        if content is None:  # multi-part: llm.input_messages.0.message.contents.0.message_content.text
            parts = []
            j = 0
            while f"{base}.contents.{j}.message_content.text" in attrs or f"{base}.contents.{j}.message_content.type" in attrs:
                t = attrs.get(f"{base}.contents.{j}.message_content.text")
                if isinstance(t, str):
                    parts.append(t)
                j += 1
            content = "".join(parts)
        calls = []
        k = 0
        while f"{base}.tool_calls.{k}.tool_call.function.name" in attrs:
            tc = f"{base}.tool_calls.{k}.tool_call"
            calls.append({"id": attrs.get(f"{tc}.id"), "name": attrs.get(f"{tc}.function.name"),
                          "args": maybe_json(attrs.get(f"{tc}.function.arguments"))})
            k += 1
        out.append(msg(attrs.get(f"{base}.role", "user"), content, tool_calls=calls,
                       name=attrs.get(f"{base}.name"), tool_call_id=attrs.get(f"{base}.tool_call_id")))
        i += 1
    return out


def _value_text(v: Any) -> str | None:
    if v is None:
        return None
    data = maybe_json(v)
    if isinstance(data, dict):
        for key in ("input", "query", "question", "output", "answer", "content", "text"):
            if isinstance(data.get(key), str):
                return str(data[key])
        msgs = data.get("messages")
        if isinstance(msgs, list) and msgs:
            last = msgs[-1]
            if isinstance(last, dict) and isinstance(last.get("content"), str):
                return str(last["content"])
    return v if isinstance(v, str) else str(v)


class OpenInferenceAdapter:
    """Reads spans from OpenInference instrumentations."""

    name = "openinference"

    def role(self, attrs: dict[str, Any]) -> SpanRole | None:
        return _KINDS.get(str(attrs.get("openinference.span.kind", "")).upper())

    def conversation_id(self, attrs: dict[str, Any]) -> str | None:
        v = attrs.get("session.id")
        return str(v) if v else None

    def user_id(self, attrs: dict[str, Any]) -> str | None:
        v = attrs.get("user.id")
        return str(v) if v else None

    def llm(self, attrs: dict[str, Any]) -> LLMData:
        outputs = _messages(attrs, "llm.output_messages")
        if not outputs and attrs.get("output.value") is not None:
            outputs = [msg("assistant", _value_text(attrs.get("output.value")))]
        return LLMData(
            model=attrs.get("llm.model_name"),
            provider=attrs.get("llm.provider") or attrs.get("llm.system"),
            input_messages=_messages(attrs, "llm.input_messages"),
            output_messages=outputs,
            input_tokens=as_int(attrs.get("llm.token_count.prompt")),
            output_tokens=as_int(attrs.get("llm.token_count.completion")),
        )

    def tool(self, attrs: dict[str, Any]) -> ToolData:
        return ToolData(
            name=str(attrs.get("tool.name") or attrs.get("tool_call.function.name") or "tool"),
            arguments=maybe_json(attrs.get("tool.parameters") or attrs.get("input.value")),
            result=_value_text(attrs.get("output.value")),
            tool_call_id=attrs.get("tool_call.id"),
        )

    def io(self, attrs: dict[str, Any]) -> tuple[str | None, str | None]:
        return _value_text(attrs.get("input.value")), _value_text(attrs.get("output.value"))
