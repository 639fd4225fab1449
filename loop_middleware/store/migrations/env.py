"""Alembic environment for the store.

Normally run by :func:`loop_middleware.store._migrate.upgrade`, which hands over an open
connection (``config.attributes["connection"]``) already inside a locked transaction. Without
one (the ``alembic`` command line with a config from :func:`~loop_middleware.store._migrate.config`)
it connects to ``sqlalchemy.url`` itself, or writes SQL in ``--sql`` (offline) mode.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from loop_middleware.store import _tables  # noqa: F401 - registers the loop tables on the metadata

config = context.config


def _include_name(name: str | None, type_: str, _parent: Any) -> bool:
    # Autogenerate compares only our tables: the host may keep its own in the same database.
    return type_ != "table" or bool(name and name.startswith("loop_"))


_options: dict[str, Any] = {
    "target_metadata": SQLModel.metadata,
    "include_name": _include_name,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    "render_as_batch": True,
    "compare_type": True,
}


def run_offline() -> None:
    """Emit the migration SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **_options)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection, or on a new one to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use loop_middleware.store._migrate.config(url)")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            context.configure(connection=conn, **_options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
