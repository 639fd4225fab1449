"""Schema migrations of the store, run programmatically with alembic (no ``alembic.ini``).

:class:`~loop_middleware.store.Store` calls :func:`ensure_schema` when it opens a database:

* an empty database is upgraded to the newest revision (``head``);
* a database created by ``create_all`` before migrations existed (loop tables, no
  ``alembic_version``) is adopted by the baseline revision ``0001``, which leaves existing
  tables alone, then upgraded;
* a database at an older revision is upgraded in place, keeping its rows;
* a database at a revision this version does not know (written by a newer loop-middleware) is
  refused with a :class:`~loop_middleware.errors.StoreError` rather than guessed at.

Upgrades run inside one write-locked transaction (``pg_advisory_xact_lock`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so several processes opening the same new database at once
migrate it exactly once and the others wait, then see it at ``head``; within one process they
are serialised too, because alembic keeps its migration context in module globals. SQLite and PostgreSQL
both run DDL transactionally, so a failed upgrade leaves the database at its previous revision.

New revisions (for maintainers): edit ``_tables.py``, then::

    from alembic import command
    from loop_middleware.store._migrate import config
    command.revision(config(url="sqlite:///scratch.db"), "what changed", autogenerate=True,
                     rev_id="0003")

and rename the file ``versions/v0003_<what>.py``; set :data:`HEAD` to the new id.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from ..errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "BASELINE",
    "HEAD",
    "SCRIPT_LOCATION",
    "config",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "revisions",
    "stamp",
    "upgrade",
]

logger = logging.getLogger("loop_middleware.store")

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
"""The alembic script directory shipped inside the package."""

BASELINE = "0001"
"""The revision that matches databases created by ``create_all`` before migrations existed."""

HEAD = "0002"
"""The newest revision. Kept as a constant so opening an up-to-date store never imports
alembic (a quarter of a second); a test checks it against the scripts."""

# Any fixed 64-bit key works: it only has to be the same in every process migrating.
_PG_LOCK_KEY = zlib.crc32(b"loop_middleware.store.migrate")

_VERSION_TABLE = "alembic_version"

# alembic's ``context`` and ``op`` are module-level proxies: two migrations running in threads
# of one process (two stores opened at once) overwrite each other's. Serialise them here; the
# database lock (_locked) serialises processes.
_ALEMBIC_LOCK = threading.Lock()

Target = Engine | Connection | str


def config(*, connection: Connection | None = None, url: str | None = None) -> Config:
    """An alembic :class:`~alembic.config.Config` for the shipped migrations.

    Args:
        connection: Run on this open connection (what :func:`upgrade` does).
        url: Or let ``env.py`` connect to this URL (for the ``alembic`` API / offline SQL).
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def revisions() -> list[str]:
    """Every known revision id, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def head_revision() -> str:
    """The newest revision according to the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StoreError(f"no migration scripts found in {SCRIPT_LOCATION}")
    return head


def _read_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(_VERSION_TABLE):
        return None
    found = [r[0] for r in conn.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}"))]
    if len(found) > 1:  # our history is linear: several rows mean someone branched it by hand
        raise StoreError(f"the store's {_VERSION_TABLE} table holds several revisions: {sorted(found)}")
    return found[0] if found else None


@contextmanager
def _engine(target: Engine | str) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = create_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _connection(target: Target) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    with _engine(target) as engine, engine.connect() as conn:
        yield conn


def current_revision(target: Target) -> str | None:
    """The database's schema revision, or None when it has never been migrated (empty, or
    created by ``create_all`` before migrations existed)."""
    with _connection(target) as conn:
        return _read_revision(conn)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's migration lock."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # pysqlite starts transactions only before DML, so DDL would autocommit statement by
            # statement. Taking over transaction control makes the whole upgrade one transaction
            # holding SQLite's write lock (other openers wait on busy_timeout).
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return
        with conn.begin():
            if engine.dialect.name == "postgresql":
                # Released at commit/rollback; a second migrating process waits here.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            yield conn


def _check_known(conn: Connection, where: str) -> str | None:
    current = _read_revision(conn)
    if current is not None and current not in revisions():
        raise StoreError(
            f"the store {where} is at schema revision {current!r}, which this version of "
            f"loop-middleware does not know (its newest is {HEAD!r}): it was written by a newer "
            "version; upgrade loop-middleware"
        )
    if current is None and inspect(conn).has_table("loop_thread"):
        logger.info("store %s predates migrations: adopting it at revision %s", where, BASELINE)
    return current


def _run(target: Engine | str, action: str, revision: str) -> str | None:
    from alembic import command
    from alembic.util import CommandError

    with _engine(target) as engine, _ALEMBIC_LOCK:
        where = engine.url.render_as_string(hide_password=True)
        with _locked(engine) as conn:
            before = _check_known(conn, where)
            cfg = config(connection=conn)
            try:
                if action == "upgrade":
                    command.upgrade(cfg, revision)
                elif action == "downgrade":
                    command.downgrade(cfg, revision)
                else:
                    command.stamp(cfg, revision)
            except CommandError as exc:  # e.g. an unknown target revision
                raise StoreError(f"cannot {action} the store {where} to {revision!r}: {exc}") from None
            after = _read_revision(conn)
        if after != before:
            logger.info("store %s: %s %s -> %s", where, action, before or "(none)", after)
        return after


def upgrade(target: Engine | str, revision: str = "head") -> str | None:
    """Upgrade the database to ``revision`` (default: the newest), keeping its data.

    Args:
        target: An engine (e.g. ``store.engine``) or a database URL.
        revision: A revision id (``"0001"``), ``"head"``, or a relative step (``"+1"``).

    Returns:
        The revision the database is at afterwards.

    Raises:
        StoreError: The database is at a revision this version does not know, or the target
            revision does not exist.
        sqlalchemy.exc.SQLAlchemyError: The database failed (nothing of the upgrade is kept).
    """
    return _run(target, "upgrade", revision)


def downgrade(target: Engine | str, revision: str) -> str | None:
    """Downgrade the database to ``revision`` (``"0001"``, ``"-1"``, or ``"base"`` to drop every
    loop table). Columns added after ``revision`` are dropped with their data."""
    return _run(target, "downgrade", revision)


def stamp(target: Engine | str, revision: str) -> str | None:
    """Record ``revision`` as the database's schema revision without running any migration
    (for a database whose schema is known to match it)."""
    return _run(target, "stamp", revision)


def ensure_schema(engine: Engine) -> str | None:
    """Bring the store's schema to :data:`HEAD`; cheap (one query) when it already is.

    Raises:
        StoreError: See :func:`upgrade`.
    """
    with engine.connect() as conn:
        if _read_revision(conn) == HEAD:
            return HEAD
    return upgrade(engine, "head")

