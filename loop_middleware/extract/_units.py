"""Extraction as idempotent work units over ranges of thread ids, for any executor.

A unit names a half-open range of thread ids (``lo <= thread_id < hi``, in the database's own
order) or a short list of ids, reads what it needs from the store, and writes its results back:

- :class:`SignalUnit`: detect the signals of the range's threads updated in the run's window and
  replace their stored signals (one transaction);
- :class:`EmbedUnit`: embed the opening requests of a list of threads (the intent-discovery
  sample; nothing written);
- :class:`AssignUnit`: place the range's threads that have no intent yet with the run's intent
  model; write the ones that fit an intent, return the others (novelty is decided once, over all
  of them, by the driver);
- :class:`PlaceUnit`: offer a list of leftover threads to the intents novelty created, and write
  every one of them.

Running a unit twice, or again after it was killed half way, leaves the store exactly as one run
does: signals are replaced per thread, assignments are upserts of the same values, and nothing is
appended. A unit carries the store's URL, so a worker in another process (or on another machine,
with PostgreSQL) opens its own :class:`~loop_middleware.store.Store`; workers keep one store, one
embedder and one intent model per process between units.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import pickle
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from .._perf import gc_paused
from ..errors import ExtractionError, StoreError
from ..store import Store
from ..store._tables import IntentAssignmentRow, MetaRow, ThreadRow
from ..types import Signal
from ._embed import Embedder, TfidfEmbedder, default_embedder
from ._intents import IntentModel
from ._signals import DetectionContext, DetectorRegistry, detect_thread

__all__ = [
    "AssignUnit",
    "EmbedUnit",
    "EmbedderSpec",
    "PlaceUnit",
    "SignalUnit",
    "ThreadRange",
    "UnitReport",
    "WorkUnit",
    "plan_ranges",
    "run_unit",
    "sample_ids",
    "shard_key",
]

STAGED_MODEL_KEY = "extract.intent_model.staged"
"""The intent model of the run in progress: what :class:`AssignUnit` and :class:`PlaceUnit`
workers read (the committed model is only replaced when the run's assignments are written)."""
TFIDF_KEY = "extract.tfidf_vocabulary"


# --- ranges -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadRange:
    """``lo <= thread_id < hi`` in the database's collation (``None``: unbounded)."""

    lo: str | None
    hi: str | None

    def clause(self, column: Any) -> Any:
        parts = []
        if self.lo is not None:
            parts.append(column >= self.lo)
        if self.hi is not None:
            parts.append(column < self.hi)
        return and_(*parts) if parts else column.is_not(None)


@dataclass(frozen=True, slots=True)
class Window:
    """Which threads a signal run covers: updated after ``since`` (at or after it unless
    ``strict``) and at or before ``until`` (the newest update when the run was planned, so a
    thread updated while it runs is left to the next run). ``since=None``: from the start,
    threads with no update time included."""

    since: datetime | None = None
    strict: bool = False
    until: datetime | None = None

    def clause(self) -> Any:
        c = ThreadRow.__table__.c  # type: ignore[attr-defined]
        parts = []
        if self.since is not None:
            parts.append(c.updated_at > self.since if self.strict else c.updated_at >= self.since)
        if self.until is not None:
            upper = c.updated_at <= self.until
            parts.append(upper if self.since is not None else or_(upper, c.updated_at.is_(None)))
        return and_(*parts) if parts else c.thread_id.is_not(None)


def _unassigned() -> tuple[Any, Any]:
    """``(FROM, WHERE)`` of the threads with no assignment row."""
    th, a = ThreadRow.__table__, IntentAssignmentRow.__table__  # type: ignore[attr-defined]
    return th.outerjoin(a, a.c.thread_id == th.c.thread_id), a.c.thread_id.is_(None)


def _selection(kind: str, window: Window | None) -> tuple[Any, Any]:
    if kind == "signals":
        return ThreadRow.__table__, (window or Window()).clause()  # type: ignore[attr-defined]
    return _unassigned()


def plan_ranges(store: Store, kind: str, size: int, window: Window | None = None) -> list[ThreadRange]:
    """Split the threads a stage would touch into ranges of about ``size`` threads.

    The boundaries (every ``size``-th thread id, a window function in the database) are all the
    driver holds: memory does not grow with the store. ``kind`` is ``signals`` (threads in
    ``window``) or ``intents`` (threads with no intent assignment).
    """
    th = ThreadRow.__table__.c  # type: ignore[attr-defined]
    source, where = _selection(kind, window)
    numbered = (select(th.thread_id, func.row_number().over(order_by=th.thread_id).label("rn"))
                .select_from(source).where(where).subquery())
    q = (select(numbered.c.thread_id).where((numbered.c.rn - 1) % size == 0)
         .order_by(numbered.c.thread_id))
    with store.engine.connect() as conn:
        bounds = [r[0] for r in conn.execute(q)]
    if not bounds:
        return []
    # The first range is open below: a thread added meanwhile with a smaller id still has one.
    edges: list[str | None] = [None, *bounds[1:], None]
    return [ThreadRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def range_ids(store: Store, kind: str, rng: ThreadRange, window: Window | None = None) -> list[str]:
    """The thread ids of ``rng`` a stage touches now, in id order."""
    th = ThreadRow.__table__.c  # type: ignore[attr-defined]
    source, where = _selection(kind, window)
    q = (select(th.thread_id).select_from(source).where(where, rng.clause(th.thread_id))
         .order_by(th.thread_id))
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(q)]


def shard_key(thread_id: str) -> int:
    """A stable 64-bit hash of a thread id (the same in every process and on every machine)."""
    return int.from_bytes(hashlib.blake2b(thread_id.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


def sample_ids(ids: Iterable[str], k: int) -> list[str]:
    """A fixed sample of ``k`` ids (the smallest :func:`shard_key` values), in input order.

    Streams: holds ``k`` ids, whatever the input's length.
    """
    chosen = heapq.nsmallest(k, ((shard_key(t), pos, t) for pos, t in enumerate(ids)))
    return [t for _, _, t in sorted(chosen, key=lambda c: c[1])]


# --- what units report ------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process' peak resident memory so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


@dataclass
class UnitReport:
    """What one unit did (small: it travels back from the worker)."""

    threads: int = 0
    """Threads the unit examined."""
    written: int = 0
    """Threads whose results it wrote."""
    kinds: dict[str, int] = field(default_factory=dict)
    """Signals found, by kind."""
    leftovers: list[str] = field(default_factory=list)
    """:class:`AssignUnit`: threads no intent accepted (for novelty)."""
    signals: list[Signal] | None = None
    """:class:`SignalUnit` with ``collect``: the signals themselves."""
    vectors: Any = None
    """:class:`EmbedUnit`: ``(ids, float32 array)``."""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    """Peak memory of the process that ran it."""


# --- the embedder and the model, per worker process ---------------------------------------------


@dataclass(frozen=True)
class EmbedderSpec:
    """How a worker gets the run's embedder: the mode's own model, the vocabulary TF-IDF fitted
    (read from the store by its digest), or an embedder object (pickled to the worker)."""

    mode: str = "default"
    embedder: Embedder | None = None
    tfidf_digest: str | None = None

    @property
    def key(self) -> str:
        if self.embedder is not None:
            return f"object:{getattr(self.embedder, 'name', type(self.embedder).__name__)}"
        return f"{self.mode}:{self.tfidf_digest or ''}"


_STORES: dict[str, Store] = {}
_EMBEDDERS: dict[str, Embedder] = {}
_MODELS: dict[str, IntentModel] = {}


def worker_store(url: str) -> Store:
    """This process' store for ``url`` (opened once; the schema is the driver's business)."""
    store = _STORES.get(url)
    if store is None:
        store = _STORES[url] = Store(url, create=False)
    return store


def tfidf_from_store(store: Store, digest: str | None = None) -> TfidfEmbedder | None:
    """The TF-IDF embedder with the vocabulary saved in the store (None when there is none, or
    when it is not the one with ``digest``)."""
    blob = store.get_meta(TFIDF_KEY)
    if not blob or (digest is not None and hashlib.sha256(blob.encode()).hexdigest() != digest):
        return None
    emb = TfidfEmbedder()
    # Our own store's data, written by the driver (extract's ``_fit_tfidf``).
    emb._pipeline = pickle.loads(base64.b64decode(blob))
    emb._dim = int(emb._pipeline.steps[1][1].n_components)
    return emb


def worker_embedder(spec: EmbedderSpec, store: Store) -> Embedder:
    """This process' embedder for ``spec``."""
    emb = _EMBEDDERS.get(spec.key)
    if emb is None:
        if spec.embedder is not None:
            emb = spec.embedder
        elif spec.mode == "tfidf":
            emb = tfidf_from_store(store, spec.tfidf_digest)
            if emb is None:
                raise ExtractionError("the TF-IDF vocabulary of this run is not in the store")
        else:
            emb = default_embedder(spec.mode)  # type: ignore[arg-type]
        _EMBEDDERS[spec.key] = emb
    return emb


def stage_model(store: Store, model: IntentModel) -> str:
    """Save ``model`` as the run's staged model; returns its token (a digest)."""
    import json

    data = model.to_dict()
    token = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    store.set_meta(STAGED_MODEL_KEY, {"token": token, "model": data})
    _MODELS[token] = model
    return token


def staged_model(store: Store, token: str) -> IntentModel:
    """The staged model with ``token`` (cached per process)."""
    model = _MODELS.get(token)
    if model is None:
        staged = store.get_meta(STAGED_MODEL_KEY) or {}
        if staged.get("token") != token:
            raise ExtractionError(f"the intent model {token} of this run is no longer staged "
                                  "(another extraction replaced it)")
        model = _MODELS[token] = IntentModel.from_dict(staged["model"])
    return model


def _embed_openings(store: Store, spec: EmbedderSpec, ids: Sequence[str],
                    embedder: Embedder | None) -> tuple[list[str], list[str], Any]:
    """``(ids with an opening, their openings, vectors)``."""
    from ._extract import opening_texts

    openings = opening_texts(store, ids)
    keep = [t for t in ids if openings.get(t)]
    texts = [openings[t] for t in keep]
    emb = embedder if embedder is not None else worker_embedder(spec, store)
    if not texts:
        return keep, texts, np.zeros((0, emb.dim), dtype=np.float32)
    return keep, texts, np.asarray(emb.embed(texts), dtype=np.float32)


def _write_assignments(store: Store, rows: dict[str, tuple[str | None, str | None]]) -> None:
    """Upsert assignments in one transaction (a unit is all or nothing)."""
    if rows:
        store.write_rows([("intent_assignment", {"thread_id": t, "intent_id": a, "sub_intent_id": b})
                          for t, (a, b) in rows.items()])


def _pairs(top: Sequence[str | None], leaf: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    return [(a, b if b != a else None) for a, b in zip(top, leaf, strict=True)]


# --- the units --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalUnit:
    """Detect and store the signals of the threads of ``range`` in ``window``."""

    url: str
    range: ThreadRange
    window: Window
    registry: DetectorRegistry
    context: DetectionContext
    collect: bool = False

    def run(self, store: Store, embedder: Embedder | None = None) -> UnitReport:
        ids = range_ids(store, "signals", self.range, self.window)
        threads = store.list_threads(thread_ids=ids)
        found: list[Signal] = []
        with gc_paused():  # detectors build many small acyclic objects (see gc_paused)
            for thread in threads:
                # detect_thread, not detect_signals: the batch statistic (latency threshold) is
                # the whole run's, set in the context by the driver, never this unit's own.
                found.extend(detect_thread(thread, registry=self.registry, context=self.context))
        # Every id of the range, loaded or not: a thread that lost its turns loses its signals.
        store.save_signals(ids, found)
        return UnitReport(threads=len(threads), written=len(ids),
                          kinds=dict(Counter(s.kind for s in found)),
                          signals=found if self.collect else None)


@dataclass(frozen=True)
class EmbedUnit:
    """Embed the openings of ``ids`` (the intent-discovery sample); writes nothing."""

    url: str
    ids: tuple[str, ...]
    embedder: EmbedderSpec

    def run(self, store: Store, embedder: Embedder | None = None) -> UnitReport:
        keep, _texts, x = _embed_openings(store, self.embedder, self.ids, embedder)
        return UnitReport(threads=len(keep), vectors=(keep, x))


@dataclass(frozen=True)
class AssignUnit:
    """Place the unassigned threads of ``range`` with the staged model ``token``."""

    url: str
    range: ThreadRange
    embedder: EmbedderSpec
    token: str

    def run(self, store: Store, embedder: Embedder | None = None) -> UnitReport:
        model = staged_model(store, self.token)
        ids = range_ids(store, "intents", self.range)
        keep, _texts, x = _embed_openings(store, self.embedder, ids, embedder)
        if not keep:
            return UnitReport(threads=0)
        top = model.assign(x)
        leaf = model.assign(x, level="leaf")
        rows = {t: p for t, p in zip(keep, _pairs(top, leaf), strict=True) if p[0] is not None}
        _write_assignments(store, rows)
        return UnitReport(threads=len(keep), written=len(rows),
                          leftovers=[t for t, a in zip(keep, top, strict=True) if a is None])


@dataclass(frozen=True)
class PlaceUnit:
    """Offer leftover threads to the intents novelty created (``fresh``); write every one."""

    url: str
    ids: tuple[str, ...]
    embedder: EmbedderSpec
    token: str
    fresh: tuple[str, ...]

    def run(self, store: Store, embedder: Embedder | None = None) -> UnitReport:
        full = staged_model(store, self.token)
        fresh = set(self.fresh)
        # Only the new intents (and their sub-intents) compete: the known ones refused these.
        model = IntentModel(embedder_name=full.embedder_name, dim=full.dim,
                            records=[r for r in full.records
                                     if r.id in fresh or r.parent_id in fresh])
        keep, _texts, x = _embed_openings(store, self.embedder, self.ids, embedder)
        if not keep:
            return UnitReport()
        top = model.assign(x)
        leaf = model.assign(x, level="leaf")
        _write_assignments(store, dict(zip(keep, _pairs(top, leaf), strict=True)))
        return UnitReport(threads=len(keep), written=len(keep))


WorkUnit = SignalUnit | EmbedUnit | AssignUnit | PlaceUnit


def run_unit(unit: WorkUnit, store: Store | None = None, embedder: Embedder | None = None) -> UnitReport:
    """Run one unit: in the driver (``store``/``embedder`` given) or in a worker process, which
    opens (once) its own store from the unit's URL and its own embedder from its spec."""
    t0 = time.perf_counter()
    try:
        report = unit.run(store if store is not None else worker_store(unit.url), embedder)
    except (ExtractionError, StoreError):
        raise
    except Exception as exc:
        raise ExtractionError(f"{type(unit).__name__} failed: {type(exc).__name__}: {exc}") from exc
    report.seconds = time.perf_counter() - t0
    report.peak_rss_mb = _peak_rss_mb()
    return report


def reset_assignments(store: Store, model_key: str) -> None:
    """Forget every assignment and the committed intent model, in one transaction (a first run
    or a rebuild starts from nothing; killed half way, the next run starts from nothing again)."""
    a, m = IntentAssignmentRow.__table__, MetaRow.__table__  # type: ignore[attr-defined]
    try:
        with store.engine.begin() as conn:
            conn.execute(delete(a))
            conn.execute(delete(m).where(m.c.key == model_key))
    except SQLAlchemyError as exc:
        raise StoreError(f"resetting intent assignments in {store.safe_url} failed: {exc}") from exc


def count_unassigned(store: Store) -> int:
    """Threads with no assignment row."""
    source, where = _unassigned()
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(source).where(where)).scalar() or 0)
