"""OpenTelemetry GenAI semantic conventions (``gen_ai.*``), current and older message shapes."""

from __future__ import annotations

from typing import Any

from ._base import LLMData, SpanRole, ToolData, as_int, maybe_json, msg

_LLM_OPS = {"chat", "text_completion", "generate_content", "completion"}


def _parts_text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    out = []
    for p in parts or []:
        if isinstance(p, dict):
            if p.get("type") in (None, "text") and isinstance(p.get("content"), str):
                out.append(p["content"])
            elif isinstance(p.get("text"), str):
                out.append(p["text"])
    return "".join(out)


def _messages(value: Any) -> list[dict[str, Any]]:
    data = maybe_json(value)
    if not isinstance(data, list):
        return []
    out = []
    for m in data:
        if not isinstance(m, dict):
            continue
        content = m.get("content") if "content" in m else _parts_text(m.get("parts"))
        calls = [
            {"id": p.get("id"), "name": p.get("name"), "args": maybe_json(p.get("arguments"))}
            for p in m.get("parts") or [] if isinstance(p, dict) and p.get("type") == "tool_call"
        ]
        out.append(msg(m.get("role", "other"), _parts_text(content) if isinstance(content, list) else content,
                       tool_calls=calls))
    return out


def _indexed(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Older flattened form: ``gen_ai.prompt.0.role`` / ``gen_ai.prompt.0.content``."""
    out = []
    i = 0
    while f"{prefix}.{i}.role" in attrs or f"{prefix}.{i}.content" in attrs:
        out.append(msg(attrs.get(f"{prefix}.{i}.role", "user"), attrs.get(f"{prefix}.{i}.content")))
        i += 1
    return out


class GenAIAdapter:
    """Reads spans that follow the OpenTelemetry GenAI semantic conventions."""

    name = "genai"

    def role(self, attrs: dict[str, Any]) -> SpanRole | None:
        op = attrs.get("gen_ai.operation.name")
        if op in _LLM_OPS:
            return "llm"
        if op == "execute_tool":
            return "tool"
        if op in ("invoke_agent", "create_agent"):
            return "agent"
        if "gen_ai.request.model" in attrs or "gen_ai.system" in attrs:
            return "llm"
        return None

    def conversation_id(self, attrs: dict[str, Any]) -> str | None:
        v = attrs.get("gen_ai.conversation.id")
        return str(v) if v else None

    def user_id(self, attrs: dict[str, Any]) -> str | None:
        v = attrs.get("user.id") or attrs.get("enduser.id")
        return str(v) if v else None

    def llm(self, attrs: dict[str, Any]) -> LLMData:
        inputs = _messages(attrs.get("gen_ai.input.messages")) or _indexed(attrs, "gen_ai.prompt")
        system = attrs.get("gen_ai.system_instructions")
        if system:
            sys_data = maybe_json(system)
            inputs = [msg("system", _parts_text(sys_data) if isinstance(sys_data, list) else sys_data), *inputs]
        outputs = _messages(attrs.get("gen_ai.output.messages")) or _indexed(attrs, "gen_ai.completion")
        reasons = attrs.get("gen_ai.response.finish_reasons")
        return LLMData(
            model=attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model"),
            provider=attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system"),
            input_messages=inputs,
            output_messages=outputs,
            input_tokens=as_int(attrs.get("gen_ai.usage.input_tokens") or attrs.get("gen_ai.usage.prompt_tokens")),
            output_tokens=as_int(attrs.get("gen_ai.usage.output_tokens") or attrs.get("gen_ai.usage.completion_tokens")),
            finish_reason=(reasons[0] if isinstance(reasons, list) and reasons else reasons) or None,
        )

    def tool(self, attrs: dict[str, Any]) -> ToolData:
        return ToolData(
            name=str(attrs.get("gen_ai.tool.name") or "tool"),
            arguments=maybe_json(attrs.get("gen_ai.tool.call.arguments")),
            result=attrs.get("gen_ai.tool.call.result"),
            tool_call_id=attrs.get("gen_ai.tool.call.id"),
        )

    def io(self, attrs: dict[str, Any]) -> tuple[str | None, str | None]:
        ins = _messages(attrs.get("gen_ai.input.messages"))
        outs = _messages(attrs.get("gen_ai.output.messages"))
        user = next((m["content"] for m in reversed(ins) if m["role"] == "user"), None)
        reply = next((m["content"] for m in reversed(outs) if m["role"] == "assistant"), None)
        return user, reply
