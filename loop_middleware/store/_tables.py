"""SQLModel tables. One row per thread, turn, LLM call, tool call, prompt version, feedback;
later stages store their results (signals, intents, diagnoses, fixes) as indexed rows with the
pydantic model as a JSON payload, so the schema stays small while the models evolve.

The schema is versioned by alembic migrations (``migrations/versions``): change a table here
only together with a new revision (``tests/store/test_migrations.py`` compares the two).

Primary keys are the capture's own ids (LangChain run ids), which makes every write an
idempotent upsert: replaying a spool or a batch twice never duplicates a turn.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

__all__ = [
    "DiagnosisRow",
    "FeedbackRow",
    "FixRow",
    "IntentAssignmentRow",
    "IntentRow",
    "LLMCallRow",
    "MetaRow",
    "PromptVersionRow",
    "SignalRow",
    "ThreadRow",
    "ToolCallRow",
    "TurnRow",
]


def _json(**kw: Any) -> Any:
    return Field(default=None, sa_column=Column(JSON, **kw))


def _text() -> Any:
    return Field(default=None, sa_column=Column(Text))


class ThreadRow(SQLModel, table=True):
    __tablename__ = "loop_thread"
    thread_id: str = Field(primary_key=True)
    user_id: str | None = Field(default=None, index=True)
    created_at: datetime | None = Field(default=None, index=True)
    updated_at: datetime | None = Field(default=None, index=True)
    meta: dict[str, Any] | None = _json()
    source: str | None = Field(default=None, index=True)
    """Where the thread came from: ``capture`` (middleware/handler) or ``otlp`` (ingest); NULL
    when unknown. Added by migration 0002, which backfills it from the turns."""


class TurnRow(SQLModel, table=True):
    __tablename__ = "loop_turn"
    id: str = Field(primary_key=True)
    thread_id: str = Field(index=True)
    started_at: datetime | None = Field(default=None, index=True)
    ended_at: datetime | None = None
    latency_ms: float | None = None
    error: str | None = _text()
    input_messages: list[dict[str, Any]] | None = _json()
    output_messages: list[dict[str, Any]] | None = _json()
    meta: dict[str, Any] | None = _json()


class LLMCallRow(SQLModel, table=True):
    __tablename__ = "loop_llm_call"
    id: str = Field(primary_key=True)
    turn_id: str = Field(index=True)
    thread_id: str = Field(index=True)
    seq: int = 0
    model: str | None = None
    provider: str | None = None
    input_messages: list[dict[str, Any]] | None = _json()
    output_messages: list[dict[str, Any]] | None = _json()
    prompt_shas: list[str] | None = _json()
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = _text()
    started_at: datetime | None = None


class ToolCallRow(SQLModel, table=True):
    __tablename__ = "loop_tool_call"
    id: str = Field(primary_key=True)
    turn_id: str = Field(index=True)
    thread_id: str = Field(index=True)
    seq: int = 0
    name: str = ""
    arguments: Any = _json()
    result: str | None = _text()
    error: str | None = _text()
    latency_ms: float | None = None
    tool_call_id: str | None = None
    started_at: datetime | None = None


class PromptVersionRow(SQLModel, table=True):
    __tablename__ = "loop_prompt_version"
    sha256: str = Field(primary_key=True)
    name: str | None = Field(default=None, index=True)
    path: str | None = None
    git_commit: str | None = None
    git_dirty: bool = False
    text: str | None = _text()
    first_seen: datetime | None = None


class FeedbackRow(SQLModel, table=True):
    __tablename__ = "loop_feedback"
    id: str = Field(primary_key=True)
    thread_id: str = Field(index=True)
    turn_id: str | None = None
    kind: str = "feedback"
    score: float | None = None
    label: str | None = None
    comment: str | None = _text()
    created_at: datetime | None = None


# --- results of later stages ------------------------------------------------------------------


class SignalRow(SQLModel, table=True):
    __tablename__ = "loop_signal"
    id: str = Field(primary_key=True)
    thread_id: str = Field(index=True)
    kind: str = Field(index=True)
    turn_index: int | None = None
    payload: dict[str, Any] | None = _json()


class IntentRow(SQLModel, table=True):
    __tablename__ = "loop_intent"
    id: str = Field(primary_key=True)
    category: str = Field(default="other", index=True)
    parent_id: str | None = None
    payload: dict[str, Any] | None = _json()


class IntentAssignmentRow(SQLModel, table=True):
    __tablename__ = "loop_intent_assignment"
    thread_id: str = Field(primary_key=True)
    intent_id: str | None = Field(default=None, index=True)
    sub_intent_id: str | None = None
    similarity: float | None = None


class DiagnosisRow(SQLModel, table=True):
    __tablename__ = "loop_diagnosis"
    id: str = Field(primary_key=True)
    intent_id: str | None = Field(default=None, index=True)
    failure_mode: str = Field(default="", index=True)
    created_at: datetime | None = None
    payload: dict[str, Any] | None = _json()


class FixRow(SQLModel, table=True):
    __tablename__ = "loop_fix"
    id: str = Field(primary_key=True)
    diagnosis_id: str = Field(index=True)
    status: str = Field(default="proposed", index=True)
    created_at: datetime | None = None
    payload: dict[str, Any] | None = _json()


class MetaRow(SQLModel, table=True):
    """Small key/value state (e.g. the serialised intent model, extraction watermarks)."""

    __tablename__ = "loop_meta"
    key: str = Field(primary_key=True)
    value: Any = _json()
    updated_at: datetime | None = None
