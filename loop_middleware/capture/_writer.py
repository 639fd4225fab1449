"""Off the host's hot path: a bounded queue, a background writer that batches, and a spool.

The host thread only appends to a queue (``put_nowait``). A daemon thread turns queued records
into rows and upserts them in batches. When the store cannot be written (database down, file
locked or read-only, disk full) the rows go to an append-only JSONL spool next to the database
and are replayed, in order, once the store is back; rows are idempotent upserts, so replaying
twice never duplicates anything. When the queue is full the host's own thread spools the
record (bounded time, never dropped).

Loss bound: a process killed with SIGKILL loses what was queued but not yet written or spooled,
at most ``flush_interval`` seconds of events (default 0.25 s).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..store import Store

__all__ = ["BackgroundWriter", "WriterStats"]

logger = logging.getLogger("loop_middleware.capture")

Row = tuple[str, dict[str, Any]]
RowSource = Callable[[], list[Row]]
"""A queued record: called on the writer thread to produce its rows."""

_LIVE: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for w in list(_LIVE):
        try:
            w.close(timeout=5.0)
        except Exception:
            logger.exception("loop-middleware: closing writer at exit failed")


atexit.register(_close_all)


class WriterStats:
    """Counters of what the writer did (read them; they only grow)."""

    __slots__ = ("batches", "errors", "queued", "replayed", "spooled", "write_failures", "written")

    def __init__(self) -> None:
        self.queued = 0
        """Records handed to the writer."""
        self.written = 0
        """Rows upserted into the store."""
        self.batches = 0
        """Successful write transactions."""
        self.spooled = 0
        """Rows appended to the spool because the store could not take them."""
        self.replayed = 0
        """Spooled rows later written to the store."""
        self.write_failures = 0
        """Failed write transactions (the rows were spooled)."""
        self.errors = 0
        """Errors inside our own code (conversion bugs...), logged, never raised to the host."""

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"WriterStats({self.as_dict()})"


def default_spool_path(store: Store) -> Path:
    """``<db file>.spool.jsonl`` for SQLite, else a file in the user's cache directory."""
    db = store.engine.url.database if store.dialect == "sqlite" else None
    if db and db != ":memory:":
        return Path(db + ".spool.jsonl")
    import hashlib

    digest = hashlib.sha256(store.url.encode()).hexdigest()[:12]
    base = Path(os.environ.get("LOOP_SPOOL_DIR") or Path.home() / ".cache" / "loop_middleware")
    return base / f"spool-{digest}.jsonl"


