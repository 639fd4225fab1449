"""The public data model of the loop, named in the mission's words.

Capture produces :class:`Thread` → :class:`Turn` → :class:`LLMCall` / :class:`ToolCall`, each LLM
call tied to the :class:`PromptVersion` that produced it. Extraction adds :class:`Signal` and
:class:`Intent`; diagnosis adds :class:`Diagnosis`; the patch stage produces :class:`Fix`; measuring
compares :class:`Cohort` s. All are pydantic models: they are the contract between stages (and
between an LLM and our code), they validate, and they serialise to JSON for reports and CLIs.

Data flows one way: nothing in this module imports from a stage.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SELF_REPORT_TOOL",
    "Diagnosis",
    "Evidence",
    "Feedback",
    "Fix",
    "FixKind",
    "Intent",
    "LLMCall",
    "Message",
    "PromptVersion",
    "Role",
    "Signal",
    "Thread",
    "ToolCall",
    "Turn",
]

Role = Literal["system", "user", "assistant", "tool", "other"]

SELF_REPORT_TOOL = "report_problem"
"""The tool :class:`~loop_middleware.LoopMiddleware` gives the agent with ``report_problems=True``:
each call is the agent reporting its own failure (extracted as a ``self_report`` signal)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="forbid")


class PromptVersion(_Model):
    """One exact version of a prompt: what produced an LLM call."""

    sha256: str
    """Hex SHA-256 of the prompt text (UTF-8). The version's identity."""
    text: str
    """The full prompt text."""
    name: str | None = None
    """A short name, by default the file stem (``support`` for ``prompts/support.md``)."""
    path: str | None = None
    """The file the prompt was loaded from, when it was file-backed."""
    git_commit: str | None = None
    """The last git commit that touched the file, when the file is inside a git work tree."""
    git_dirty: bool = False
    """True when the file's content differs from that commit (uncommitted edits)."""

    @property
    def short(self) -> str:
        """The first 12 hex digits of the hash, for tables and span attributes."""
        return self.sha256[:12]

    def as_template(self, *messages: Any, template_format: str = "f-string",
                    history: str | None = "messages") -> Any:
        """This prompt as a LangChain ``ChatPromptTemplate`` that carries its version in its
        metadata, so capture records the version of every call it renders without matching
        text (see :func:`loop_middleware.prompts.prompt_template` for the arguments)."""
        from .prompts import prompt_template

        return prompt_template(self, *messages, template_format=template_format, history=history)


class Message(_Model):
    """One chat message, in a provider-neutral shape."""

    role: Role
    content: str
    """Text content. Multi-part content is flattened to its text parts."""
    name: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    """For assistant messages: ``[{"id", "name", "args"}]``."""
    tool_call_id: str | None = None
    """For tool messages: the call this is the result of."""
    id: str | None = None


class LLMCall(_Model):
    """One chat-model call inside a turn."""

    id: str
    """The LangChain run id (or middleware call id)."""
    seq: int = 0
    """Order of the call within its turn (LLM and tool calls share one sequence)."""
    model: str | None = None
    provider: str | None = None
    input_messages: list[Message] = Field(default_factory=list)
    output_messages: list[Message] = Field(default_factory=list)
    prompt_versions: list[PromptVersion] = Field(default_factory=list)
    """Every known prompt found in the call's system message(s), registered or not."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    started_at: datetime | None = None

    @property
    def prompt_version(self) -> PromptVersion | None:
        """The main prompt version of the call (the first one found), if any."""
        return self.prompt_versions[0] if self.prompt_versions else None


class ToolCall(_Model):
    """One tool execution inside a turn."""

    id: str
    seq: int = 0
    name: str
    arguments: Any = None
    """The tool's input as the model gave it (a dict, or a string)."""
    result: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    tool_call_id: str | None = None
    started_at: datetime | None = None


class Feedback(_Model):
    """Explicit feedback or a business outcome attached after the fact."""

    id: str
    thread_id: str
    turn_id: str | None = None
    kind: Literal["feedback", "outcome"]
    score: float | None = None
    """Thumbs up = 1, thumbs down = 0, or any numeric score."""
    label: str | None = None
    """For outcomes: ``converted``, ``churned``, ``escalated``, ...; for feedback: ``thumbs_up`` ..."""
    comment: str | None = None
    created_at: datetime | None = None


class Turn(_Model):
    """One user message and everything the agent did until its reply."""

    id: str
    thread_id: str
    index: int = 0
    """Position of the turn in its thread, from 0."""
    messages: list[Message] = Field(default_factory=list)
    """The user's message(s), then the agent's messages and tool results, in order."""
    llm_calls: list[LLMCall] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    latency_ms: float | None = None
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def user_text(self) -> str:
        """The text of the user's message(s) that opened the turn."""
        return "\n".join(m.content for m in self.messages if m.role == "user")

    @property
    def reply_text(self) -> str:
        """The text of the agent's last assistant message in the turn ('' if none)."""
        for m in reversed(self.messages):
            if m.role == "assistant" and m.content:
                return m.content
        return ""

    @property
    def prompt_versions(self) -> list[PromptVersion]:
        """Distinct prompt versions used by the turn's LLM calls, in first-use order."""
        seen: dict[str, PromptVersion] = {}
        for call in self.llm_calls:
            for pv in call.prompt_versions:
                seen.setdefault(pv.sha256, pv)
        return list(seen.values())


