"""Where a thread came from: ``loop_thread.source`` (``capture`` or ``otlp``), indexed.

Existing threads are backfilled from their turns: ``otlp`` when any turn was ingested from an
OTLP export (ingest marks the turn's ``meta.source``), else ``capture`` when the thread has
turns; threads with no turn (feedback only) stay NULL (unknown).

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    present: set[str] = set()
    if not op.get_context().as_sql:
        # A database made by create_all from a newer _tables.py already has the column.
        present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("loop_thread")}
    if "source" not in present:
        op.add_column("loop_thread", sa.Column("source", sa.String(), nullable=True))
        op.create_index("ix_loop_thread_source", "loop_thread", ["source"])

    thread = sa.table("loop_thread", sa.column("thread_id", sa.String()), sa.column("source", sa.String()))
    turn = sa.table("loop_turn", sa.column("thread_id", sa.String()), sa.column("meta", sa.JSON()))
    of_thread = turn.c.thread_id == thread.c.thread_id
    # JSON path access renders as json_extract() on SQLite and ->> on PostgreSQL: one statement,
    # no rows pulled into Python, however large the store.
    from_otlp = sa.exists().where(of_thread, turn.c.meta["source"].as_string() == "otlp")
    has_turns = sa.exists().where(of_thread)
    op.execute(
        thread.update()
        .where(thread.c.source.is_(None))
        .values(source=sa.case((from_otlp, "otlp"), (has_turns, "capture"), else_=sa.null()))
    )


def downgrade() -> None:
    with op.batch_alter_table("loop_thread") as batch:
        batch.drop_index("ix_loop_thread_source")
        batch.drop_column("source")