class BackgroundWriter:
    """Writes captured records to a :class:`~loop_middleware.store.Store` in the background.

    Args:
        store: Where rows go.
        spool_path: The fallback file; see :func:`default_spool_path`.
        batch_size: Most rows per transaction.
        flush_interval: Longest wait (s) before a partial batch is written.
        max_queue: Records held in memory at most; beyond that the host thread spools.
        retry_interval: Seconds between attempts to replay the spool while the store is down.
    """

    def __init__(
        self,
        store: Store,
        *,
        spool_path: str | Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        max_queue: int = 20_000,
        retry_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.spool_path = Path(spool_path) if spool_path else default_spool_path(store)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.stats = WriterStats()
        self._q: queue.Queue[RowSource | threading.Event | None] = queue.Queue(maxsize=max_queue)
        self._spool_lock = threading.Lock()
        self._memory_fallback: list[Row] = []  # only when even the spool file cannot be written
        self._spool_pending = self.spool_path.exists() and self.spool_path.stat().st_size > 0
        self._last_retry = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="loop-middleware-writer", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # --- host side (must be cheap and never raise) -----------------------------------------

    def submit(self, source: RowSource) -> None:
        """Queue a record. Never raises; never blocks longer than a spool append."""
        if self._closed:
            self._write_now(source)
            return
        self.stats.queued += 1
        try:
            self._q.put_nowait(source)
        except queue.Full:
            # Memory stays bounded: the record goes to disk from this thread instead.
            try:
                self._spool(source())
            except Exception:
                self.stats.errors += 1
                logger.exception("loop-middleware: could not spool a record")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is written (or spooled). True when in the store."""
        if self._closed or not self._thread.is_alive():
            return not self._spool_pending
        marker = threading.Event()
        try:
            self._q.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.wait(timeout) and not self._spool_pending

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the writer thread. Idempotent."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=timeout)
        self._thread.join(timeout)
        _LIVE.discard(self)

    @property
    def pending_spool(self) -> bool:
        """True while spooled rows wait for the store to come back."""
        return self._spool_pending

    # --- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._q.get(timeout=self.retry_interval if self._spool_pending else None)
            except queue.Empty:
                self._maybe_replay(force=True)
                continue
            items = [first]
            deadline = time.monotonic() + self.flush_interval
            # Collect a batch: what is already queued, up to batch_size, without waiting long.
            while (
                len(items) < self.batch_size
                and items[-1] is not None
                and not isinstance(items[-1], threading.Event)
            ):
                try:
                    items.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stop = False
            rows: list[Row] = []
            markers: list[threading.Event] = []
            for it in items:
                if it is None:
                    stop = True
                elif isinstance(it, threading.Event):
                    markers.append(it)
                else:
                    try:
                        rows.extend(it())
                    except Exception:
                        self.stats.errors += 1
                        logger.exception("loop-middleware: could not convert a captured record")
            if rows:
                self._write(rows)
            elif markers:
                self._maybe_replay(force=True)
            for m in markers:
                m.set()
            if stop:
                return

    def _write(self, rows: list[Row]) -> None:
        if self._spool_pending and not self._maybe_replay(force=False):
            # Keep order: the store is still down, so new rows queue behind the spooled ones.
            self._spool(rows)
            return
        try:
            self.store.write_rows(rows)
            self.stats.written += len(rows)
            self.stats.batches += 1
        except StoreError as exc:
            self.stats.write_failures += 1
            logger.warning("loop-middleware: store unavailable, spooling %d rows: %s", len(rows), exc)
            self._spool(rows)
        except Exception:
            self.stats.write_failures += 1
            logger.exception("loop-middleware: unexpected write error, spooling %d rows", len(rows))
            self._spool(rows)

    def _write_now(self, source: RowSource) -> None:
        try:
            rows = source()
            try:
                self.store.write_rows(rows)
                self.stats.written += len(rows)
            except Exception:  # noqa: BLE001
                self._spool(rows)
        except Exception:
            self.stats.errors += 1
            logger.exception("loop-middleware: record after close could not be saved")

    def _spool(self, rows: list[Row]) -> None:
        with self._spool_lock:
            try:
                self.spool_path.parent.mkdir(parents=True, exist_ok=True)
                with self.spool_path.open("a", encoding="utf-8") as f:
                    for table, values in rows:
                        f.write(json.dumps([table, values], default=_json_default) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self.stats.spooled += len(rows)
            except OSError as exc:
                # Disk full or unwritable: hold in memory (bounded by the queue upstream) and
                # say so loudly; the next replay retries them first.
                self._memory_fallback.extend(rows)
                self.stats.errors += 1
                logger.error("loop-middleware: spool %s unwritable (%s); %d rows held in memory",
                             self.spool_path, exc, len(self._memory_fallback))
            self._spool_pending = True

    def _maybe_replay(self, *, force: bool) -> bool:
        """Try to move spooled rows into the store. True when nothing is left pending."""
        if not self._spool_pending:
            return True
        now = time.monotonic()
        if not force and now - self._last_retry < self.retry_interval:
            return False
        self._last_retry = now
        with self._spool_lock:
            rows: list[Row] = list(self._memory_fallback)
            if self.spool_path.exists():
                try:
                    with self.spool_path.open(encoding="utf-8") as f:
                        for line in f:
                            if line.strip():
                                table, values = json.loads(line)
                                rows.append((table, _revive(values)))
                except (OSError, ValueError) as exc:
                    logger.error("loop-middleware: cannot read spool %s: %s", self.spool_path, exc)
                    return False
            try:
                for i in range(0, len(rows), self.batch_size):
                    self.store.write_rows(rows[i : i + self.batch_size])
            except Exception as exc:  # noqa: BLE001
                logger.debug("loop-middleware: replay deferred, store still down: %s", exc)
                return False
            # Written (idempotently) — only now is it safe to drop the spool.
            try:
                self.spool_path.unlink(missing_ok=True)
            except OSError:
                self.spool_path.write_text("")
            self._memory_fallback.clear()
            self.stats.replayed += len(rows)
            self.stats.written += len(rows)
            self._spool_pending = False
            logger.info("loop-middleware: store back, replayed %d spooled rows", len(rows))
            return True


def _json_default(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    return repr(value)


_DT_KEYS = ("started_at", "ended_at", "created_at", "updated_at", "first_seen")


def _revive(values: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    for k in _DT_KEYS:
        v = values.get(k)
        if isinstance(v, dict) and "__dt__" in v:
            values[k] = datetime.fromisoformat(v["__dt__"])
    return values
