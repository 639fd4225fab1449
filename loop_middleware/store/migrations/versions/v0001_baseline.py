"""Baseline: the schema as it was before migrations existed (``create_all`` of ``_tables.py``).

Written out table by table so later edits of ``_tables.py`` cannot change what this revision
means. A database created by ``create_all`` before migrations existed is adopted: tables that
already exist are left alone (and any missing one is created), so upgrading it needs no stamp.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def _thread() -> None:
    op.create_table(
        "loop_thread",
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("created_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("thread_id"),
    )
    op.create_index("ix_loop_thread_user_id", "loop_thread", ["user_id"])
    op.create_index("ix_loop_thread_created_at", "loop_thread", ["created_at"])
    op.create_index("ix_loop_thread_updated_at", "loop_thread", ["updated_at"])


def _turn() -> None:
    op.create_table(
        "loop_turn",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("input_messages", sa.JSON(), nullable=True),
        sa.Column("output_messages", sa.JSON(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_turn_thread_id", "loop_turn", ["thread_id"])
    op.create_index("ix_loop_turn_started_at", "loop_turn", ["started_at"])


def _llm_call() -> None:
    op.create_table(
        "loop_llm_call",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("turn_id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("input_messages", sa.JSON(), nullable=True),
        sa.Column("output_messages", sa.JSON(), nullable=True),
        sa.Column("prompt_shas", sa.JSON(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_llm_call_turn_id", "loop_llm_call", ["turn_id"])
    op.create_index("ix_loop_llm_call_thread_id", "loop_llm_call", ["thread_id"])


def _tool_call() -> None:
    op.create_table(
        "loop_tool_call",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("turn_id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("tool_call_id", sa.String(), nullable=True),
        sa.Column("started_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_tool_call_turn_id", "loop_tool_call", ["turn_id"])
    op.create_index("ix_loop_tool_call_thread_id", "loop_tool_call", ["thread_id"])


def _prompt_version() -> None:
    op.create_table(
        "loop_prompt_version",
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("git_commit", sa.String(), nullable=True),
        sa.Column("git_dirty", sa.Boolean(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("first_seen", _TS, nullable=True),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_index("ix_loop_prompt_version_name", "loop_prompt_version", ["name"])


def _feedback() -> None:
    op.create_table(
        "loop_feedback",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("turn_id", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_feedback_thread_id", "loop_feedback", ["thread_id"])


def _signal() -> None:
    op.create_table(
        "loop_signal",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_signal_thread_id", "loop_signal", ["thread_id"])
    op.create_index("ix_loop_signal_kind", "loop_signal", ["kind"])


def _intent() -> None:
    op.create_table(
        "loop_intent",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("parent_id", sa.String(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_intent_category", "loop_intent", ["category"])


def _intent_assignment() -> None:
    op.create_table(
        "loop_intent_assignment",
        sa.Column("thread_id", sa.String(), nullable=False),
        sa.Column("intent_id", sa.String(), nullable=True),
        sa.Column("sub_intent_id", sa.String(), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("thread_id"),
    )
    op.create_index("ix_loop_intent_assignment_intent_id", "loop_intent_assignment", ["intent_id"])


def _diagnosis() -> None:
    op.create_table(
        "loop_diagnosis",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("intent_id", sa.String(), nullable=True),
        sa.Column("failure_mode", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_diagnosis_intent_id", "loop_diagnosis", ["intent_id"])
    op.create_index("ix_loop_diagnosis_failure_mode", "loop_diagnosis", ["failure_mode"])


def _fix() -> None:
    op.create_table(
        "loop_fix",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("diagnosis_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_loop_fix_diagnosis_id", "loop_fix", ["diagnosis_id"])
    op.create_index("ix_loop_fix_status", "loop_fix", ["status"])


def _meta() -> None:
    op.create_table(
        "loop_meta",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )


TABLES: dict[str, Callable[[], None]] = {
    "loop_thread": _thread,
    "loop_turn": _turn,
    "loop_llm_call": _llm_call,
    "loop_tool_call": _tool_call,
    "loop_prompt_version": _prompt_version,
    "loop_feedback": _feedback,
    "loop_signal": _signal,
    "loop_intent": _intent,
    "loop_intent_assignment": _intent_assignment,
    "loop_diagnosis": _diagnosis,
    "loop_fix": _fix,
    "loop_meta": _meta,
}


def upgrade() -> None:
    if op.get_context().as_sql:  # offline SQL script: nothing to inspect
        existing: set[str] = set()
    else:
        existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in TABLES.items():
        if name not in existing:
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
