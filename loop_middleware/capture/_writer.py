"""Off the host's hot path: a bounded queue, a background writer that batches, and a spool.

The host thread only appends to a queue (``put_nowait``). A daemon thread turns queued records
into rows and upserts them in batches. When the store cannot be written (database down, file
locked or read-only, disk full) the rows go to an append-only JSONL spool next to the database
and are replayed, in order, once the store is back; rows are idempotent upserts, so replaying
twice never duplicates anything. When the queue is full the host's own thread spools the
record (bounded time, never dropped).

Loss bound: a process killed with SIGKILL loses what was queued but not yet written or spooled:
always the newest events (rows are written in order), normally the last ``flush_interval``
(default 0.25 s). When the host produces faster than the writer thread converts and writes (a
CPU-bound host on a loaded machine; very long threads, whose LLM calls carry the whole history),
the writer falls behind and that backlog is what is at risk; it is bounded by the queue
(``max_queue`` records), past which the host spools to disk itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..store import Store

try:  # POSIX: the spool is shared by every process writing to the same store
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spool
    fcntl = None  # type: ignore[assignment]

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

    __slots__ = ("batches", "errors", "queued", "rejected", "replayed", "spooled", "write_failures",
                 "written")

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
        self.rejected = 0
        """Rows the database refused as data (kept in ``<spool>.rejected.jsonl``, never dropped)."""
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
        self._overflow_lock = threading.Lock()
        self._memory_lock = threading.Lock()
        self._memory_fallback: list[Row] = []  # only when even the spool file cannot be written
        # Rows left by an earlier process are replayed as soon as the store answers.
        self._spool_pending = bool(self.spool_files)
        self._last_retry = 0.0
        self._last_failure = 0.0
        self._unsynced = False  # overflow appends waiting for the writer's fsync
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
            # Memory stays bounded: the record goes to disk from this thread instead. No fsync
            # here (it would block the host for milliseconds); the writer fsyncs in batches.
            try:
                self._overflow(source())
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
    def spool_files(self) -> list[Path]:
        """The spool files on disk now: the shared spool and overflow, this process' replay in
        progress (or deferred), and takes left by processes that died."""
        paths = (self.spool_path, self._overflow_path, self._replay_path)
        return [p for p in paths if p.exists()] + self._orphans()

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
                self._maybe_replay()
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
            if self._unsynced:
                self._fsync_overflow()
            if rows:
                self._write(rows)
            if markers:
                # Someone waits in flush(): try the spool now rather than at the next retry tick.
                self._maybe_replay()
            for m in markers:
                m.set()
            if stop:
                return

    def _write(self, rows: list[Row]) -> None:
        if self._spool_pending:
            # Retry the spool now unless the store failed moments ago (then back off).
            healthy = time.monotonic() - self._last_failure >= self.retry_interval
            if not healthy or not self._maybe_replay():
                # Keep order: new rows queue behind the spooled ones until the store is back.
                self._spool(rows)
                return
        try:
            self.store.write_rows(rows)
            self.stats.written += len(rows)
            self.stats.batches += 1
        except StoreError as exc:
            if not exc.transient:
                self._write_one_by_one(rows, exc)
                return
            self._failed()
            logger.warning("loop-middleware: store unavailable, spooling %d rows: %s", len(rows), exc)
            self._spool(rows)
        except Exception:
            self._failed()
            logger.exception("loop-middleware: unexpected write error, spooling %d rows", len(rows))
            self._spool(rows)

    def _write_one_by_one(self, rows: list[Row], first: StoreError) -> None:
        """The database refused the data (not the connection): write what it accepts and keep
        the refused rows in ``<spool>.rejected.jsonl`` so they are neither lost nor allowed to
        block every later row."""
        logger.error("loop-middleware: the store refused a batch (%s); retrying row by row", first)
        for row in rows:
            try:
                self.store.write_rows([row])
                self.stats.written += 1
            except StoreError as exc:
                if exc.transient:
                    self._failed()
                    self._spool([row])
                    continue
                self.stats.rejected += 1
                try:
                    with self._shared_lock():
                        self._append(self.spool_path.with_name(self.spool_path.name + ".rejected.jsonl"),
                                     [row], sync=True)
                except OSError as io_exc:
                    self._hold_in_memory([row], io_exc)
                logger.error("loop-middleware: row of %s rejected by the store, kept in %s.rejected.jsonl: %s",
                             row[0], self.spool_path.name, exc)

    def _failed(self) -> None:
        self.stats.write_failures += 1
        self._last_failure = time.monotonic()

    def _write_now(self, source: RowSource) -> None:
        try:
            rows = source()
            try:
                self.store.write_rows(rows)
                self.stats.written += len(rows)
            except Exception:  # noqa: BLE001
                self._overflow(rows)
        except Exception:
            self.stats.errors += 1
            logger.exception("loop-middleware: record after close could not be saved")

    # --- the spool --------------------------------------------------------------------------
    # Files beside each other, shared by every process that writes to the same store (the
    # workers of one app use the same default spool):
    #   <spool>                      appended by writer threads (fsync'd per batch);
    #   <spool>.overflow             appended by host threads when the queue is full (no fsync:
    #                                the writer fsyncs it in batches), so a host never waits on
    #                                I/O another thread started;
    #   <spool>.replaying.<host>.<pid>  this process' take of the spool: rows being (or failing
    #                                to be) replayed into the store;
    #   <spool>.lock                 a file lock (flock) held for each append and for the moves
    #                                into a take, never while rows are written to the store.
    # So no process appends to a file another one is replaying, and a take is only ever dropped
    # by its owner, after its rows are in the store. The take of a process that died is adopted
    # by the next writer that replays.

    @property
    def _overflow_path(self) -> Path:
        return self.spool_path.with_name(self.spool_path.name + ".overflow")

    @property
    def _replay_path(self) -> Path:
        return self.spool_path.with_name(f"{self.spool_path.name}.replaying.{_owner()}")

    def _orphans(self) -> list[Path]:
        """Takes (and files of older versions) that no live process on this host replays."""
        out = []
        base = self.spool_path.name
        legacy = [self.spool_path.with_name(base + ".replaying"),
                  self._overflow_path.with_name(self._overflow_path.name + ".rotating")]
        out += [p for p in legacy if p.exists()]
        try:
            takes = sorted(self.spool_path.parent.glob(base + ".replaying.*"))
        except OSError:
            return out
        host = socket.gethostname()
        for p in takes:
            owner = p.name[len(base) + len(".replaying."):]
            owner_host, _, pid = owner.rpartition(".")
            if owner == _owner() or owner_host != host or not pid.isdigit():
                continue  # ours, or another machine's (its own writer replays it)
            if not _alive(int(pid)):
                out.append(p)
        return out

    @contextlib.contextmanager
    def _shared_lock(self) -> Any:
        """The spool's cross-process lock (a no-op where flock does not exist)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        path = self.spool_path.with_name(self.spool_path.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _append(path: Path, rows: list[Row], *, sync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps([t, v], default=_json_default) + "\n" for t, v in rows)
        with path.open("a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())

    def _spool(self, rows: list[Row]) -> None:
        """Writer thread: append rows to the spool file, fsync'd."""
        try:
            with self._shared_lock():
                self._append(self.spool_path, rows, sync=True)
            self.stats.spooled += len(rows)
        except OSError as exc:
            self._hold_in_memory(rows, exc)
        self._spool_pending = True

    def _overflow(self, rows: list[Row]) -> None:
        """Host thread: the queue is full; append to the overflow file (no fsync)."""
        with self._overflow_lock:
            try:
                with self._shared_lock():
                    self._append(self._overflow_path, rows, sync=False)
                self.stats.spooled += len(rows)
                self._unsynced = True
            except OSError as exc:
                self._hold_in_memory(rows, exc)
            self._spool_pending = True

    def _hold_in_memory(self, rows: list[Row], exc: OSError) -> None:
        # Disk full or unwritable: hold the rows (bounded upstream by the queue) and say so
        # loudly; the next replay writes them first.
        with self._memory_lock:
            self._memory_fallback.extend(rows)
            held = len(self._memory_fallback)
        self.stats.errors += 1
        logger.error("loop-middleware: spool %s unwritable (%s); %d rows held in memory",
                     self.spool_path, exc, held)

    def _fsync_overflow(self) -> None:
        self._unsynced = False
        try:
            fd = os.open(self._overflow_path, os.O_RDONLY)
        except OSError:
            return  # rotated away or not there: nothing to sync
        try:
            os.fsync(fd)
        except OSError as exc:
            logger.debug("loop-middleware: overflow fsync failed: %s", exc)
        finally:
            os.close(fd)

    def _maybe_replay(self) -> bool:
        """Move spooled rows into the store (writer thread). True when nothing is left pending."""
        if not self._spool_pending:
            return True
        self._last_retry = time.monotonic()
        replay = self._replay_path
        try:
            # Under both locks only for moving files: the rows go to the store afterwards.
            with self._overflow_lock, self._shared_lock():
                sources = [*self._orphans(), self.spool_path, self._overflow_path]
                for src in sources:
                    if not src.exists():
                        continue
                    if replay.exists():  # an earlier replay failed: its rows stay first
                        with replay.open("ab") as dst, src.open("rb") as f:
                            shutil.copyfileobj(f, dst)
                            dst.flush()
                            os.fsync(dst.fileno())
                        src.unlink()
                    else:
                        os.replace(src, replay)
                self._unsynced = False
        except OSError as exc:
            logger.error("loop-middleware: cannot rotate spool %s: %s", self.spool_path, exc)
            return False
        with self._memory_lock:
            memory = list(self._memory_fallback)
            self._memory_fallback.clear()
        rows: list[Row] = []
        if replay.exists():
            try:
                with replay.open(encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            table, values = json.loads(line)
                            rows.append((table, _revive(values)))
            except (OSError, ValueError) as exc:
                logger.error("loop-middleware: cannot read spool %s: %s", replay, exc)
                self._restore_memory(memory)
                return False
        rows.extend(memory)
        try:
            for i in range(0, len(rows), self.batch_size):
                chunk = rows[i : i + self.batch_size]
                try:
                    self.store.write_rows(chunk)
                except StoreError as exc:
                    if exc.transient:
                        raise
                    self._write_one_by_one(chunk, exc)
        except Exception as exc:  # noqa: BLE001
            self._last_failure = time.monotonic()
            logger.debug("loop-middleware: replay deferred, store still down: %s", exc)
            self._restore_memory(memory)
            return False
        # Written (idempotent upserts): only now is it safe to drop the replayed rows.
        replay.unlink(missing_ok=True)
        self.stats.replayed += len(rows)
        self.stats.written += len(rows)
        with self._overflow_lock, self._memory_lock:
            self._spool_pending = bool(self.spool_files) or bool(self._memory_fallback)
        if rows:
            logger.info("loop-middleware: store reachable, replayed %d spooled rows", len(rows))
        return not self._spool_pending

    def _restore_memory(self, memory: list[Row]) -> None:
        with self._memory_lock:
            self._memory_fallback[:0] = memory


def _owner() -> str:
    """This process, as named in its spool takes (the pid changes in a forked child)."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
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
