"""Stage 3 over a store: failure signals and intents for new threads, persisted, incremental.

``extract(store)`` reads the threads captured since the last run, runs every registered signal
detector on them, embeds each thread's opening request with the local model and assigns it to an
intent. The first run discovers the intents; later runs assign new threads to the same intent ids
(centroid similarity) and turn dense groups of unassigned threads into new intents (novelty), so
cohorts stay comparable over time. Signals, intents and assignments go back into the store.
"""

from __future__ import annotations

import base64
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from .._perf import gc_paused
from ..errors import ExtractionError
from ..store import Store
from ..types import Intent, Signal, Thread
from ._embed import Embedder, TfidfEmbedder, default_embedder
from ._intents import IntentModel, build_intent_model
from ._signals import (
    DetectionContext,
    DetectorRegistry,
    detect_signals,
    latency_ms_of,
    latency_threshold,
)

__all__ = [
    "ExtractionResult",
    "assign_intents",
    "extract",
    "extract_signals",
    "opening_text",
    "opening_texts",
]

logger = logging.getLogger("loop_middleware.extract")

MODEL_KEY = "extract.intent_model"
WATERMARK_KEY = "extract.watermark"
TFIDF_KEY = "extract.tfidf_vocabulary"
MAX_OPENING_CHARS = 600
"""Opening requests are cut to this many characters before embedding (a pasted 4,000-token log
says little about the intent beyond its first lines)."""

FAST_FIT_SAMPLE = 2000
"""In ``fast`` mode the first run discovers intents on this many openings (a fixed random
sample) and places the others by nearest intent and novelty, as later runs do."""
_CHUNK = 500
"""Threads read and examined at a time (also keeps ``IN (...)`` lists short)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called while embedding and detecting."""


@dataclass
class ExtractionResult:
    """What one extraction run did and what the store now holds."""

    threads_total: int
    """Threads in the store."""
    threads_processed: int
    """New or updated threads handled by this run."""
    signals: list[Signal]
    """The signals of the processed threads."""
    intents: list[Intent]
    """Every intent and sub-intent, with up-to-date sizes."""
    assignments: dict[str, str | None]
    """``thread_id -> intent id`` for every thread in the store."""
    new_intents: list[str] = field(default_factory=list)
    """Ids of intents created by this run (the first run: all of them)."""
    embedder: str = ""
    seconds: float = 0.0

    def share(self, intent_id: str) -> float:
        """The share of all assigned threads that belong to ``intent_id``."""
        total = len(self.assignments)
        return sum(1 for v in self.assignments.values() if v == intent_id) / total if total else 0.0

    def top_signals(self, intent_id: str, k: int = 3) -> list[tuple[str, int]]:
        """The most frequent signal kinds among the intent's threads (distinct threads)."""
        members = {t for t, v in self.assignments.items() if v == intent_id}
        seen = {(s.thread_id, s.kind) for s in self.signals if s.thread_id in members}
        return Counter(kind for _, kind in seen).most_common(k)


def opening_text(thread: Thread) -> str:
    """The text that says what a thread is about: its first user message (cut)."""
    for turn in thread.turns:
        text = turn.user_text.strip()
        if text:
            return text[:MAX_OPENING_CHARS]
    return ""


def opening_texts(store: Store, thread_ids: Sequence[str] | None = None) -> dict[str, str]:
    """``thread_id -> opening request`` (as :func:`opening_text`) read straight from the turn
    table, without building whole threads."""
    from sqlalchemy import select

    from ..capture._messages import clean_text
    from ..store._tables import TurnRow

    t = TurnRow.__table__.c  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    ids = list(thread_ids) if thread_ids is not None else [None]
    for i in range(0, len(ids), 500):
        q = select(t.thread_id, t.started_at, t.id, t.input_messages).order_by(
            t.thread_id, t.started_at, t.id)
        if thread_ids is not None:
            q = q.where(t.thread_id.in_(ids[i : i + 500]))
        with store.engine.connect() as conn:
            for tid, _started, _id, msgs in conn.execute(q):
                if out.get(tid):
                    continue
                text = "\n".join(str(m.get("content") or "") for m in (msgs or [])
                                 if isinstance(m, dict) and m.get("role") == "user").strip()
                out[tid] = clean_text(text)[:MAX_OPENING_CHARS] if text else ""
    return out


def _utc(d: datetime) -> datetime:
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _embed(embedder: Embedder, texts: Sequence[str], progress: Progress | None, batch: int = 512) -> Any:
    parts = []
    for i in range(0, len(texts), batch):
        parts.append(embedder.embed(list(texts[i : i + batch])))
        if progress:
            progress("embedding", min(i + batch, len(texts)), len(texts))
    if not parts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.vstack(parts)


