"""Concurrent writers of one thread: its start stays the earliest and its last update the
latest, whatever order their rows land in (several host processes capture one thread)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from loop_middleware import Store
from loop_middleware.capture import BackgroundWriter

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def test_thread_times_keep_earliest_start_and_latest_update(store_url: str) -> None:
    store = Store(store_url)
    late = ("thread", {"thread_id": "t", "created_at": T0 + timedelta(minutes=5),
                       "updated_at": T0 + timedelta(minutes=9)})
    early = ("thread", {"thread_id": "t", "created_at": T0, "updated_at": T0 + timedelta(minutes=1)})
    store.write_rows([late])
    store.write_rows([early])  # a lagging writer's older row lands last
    store.write_rows([("thread", {"thread_id": "t", "created_at": None, "updated_at": None})])
    # in one batch too, in either order
    store.write_rows([early, late, ("thread", {"thread_id": "u", "created_at": T0})])
    store.write_rows([("thread", {"thread_id": "u", "created_at": T0 + timedelta(hours=1),
                                  "updated_at": T0})])
    store.write_rows([("prompt_version", {"sha256": "p", "text": "x", "first_seen": T0 + timedelta(days=1)}),
                      ("prompt_version", {"sha256": "p", "text": "x", "first_seen": T0})])
    store.write_rows([("prompt_version", {"sha256": "p", "text": "x", "first_seen": T0 + timedelta(days=2)})])
    got = {t: (r[0], r[1]) for t, r in ((tid, _times(store, tid)) for tid in ("t", "u"))}
    assert got["t"] == (T0, T0 + timedelta(minutes=9))
    assert got["u"] == (T0, T0)
    with store.engine.connect() as conn:
        first_seen = conn.exec_driver_sql("select first_seen from loop_prompt_version").scalar()
    assert _dt(first_seen) == T0


def _dt(d: datetime | str) -> datetime:
    return (d if isinstance(d, datetime) else datetime.fromisoformat(d)).replace(tzinfo=UTC)


def _times(store: Store, tid: str) -> tuple[datetime, datetime]:
    with store.engine.connect() as conn:
        c, u = conn.exec_driver_sql(
            f"select created_at, updated_at from loop_thread where thread_id = '{tid}'").one()
    return _dt(c), _dt(u)


def test_a_dead_processes_spool_take_is_adopted(tmp_path: Path) -> None:
    """A process that died while replaying leaves its take of the spool; the next writer on
    this machine replays it (a live process' take is left to its owner)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    spool = tmp_path / "s.jsonl"
    host = socket.gethostname()
    row = ["thread", {"thread_id": "orphan", "created_at": {"__dt__": T0.isoformat()}}]
    (tmp_path / f"s.jsonl.replaying.{host}.{pid}").write_text(json.dumps(row) + "\n")
    alive = tmp_path / f"s.jsonl.replaying.{host}.1"  # pid 1 lives: not ours to take
    alive.write_text(json.dumps(["thread", {"thread_id": "other"}]) + "\n")
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    writer = BackgroundWriter(store, spool_path=spool, retry_interval=0.05)
    try:
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert store.get_thread("orphan") is None  # no turns; the row itself is there:
    assert [r[0] for r in store.thread_index()] == ["orphan"]
    assert alive.exists() and not list(tmp_path.glob(f"s.jsonl.replaying.{host}.{pid}"))
