"""OpenTelemetry spans for captured turns, LLM calls and tool calls.

Attributes follow the OpenTelemetry GenAI semantic conventions (still "Development", so the names
are defined here rather than imported from incubating modules) and their OpenInference
equivalents, so Phoenix, Langfuse and other OpenTelemetry back ends read the same spans.

We depend on the OpenTelemetry *API* only and take ``tracer_provider=``; nothing is configured
globally. Spans are built on the background writer thread from recorded timestamps, so the host
never pays for attribute serialisation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from ._recorder import CallState, TurnState

__all__ = ["SpanEmitter"]

# GenAI semantic conventions
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"
GEN_AI_PROMPT_VERSION = "gen_ai.prompt.version"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"
# OpenInference
OI_SPAN_KIND = "openinference.span.kind"
OI_SESSION_ID = "session.id"
OI_USER_ID = "user.id"
OI_INPUT_VALUE = "input.value"
OI_OUTPUT_VALUE = "output.value"
OI_LLM_MODEL_NAME = "llm.model_name"
OI_LLM_PROVIDER = "llm.provider"
OI_TOKEN_PROMPT = "llm.token_count.prompt"
OI_TOKEN_COMPLETION = "llm.token_count.completion"
OI_PROMPT_TEMPLATE_VERSION = "llm.prompt_template.version"
OI_TOOL_NAME = "tool.name"
# ours
LOOP_TURN_ID = "loop.turn.id"
LOOP_PROMPT_SHA256 = "loop.prompt.sha256"
LOOP_INPUT_CHARS = "loop.input.chars"
LOOP_OUTPUT_CHARS = "loop.output.chars"


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content") or "") for m in messages)


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


class SpanEmitter:
    """Emits one ``invoke_agent`` span per turn with ``chat`` and ``execute_tool`` children.

    Args:
        tracer_provider: The provider to use; the global one when None.
        capture_content: Put message text on spans. When False, only ids, sizes and counts.
        agent_name: ``gen_ai.agent.name`` of the host agent.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        capture_content: bool = True,
        agent_name: str = "agent",
    ) -> None:
        from .. import __version__

        self._tracer = trace.get_tracer(
            "loop_middleware", __version__, tracer_provider=tracer_provider
        )
        self.capture_content = capture_content
        self.agent_name = agent_name

    def emit_turn(self, turn: TurnState, calls: list[CallState], versions: dict[str, list[Any]]) -> None:
        """Emit the spans of a finished turn (called on the writer thread)."""
        conv = turn.thread_id
        attrs: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: "invoke_agent",
            GEN_AI_AGENT_NAME: self.agent_name,
            GEN_AI_CONVERSATION_ID: conv,
            OI_SPAN_KIND: "AGENT",
            OI_SESSION_ID: conv,
            OI_USER_ID: turn.user_id,
            LOOP_TURN_ID: turn.turn_id,
        }
        if self.capture_content:
            attrs[OI_INPUT_VALUE] = "\n".join(m["content"] for m in turn.user_messages or [])
            if turn.output_text is not None:
                attrs[OI_OUTPUT_VALUE] = turn.output_text
        else:
            attrs[LOOP_INPUT_CHARS] = _chars(turn.user_messages or [])
        parent = turn.otel_context if isinstance(turn.otel_context, Context) else None
        span = self._tracer.start_span(
            f"invoke_agent {self.agent_name}", context=parent, kind=SpanKind.INTERNAL,
            attributes=_clean(attrs), start_time=turn.start_ns,
        )
        if turn.error:
            span.set_status(Status(StatusCode.ERROR, turn.error[:500]))
            span.set_attribute(ERROR_TYPE, turn.error_type or "Exception")
        ctx = trace.set_span_in_context(span)
        for call in calls:
            if call.kind == "llm":
                self._emit_llm(call, conv, ctx, versions.get(call.call_id, []))
            else:
                self._emit_tool(call, conv, ctx)
        span.end(end_time=turn.end_ns)

    def _emit_llm(self, call: CallState, conv: str, ctx: Context, versions: list[Any]) -> None:
        model = call.model or "unknown"
        main = versions[0] if versions else None
        attrs: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: "chat",
            GEN_AI_CONVERSATION_ID: conv,
            GEN_AI_PROVIDER_NAME: call.provider,
            GEN_AI_REQUEST_MODEL: model,
            GEN_AI_USAGE_INPUT_TOKENS: call.input_tokens,
            GEN_AI_USAGE_OUTPUT_TOKENS: call.output_tokens,
            GEN_AI_RESPONSE_FINISH_REASONS: [call.finish_reason] if call.finish_reason else None,
            GEN_AI_PROMPT_NAME: main.name if main is not None else None,
            GEN_AI_PROMPT_VERSION: main.sha256[:12] if main is not None else None,
            LOOP_PROMPT_SHA256: main.sha256 if main is not None else None,
            OI_SPAN_KIND: "LLM",
            OI_SESSION_ID: conv,
            OI_LLM_MODEL_NAME: model,
            OI_LLM_PROVIDER: call.provider,
            OI_TOKEN_PROMPT: call.input_tokens,
            OI_TOKEN_COMPLETION: call.output_tokens,
            OI_PROMPT_TEMPLATE_VERSION: main.sha256[:12] if main is not None else None,
        }
        if self.capture_content:
            attrs[GEN_AI_INPUT_MESSAGES] = json.dumps(call.input_messages, ensure_ascii=False)
            attrs[GEN_AI_OUTPUT_MESSAGES] = json.dumps(call.output_messages, ensure_ascii=False)
        else:
            attrs[LOOP_INPUT_CHARS] = _chars(call.input_messages)
            attrs[LOOP_OUTPUT_CHARS] = _chars(call.output_messages)
        span = self._tracer.start_span(
            f"chat {model}", context=ctx, kind=SpanKind.CLIENT, attributes=_clean(attrs),
            start_time=call.start_ns,
        )
        if call.error:
            span.set_status(Status(StatusCode.ERROR, call.error[:500]))
            span.set_attribute(ERROR_TYPE, call.error_type or "Exception")
        span.end(end_time=call.end_ns)

    def _emit_tool(self, call: CallState, conv: str, ctx: Context) -> None:
        name = call.name or "tool"
        attrs: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: "execute_tool",
            GEN_AI_CONVERSATION_ID: conv,
            GEN_AI_TOOL_NAME: name,
            GEN_AI_TOOL_CALL_ID: call.tool_call_id,
            OI_SPAN_KIND: "TOOL",
            OI_SESSION_ID: conv,
            OI_TOOL_NAME: name,
        }
        if self.capture_content:
            args = json.dumps(call.arguments, ensure_ascii=False, default=repr)
            attrs[OI_INPUT_VALUE] = attrs[GEN_AI_TOOL_CALL_ARGUMENTS] = args
            attrs[OI_OUTPUT_VALUE] = attrs[GEN_AI_TOOL_CALL_RESULT] = call.result or ""
        else:
            attrs[LOOP_OUTPUT_CHARS] = len(call.result or "")
        span = self._tracer.start_span(
            f"execute_tool {name}", context=ctx, kind=SpanKind.INTERNAL, attributes=_clean(attrs),
            start_time=call.start_ns,
        )
        if call.error:
            span.set_status(Status(StatusCode.ERROR, call.error[:500]))
            span.set_attribute(ERROR_TYPE, call.error_type or "Exception")
        span.end(end_time=call.end_ns)