class Thread(_Model):
    """One whole conversation."""

    thread_id: str
    turns: list[Turn] = Field(default_factory=list)
    user_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    feedback: list[Feedback] = Field(default_factory=list)

    @property
    def opening_request(self) -> str:
        """The user's first message: what the conversation is about."""
        return self.turns[0].user_text if self.turns else ""


# --- extraction -------------------------------------------------------------------------------


class Signal(_Model):
    """A failure signal detected in a thread, with its evidence."""

    thread_id: str
    kind: str
    """Detector name: ``frustration``, ``abandonment``, ``escalation``, ``refusal``, ``tool_error``,
    ``ungrounded``, ``stall``, ``context_loss``, ``language_switch``, ``latency_outlier``,
    ``negative_feedback``, or a user-registered one."""
    turn_index: int | None = None
    """The turn it fired on (0-based), if it is tied to one."""
    evidence: str = ""
    """A short verbatim quote from the thread."""
    confidence: float = 1.0
    details: dict[str, Any] = Field(default_factory=dict)


class Intent(_Model):
    """A product intent discovered from threads, placed in a small hierarchy."""

    id: str
    """Stable id: stays the same across runs so cohorts compare over time."""
    name: str
    """A short label in words from its own most typical requests (or the LLM's name)."""
    category: str
    """The business category: ``bug_report``, ``feature_request``, ``setup_friction``,
    ``billing_refund``, ``pricing_objection``, ``churn_risk``, ``how_to``, ``other``, or configured."""
    parent_id: str | None = None
    """For a sub-intent: its intent."""
    keyphrases: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    """The most central utterances."""
    size: int = 0
    """Threads assigned to it."""
    typical_request: str = ""
    """The most typical request (the member nearest the centroid), as written."""


# --- diagnosis and fixes -----------------------------------------------------------------------


class Evidence(_Model):
    """A pointer into a stored thread backing a claim."""

    thread_id: str
    turn_index: int | None = None
    quote: str = ""


class Diagnosis(_Model):
    """A root-cause hypothesis for an intent x failure-signal cell, with numbers."""

    id: str
    intent_id: str | None
    intent_name: str
    signal: str
    failure_mode: str
    """``coverage_gap``, ``regression``, ``tool_failure``, ``ungrounded_answer``, ``context_loss``,
    ``loop_stall``, ``truncated_tool_output`` (a harness setting cuts tool results),
    ``forced_language`` (a prompt line forces one reply language), ``prompt_instruction`` (the
    failing replies follow one prompt section's instruction), or ``unexplained``."""
    summary: str
    """The root-cause sentence, with numbers."""
    headline: str = ""
    """One sentence a product team reads first: ``"<intent> <fails how> because <cause>, <share>
    of sessions"`` (the numbers, evidence and tests are in :attr:`summary` and below)."""
    sessions_affected: int
    share_of_sessions: float
    """Sessions affected / all sessions analysed."""
    rate_in_intent: float
    rate_elsewhere: float
    lift: float
    p_value: float
    q_value: float
    """Benjamini-Hochberg adjusted p-value."""
    impact: float
    """Sessions affected x severity: the ranking key."""
    confidence: float
    prompt_sha256: str | None = None
    """The prompt version that served the affected threads (the target of a fix)."""
    prompt_path: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class FixKind(StrEnum):
    """What a fix changes."""

    PROMPT_EDIT = "prompt_edit"
    HARNESS_CHANGE = "harness_change"
    CONFIG_CHANGE = "config_change"
    REVERT = "revert"


class Fix(_Model):
    """A proposed change to the host agent's own files, as a reviewable diff."""

    id: str
    diagnosis_id: str
    kind: FixKind
    target_file: str
    """Path relative to the host repository root."""
    diff: str
    """A unified diff that applies to the target file."""
    title: str
    rationale: str
    """The diagnosis with numbers and links to evidence threads (Markdown, PR body)."""
    metric: str
    """The signal rate to watch in the next cohort, e.g. ``coverage_gap rate in intent refund``."""
    expected_direction: Literal["decrease", "increase"] = "decrease"
    sample_size_needed: int = 0
    """Threads per cohort (in the intent) needed to confirm the expected effect."""
    status: Literal["proposed", "approved", "rejected", "opened", "merged", "kept", "reverted"] = (
        "proposed"
    )
    branch: str | None = None
    pr_url: str | None = None
    created_at: datetime | None = None
    placeholders: list[str] = Field(default_factory=list)
    """``<placeholders>`` in the diff the reviewer must replace with real policy text before
    merging (the host repository states none); the PR is a draft labelled ``needs-policy-text``."""
    details: dict[str, Any] = Field(default_factory=dict)