def _threads_since(store: Store, since: datetime | None, strictly_after: bool) -> list[tuple[str, datetime | None]]:
    """``(thread_id, updated_at)`` of the threads updated at (or strictly after) ``since``,
    oldest first."""
    rows = store.thread_index(since=since)
    if strictly_after and since is not None:
        # Strictly after the watermark: the newest thread of the last run is not redone.
        rows = [(t, u) for t, u in rows if u is None or _utc(u) > _utc(since)]
    return rows


def _turn_latencies(store: Store, thread_ids: Sequence[str]) -> list[float | None]:
    """Every turn's latency (as ``turn_latency_ms``) in these threads, from the turn table
    alone: the batch statistic the latency detector needs before any thread is examined."""
    from sqlalchemy import select

    from ..store._tables import TurnRow

    c = TurnRow.__table__.c  # type: ignore[attr-defined]
    out: list[float | None] = []
    with store.engine.connect() as conn:
        for i in range(0, len(thread_ids), _CHUNK):
            q = select(c.latency_ms, c.started_at, c.ended_at).where(
                c.thread_id.in_(thread_ids[i : i + _CHUNK]))
            for lat, started, ended in conn.execute(q):
                out.append(latency_ms_of(lat, started, ended))
    return out


def extract_signals(
    store: Store,
    since: datetime | None = None,
    *,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
    progress: Progress | None = None,
) -> tuple[int, list[Signal]]:
    """Detect failure signals in the threads updated since ``since`` (default: since the last
    run) and store them, replacing those threads' earlier signals.

    Threads are read, examined and their signals saved in chunks of a few hundred: memory stays
    flat on a store of any size, and (in CPython) the cyclic garbage collector does not walk an
    ever-growing heap of loaded messages, which otherwise costs more than the detectors
    themselves. The batch statistic (the latency outlier threshold) is computed over *all* the
    threads first, from the turn table, so results equal :func:`detect_signals` on the whole
    batch.

    Returns:
        (threads processed, their signals).
    """
    after_mark = False
    if since is None:
        mark = store.get_meta(WATERMARK_KEY)
        since = datetime.fromisoformat(mark) if mark else None
        after_mark = since is not None
    index = _threads_since(store, since, after_mark)
    ids = [t for t, _ in index]
    # The watermark is the newest update seen, so the next run starts where this one ended.
    newest = max((u for _, u in index if u is not None), default=None)
    ctx = DetectionContext() if context is None else context
    if ids and ctx.latency_threshold_ms is None:
        threshold = latency_threshold(_turn_latencies(store, ids), z=ctx.latency_z,
                                      min_samples=ctx.latency_min_samples)
        if threshold is not None:
            ctx = replace(ctx, latency_threshold_ms=threshold)
    signals: list[Signal] = []
    processed = 0
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        threads = store.list_threads(thread_ids=chunk)
        with gc_paused():  # detectors build many small acyclic objects (see gc_paused)
            found = detect_signals(threads, registry=registry, context=ctx)
        # Every id of the chunk, loaded or not: a thread that lost its turns loses its signals.
        store.save_signals(chunk, found)
        signals.extend(found)
        processed += len(threads)
        if progress:
            progress("signals", min(i + _CHUNK, len(ids)), len(ids))
    if newest is not None:
        store.set_meta(WATERMARK_KEY, newest.isoformat())
    return processed, signals


def _fitted_tfidf(
    store: Store, emb: TfidfEmbedder, openings: dict[str, str], model: IntentModel | None
) -> IntentModel | None:
    """TF-IDF has no pretrained vocabulary: reuse the one the stored intents were built with
    (so ids stay stable across runs), or fit a new one on every opening request (and then the
    intents are rediscovered)."""
    blob = store.get_meta(TFIDF_KEY) if model is not None else None
    if blob:
        # Our own store's data, written by the branch below.
        emb._pipeline = pickle.loads(base64.b64decode(blob))
        emb._dim = int(emb._pipeline.steps[1][1].n_components)
        if emb.dim == model.dim:  # type: ignore[union-attr]
            return model
    texts = [t for t in openings.values() if t]
    if len(texts) < 2:
        return model  # nothing to learn a vocabulary from (and nothing to assign)
    emb.fit(texts)
    store.set_meta(TFIDF_KEY, base64.b64encode(pickle.dumps(emb._pipeline)).decode("ascii"))
    return None


def assign_intents(
    store: Store,
    *,
    mode: Literal["default", "fast", "tfidf"] = "default",
    embedder: Embedder | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    min_cluster_size: int | None = None,
) -> tuple[list[Intent], dict[str, str | None], list[str], str]:
    """Give every unassigned thread an intent: discover the intents on the first run (or with
    ``rebuild``), else assign to the stored intents and turn dense unassigned groups into new
    ones. Ids never change once given.

    Returns:
        (all intents with sizes, ``thread_id -> intent id`` for all threads, new intent ids,
        embedder name).
    """
    emb = embedder or default_embedder(mode)
    emb_name = getattr(emb, "name", type(emb).__name__)
    stored_model = None if rebuild else store.get_meta(MODEL_KEY)
    known = {} if rebuild else store.load_assignments()
    model: IntentModel | None = None
    if stored_model is not None:
        model = IntentModel.from_dict(stored_model)
        if model.embedder_name != emb_name:
            logger.warning("intent model was built with %s, now embedding with %s: rediscovering",
                           model.embedder_name, emb_name)
            model, known = None, {}
    if isinstance(emb, TfidfEmbedder) and emb._pipeline is None:
        model = _fitted_tfidf(store, emb, opening_texts(store), model)
        if model is None:
            known = {}
    # Only the openings of unassigned threads are read (not whole threads): cheap on big stores.
    todo_ids = [t for t in store.thread_ids() if t not in known]
    openings = opening_texts(store, todo_ids) if todo_ids else {}
    todo = [t for t in todo_ids if openings.get(t)]
    texts = [openings[t] for t in todo]
    new_ids: list[str] = []
    if model is None and len(texts) < 2:
        # Too few threads to discover intents from yet: they wait for the next run.
        return [], store.load_assignments(), [], emb_name
    try:
        vectors = _embed(emb, texts, progress)
        if model is None:
            if len(texts) >= 2:
                model, top = build_intent_model(
                    texts, embedder=emb, embeddings=vectors, min_cluster_size=min_cluster_size,
                    fit_sample=FAST_FIT_SAMPLE if mode == "fast" else None)
                new_ids = [r.id for r in model.records]
            else:
                top = [None] * len(texts)
        else:
            before = {r.id for r in model.records}
            top = model.update(texts, vectors, embedder=emb)
            new_ids = [r.id for r in model.records if r.id not in before]
        leaf = model.assign(vectors, level="leaf") if model is not None and len(texts) else top
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"intent discovery failed on {len(texts)} threads: {exc}") from exc
    store.save_assignments(
        {t: (a, b if b != a else None) for t, a, b in zip(todo, top, leaf, strict=True)}
    )
    all_assignments = store.load_assignments()
    intents: list[Intent] = []
    if model is not None:
        sizes = Counter(all_assignments.values())
        sub_sizes = Counter(store.load_assignments(leaf=True).values())
        for rec in model.records:
            rec.size = sizes.get(rec.id, 0) if rec.parent_id is None else sub_sizes.get(rec.id, 0)
        intents = model.intents()
        store.set_meta(MODEL_KEY, model.to_dict())
        store.save_intents(intents)
    return intents, all_assignments, new_ids, emb_name


def extract(
    store: Store,
    since: datetime | None = None,
    *,
    mode: Literal["default", "fast", "tfidf"] = "default",
    embedder: Embedder | None = None,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    min_cluster_size: int | None = None,
) -> ExtractionResult:
    """Extract failure signals and intents for the threads captured since the last run.

    Args:
        store: Where threads come from and results go.
        since: Detect signals in threads updated at or after this time (default: since the
            last run; everything on the first run).
        mode: ``default`` (the local MiniLM model), ``fast`` (a static model distilled from it,
            and intents discovered on a sample of :data:`FAST_FIT_SAMPLE` openings), or
            ``tfidf`` (no model needed). When ``embedder`` is given it replaces the mode's
            model (the ``fast`` sample still applies).
        embedder: Any :class:`Embedder` (e.g. wrapping a LangChain ``Embeddings``).
        registry: Signal detectors to run (default: the built-ins plus any you registered).
        context: Detector settings.
        rebuild: Forget the stored intents and rediscover them from every thread.
        progress: Called with ``(stage, done, total)`` during long steps.
        min_cluster_size: Smallest group that becomes an intent (default: scaled to the data).

    Raises:
        ExtractionError: Embedding or clustering failed.
        StoreError: The store cannot be read or written.
    """
    t0 = time.perf_counter()
    processed, signals = extract_signals(store, since, registry=registry, context=context,
                                         progress=progress)
    intents, assignments, new_ids, emb_name = assign_intents(
        store, mode=mode, embedder=embedder, rebuild=rebuild, progress=progress,
        min_cluster_size=min_cluster_size,
    )
    return ExtractionResult(
        threads_total=store.count_threads(),
        threads_processed=processed,
        signals=signals,
        intents=intents,
        assignments=assignments,
        new_intents=new_ids,
        embedder=emb_name,
        seconds=time.perf_counter() - t0,
    )
