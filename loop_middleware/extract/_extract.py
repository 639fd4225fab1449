"""Stage 3 over a store: failure signals and intents for new threads, persisted, incremental.

``extract(store)`` reads the threads captured since the last run, runs every registered signal
detector on them, embeds each thread's opening request with the local model and assigns it to an
intent. The first run discovers the intents; later runs assign new threads to the same intent ids
(centroid similarity) and turn dense groups of unassigned threads into new intents (novelty), so
cohorts stay comparable over time. Signals, intents and assignments go back into the store.

The work is split into idempotent units over ranges of thread ids (:mod:`._units`) that an
executor runs: here one after the other (the default), in ``workers`` local processes, or on Ray
(``executor="ray"``). The driver only plans ranges, fits the intents on a fixed sample and
decides novelty once; it never holds every thread, so memory stays flat in the store's size.
The results do not depend on the executor: the same units, the same ranges, the same order.

A run killed half way can simply be run again: units replace what they write, the committed
intent model and the signal watermark only move once their stage is complete, and a first run
(no model yet) starts from nothing again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import func, select

from ..errors import ConfigError, ExtractionError
from ..scale import Executor, executor_for
from ..store import Store
from ..store._tables import SignalRow, ThreadRow, TurnRow
from ..types import Intent, Signal, Thread
from ._embed import Embedder, TfidfEmbedder, default_embedder
from ._intents import IntentModel, build_intent_model, default_min_cluster_size
from ._signals import DetectionContext, DetectorRegistry, latency_ms_of, latency_threshold
from ._signals import default_registry as _default_registry
from ._units import (
    STAGED_MODEL_KEY,
    TFIDF_KEY,
    AssignUnit,
    EmbedderSpec,
    EmbedUnit,
    PlaceUnit,
    SignalUnit,
    UnitReport,
    Window,
    WorkUnit,
    count_unassigned,
    plan_ranges,
    reset_assignments,
    run_unit,
    sample_ids,
    shard_key,
    stage_model,
    tfidf_from_store,
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
RUN_KEY = "extract.intent_run"
"""An intent run in progress: how many threads it started with (its novelty threshold), so a
run killed half way and run again decides novelty exactly as the uninterrupted one would."""
MAX_OPENING_CHARS = 600
"""Opening requests are cut to this many characters before embedding (a pasted 4,000-token log
says little about the intent beyond its first lines)."""

FAST_FIT_SAMPLE = 2000
"""In ``fast`` mode the first run discovers intents on this many openings (a fixed sample) and
places the others by nearest intent and novelty, as later runs do."""
DEFAULT_FIT_SAMPLE = 10_000
"""In the other modes, the sample the intents are discovered on (the scale
``benchmarks/intent_discovery.py`` measures; clustering memory grows with its square). Stores
up to this size are clustered whole."""
CHUNK = 500
"""Threads per work unit (also keeps ``IN (...)`` lists short)."""

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work units finish (threads done of total)."""
Mode = Literal["default", "fast", "tfidf"]


@dataclass
class ExtractionResult:
    """What one extraction run did and what the store now holds.

    ``signals`` and ``assignments`` are read from the store when first used (on a big store
    they are big; the run itself never holds them).
    """

    threads_total: int
    """Threads in the store."""
    threads_processed: int
    """New or updated threads handled by this run."""
    intents: list[Intent]
    """Every intent and sub-intent, with up-to-date sizes."""
    new_intents: list[str] = field(default_factory=list)
    """Ids of intents created by this run (the first run: all of them)."""
    embedder: str = ""
    seconds: float = 0.0
    signal_counts: dict[str, int] = field(default_factory=dict)
    """Signals found by this run, by kind."""
    executor: str = "inline"
    units: int = 0
    """Work units run."""
    peak_worker_rss_mb: float = 0.0
    """The largest peak memory of a process that ran a unit (this one included when inline)."""
    unit_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per kind of unit: units run, threads they examined, seconds spent inside them (summed
    over workers: the CPU cost to project from, not the wall time)."""
    store: Store | None = field(default=None, repr=False, compare=False)
    window: Window | None = field(default=None, repr=False, compare=False)
    _signals: list[Signal] | None = field(default=None, repr=False, compare=False)
    _assignments: dict[str, str | None] | None = field(default=None, repr=False, compare=False)

    @property
    def signals(self) -> list[Signal]:
        """The stored signals of the threads this run processed (in thread order, then turn,
        then kind)."""
        if self._signals is None:
            self._signals = [] if self.store is None else load_window_signals(self.store, self.window)
        return self._signals

    @property
    def assignments(self) -> dict[str, str | None]:
        """``thread_id -> intent id`` for every thread in the store."""
        if self._assignments is None:
            self._assignments = {} if self.store is None else self.store.load_assignments()
        return self._assignments

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
    from ..capture._messages import clean_text

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


def load_window_signals(store: Store, window: Window | None) -> list[Signal]:
    """The stored signals of the threads in ``window``."""
    sg, th = SignalRow.__table__.c, ThreadRow.__table__.c  # type: ignore[attr-defined]
    q = (select(sg.payload).join(ThreadRow.__table__, th.thread_id == sg.thread_id)  # type: ignore[attr-defined]
         .where((window or Window()).clause())
         .order_by(th.created_at, th.thread_id, sg.turn_index, sg.kind, sg.id))
    with store.engine.connect() as conn:
        return [Signal.model_validate(r[0]) for r in conn.execute(q)]


# --- running units ------------------------------------------------------------------------------


class _Runner:
    """Runs units on an executor: inline ones with the driver's own store and embedder."""

    def __init__(self, store: Store, executor: Executor, embedder: Embedder | None,
                 progress: Progress | None) -> None:
        self.store, self.executor, self.progress = store, executor, progress
        self.embedder = embedder
        self.units = 0
        self.peak_rss_mb = 0.0
        self.costs: dict[str, dict[str, float]] = {}
        if executor.parallel and store.dialect == "sqlite" and store.engine.url.database in (None, "", ":memory:"):
            raise ConfigError("workers need a store they can open: an in-memory SQLite database "
                              "is private to this process (use a file or PostgreSQL)")

    def map(self, units: Sequence[WorkUnit], stage: str, total: int | None = None) -> list[UnitReport]:
        if not units:
            return []
        if self.executor.parallel:
            fn: Callable[[WorkUnit], UnitReport] = run_unit
        else:
            fn = functools.partial(run_unit, store=self.store, embedder=self.embedder)
        done = [0]

        def tick(_i: int, report: UnitReport) -> None:
            done[0] += report.threads
            if self.progress:
                self.progress(stage, done[0], max(done[0], total or 0))

        reports = self.executor.map(fn, units, on_result=tick)
        self.units += len(units)
        self.peak_rss_mb = max([self.peak_rss_mb, *(r.peak_rss_mb for r in reports)])
        cost = self.costs.setdefault(type(units[0]).__name__, {"units": 0, "threads": 0, "seconds": 0.0})
        cost["units"] += len(units)
        cost["threads"] += sum(r.threads for r in reports)
        cost["seconds"] += sum(r.seconds for r in reports)
        return reports


def _check_picklable(what: str, value: Any) -> None:
    try:
        pickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
        raise ConfigError(f"{what} cannot be sent to worker processes ({exc}); define detectors "
                          "and embedders at module level, or run with workers=1") from None


# --- signals ------------------------------------------------------------------------------------


def _window_latencies(store: Store, window: Window) -> list[float | None]:
    """Every turn latency (as ``turn_latency_ms``) of the threads in ``window``, from the turn
    table alone: the batch statistic the latency detector needs before any thread is examined."""
    c, th = TurnRow.__table__.c, ThreadRow.__table__  # type: ignore[attr-defined]
    q = (select(c.latency_ms, c.started_at, c.ended_at)
         .join(th, th.c.thread_id == c.thread_id).where(window.clause()))
    with store.engine.connect() as conn:
        return [latency_ms_of(lat, s, e) for lat, s, e in conn.execute(q)]


def _signals_stage(
    store: Store, since: datetime | None, runner: _Runner, *, registry: DetectorRegistry | None,
    context: DetectionContext | None, chunk: int, collect: bool,
) -> tuple[int, dict[str, int], list[Signal] | None, Window]:
    strict = False
    if since is None:
        mark = store.get_meta(WATERMARK_KEY)
        since = datetime.fromisoformat(mark) if mark else None
        strict = since is not None  # the newest thread of the last run is not redone
    th = ThreadRow.__table__.c  # type: ignore[attr-defined]
    probe = Window(since, strict)
    with store.engine.connect() as conn:
        until = conn.execute(select(func.max(th.updated_at)).where(probe.clause())).scalar()
        total = int(conn.execute(select(func.count()).select_from(ThreadRow.__table__)  # type: ignore[attr-defined]
                                 .where(probe.clause())).scalar() or 0)
    # The window ends at the newest update seen now: a thread updated while the run goes is
    # left whole to the next run, and the watermark is exactly where this run ended.
    window = Window(since, strict, until)
    reg = _default_registry if registry is None else registry
    ctx = DetectionContext() if context is None else context
    if total and ctx.latency_threshold_ms is None:
        threshold = latency_threshold(_window_latencies(store, window), z=ctx.latency_z,
                                      min_samples=ctx.latency_min_samples)
        if threshold is not None:
            ctx = replace(ctx, latency_threshold_ms=threshold)
    if runner.executor.parallel:
        _check_picklable("the detector registry", reg)
        _check_picklable("the detection context", ctx)
    units = [SignalUnit(store.url, r, window, reg, ctx, collect)
             for r in plan_ranges(store, "signals", chunk, window)]
    reports = runner.map(units, "signals", total)
    kinds: Counter[str] = Counter()
    for rep in reports:
        kinds.update(rep.kinds)
    signals: list[Signal] | None = None
    if collect:
        # Units run in thread-id order; results come back in thread order, as one batch would.
        position = {t: i for i, (t, _) in enumerate(store.thread_index(since=since))}
        found = [s for rep in reports for s in rep.signals or []]
        signals = sorted(found, key=lambda s: position.get(s.thread_id, len(position)))
    if until is not None:
        store.set_meta(WATERMARK_KEY, until.isoformat())
    return sum(r.threads for r in reports), dict(kinds), signals, window


def extract_signals(
    store: Store,
    since: datetime | None = None,
    *,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    executor: Executor | str | None = None,
    chunk_size: int = CHUNK,
) -> tuple[int, list[Signal]]:
    """Detect failure signals in the threads updated since ``since`` (default: since the last
    run) and store them, replacing those threads' earlier signals.

    Threads are read, examined and their signals saved in units of ``chunk_size`` threads:
    memory stays flat on a store of any size, and (in CPython) the cyclic garbage collector does
    not walk an ever-growing heap of loaded messages, which otherwise costs more than the
    detectors themselves. The batch statistic (the latency outlier threshold) is computed over
    *all* the threads first, from the turn table, so results equal :func:`detect_signals` on the
    whole batch, whatever executor runs the units.

    Args:
        workers: Local worker processes (see :func:`extract`).
        executor: An :class:`~loop_middleware.scale.Executor`, or ``"ray"``.

    Returns:
        (threads processed, their signals in thread order).
    """
    ex, owned = executor_for(workers, executor)
    try:
        runner = _Runner(store, ex, None, progress)
        n, _kinds, signals, _window = _signals_stage(store, since, runner, registry=registry,
                                                     context=context, chunk=chunk_size, collect=True)
    finally:
        if owned:
            ex.close()
    return n, signals or []


# --- intents ------------------------------------------------------------------------------------


def _fit_sample(store: Store, k: int) -> tuple[list[str], list[str]]:
    """``(ids, openings)`` of the intent-discovery sample: the ``k`` threads with an opening
    request and the smallest :func:`~._units.shard_key`, in thread order (the whole store, in
    thread order, when it has at most ``k``). Streams the thread ids: holds about ``2k``."""
    th = ThreadRow.__table__.c  # type: ignore[attr-defined]
    want = 2 * k
    while True:
        with store.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=20_000).execute(
                select(th.thread_id).order_by(th.created_at, th.thread_id))
            picked = sample_ids((r[0] for r in rows), want)
        openings = opening_texts(store, picked)
        by_hash = sorted((t for t in picked if openings.get(t)), key=shard_key)[:k]
        if len(by_hash) >= k or len(picked) < want:
            chosen = set(by_hash)
            ids = [t for t in picked if t in chosen]
            return ids, [openings[t] for t in ids]
        want *= 2  # many threads without an opening: look further


def _embed_ids(runner: _Runner, spec: EmbedderSpec, ids: Sequence[str], chunk: int
               ) -> tuple[list[str], Any]:
    """Embed the openings of ``ids`` in units; ``(ids that had one, vectors)`` in ``ids`` order."""
    units = [EmbedUnit(runner.store.url, tuple(ids[i : i + chunk]), spec)
             for i in range(0, len(ids), chunk)]
    reports = runner.map(units, "embedding", len(ids))
    keep = [t for rep in reports for t in rep.vectors[0]]
    parts = [rep.vectors[1] for rep in reports if len(rep.vectors[0])]
    return keep, (np.vstack(parts) if parts else np.zeros((0, 1), dtype=np.float32))


def _pairs(top: Sequence[str | None], leaf: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    return [(a, b if b != a else None) for a, b in zip(top, leaf, strict=True)]


def _fit_tfidf(store: Store, emb: TfidfEmbedder, texts: list[str]) -> str:
    """Fit TF-IDF on the sample's openings and save the vocabulary (workers and later runs read
    it, so ids stay stable); returns its digest."""
    emb.fit(texts)
    blob = base64.b64encode(pickle.dumps(emb._pipeline)).decode("ascii")
    store.set_meta(TFIDF_KEY, blob)
    return hashlib.sha256(blob.encode()).hexdigest()


def _intents_stage(
    store: Store, runner: _Runner, *, mode: Mode, embedder: Embedder | None, rebuild: bool,
    min_cluster_size: int | None, chunk: int, fit_sample: int | None,
) -> tuple[list[Intent], list[str], str]:
    emb = embedder or default_embedder(mode)
    emb_name = getattr(emb, "name", type(emb).__name__)
    stored_model = None if rebuild else store.get_meta(MODEL_KEY)
    model: IntentModel | None = None
    if stored_model is not None:
        model = IntentModel.from_dict(stored_model)
        if model.embedder_name != emb_name:
            logger.warning("intent model was built with %s, now embedding with %s: rediscovering",
                           model.embedder_name, emb_name)
            model = None
    # TF-IDF has no pretrained vocabulary: reuse the one the stored intents were built with (so
    # ids stay stable across runs), or fit a new one on the sample (and rediscover the intents).
    tfidf = isinstance(emb, TfidfEmbedder) and emb._pipeline is None
    digest: str | None = None
    if tfidf and model is not None:
        known = tfidf_from_store(store)
        if known is not None and known.dim == model.dim:
            emb = known
            digest = hashlib.sha256(store.get_meta(TFIDF_KEY).encode()).hexdigest()
        else:
            model = None
    sample = fit_sample or (FAST_FIT_SAMPLE if mode == "fast" else DEFAULT_FIT_SAMPLE)
    if sample < 2:
        raise ConfigError(f"fit_sample must be at least 2, got {fit_sample!r}")
    runner.embedder = emb
    spec = (EmbedderSpec(mode="tfidf", tfidf_digest=digest) if tfidf
            else EmbedderSpec(mode=mode, embedder=embedder))
    if runner.executor.parallel and embedder is not None and not tfidf:
        _check_picklable("the embedder", embedder)
    new_ids: list[str] = []
    first = model is None
    if model is None:
        ids, texts = _fit_sample(store, sample)
        if len(texts) < 2:
            return [], [], emb_name  # too few threads to discover intents from yet: they wait
        if tfidf:
            assert isinstance(emb, TfidfEmbedder)
            digest = _fit_tfidf(store, emb, texts)
            spec = EmbedderSpec(mode="tfidf", tfidf_digest=digest)
        keep, vectors = _embed_ids(runner, spec, ids, chunk)
        openings = dict(zip(ids, texts, strict=True))
        texts = [openings[t] for t in keep]
        try:
            model, top = build_intent_model(texts, embedder=emb, embeddings=vectors,
                                            min_cluster_size=min_cluster_size)
        except ExtractionError:
            raise
        except Exception as exc:
            raise ExtractionError(f"intent discovery failed on {len(texts)} threads: {exc}") from exc
        leaf = model.assign(vectors, level="leaf")
        reset_assignments(store, MODEL_KEY)
        store.save_assignments(dict(zip(keep, _pairs(top, leaf), strict=True)))
        new_ids = [r.id for r in model.records]
    # Novelty is judged against the run's size (a handful of similar leftovers is an intent in
    # a small batch, noise in a big one); a resumed run keeps the size it started with.
    todo = count_unassigned(store)
    marker = store.get_meta(RUN_KEY) if not first else None
    if isinstance(marker, dict) and marker.get("todo") is not None:
        todo = int(marker["todo"])
    else:
        store.set_meta(RUN_KEY, {"todo": todo})
    ranges = plan_ranges(store, "intents", chunk)
    leftovers: list[str] = []
    if ranges:
        token = stage_model(store, model)
        reports = runner.map([AssignUnit(store.url, r, spec, token) for r in ranges], "intents", todo)
        leftovers = [t for rep in reports for t in rep.leftovers]
    rows: dict[str, tuple[str | None, str | None]] = {}
    rest: list[str] = []
    fresh: list[str] = []
    if leftovers:
        mcs = model.min_cluster_size or default_min_cluster_size(todo)
        chosen = leftovers
        if len(leftovers) > sample:
            # Discover new intents on a fixed sample of the leftovers, place the rest below; the
            # smallest group is scaled to the sample so density means the same thing.
            chosen = sample_ids(leftovers, sample)
            mcs = max(3, round(mcs * sample / len(leftovers)))
        keep, vectors = _embed_ids(runner, spec, chosen, chunk)
        openings = opening_texts(store, keep)
        before = {r.id for r in model.records}
        saved_mcs, model.min_cluster_size = model.min_cluster_size, mcs
        try:
            top = model.update([openings[t] for t in keep], vectors, embedder=emb)
        except ExtractionError:
            raise
        except Exception as exc:
            raise ExtractionError(f"intent novelty failed on {len(keep)} threads: {exc}") from exc
        finally:
            model.min_cluster_size = saved_mcs
        leaf = model.assign(vectors, level="leaf")
        rows = dict(zip(keep, _pairs(top, leaf), strict=True))
        fresh = [r.id for r in model.records if r.id not in before and r.parent_id is None]
        new_ids += [r.id for r in model.records if r.id not in before]
        placed = set(keep)
        rest = [t for t in leftovers if t not in placed]
    # One transaction: the run's novelty assignments and the model that names their intents.
    store.write_rows([
        *(("intent_assignment", {"thread_id": t, "intent_id": a, "sub_intent_id": b})
          for t, (a, b) in rows.items()),
        ("meta", {"key": MODEL_KEY, "value": model.to_dict(), "updated_at": datetime.now(UTC)}),
    ])
    if rest:
        if fresh:
            token = stage_model(store, model)
            runner.map([PlaceUnit(store.url, tuple(rest[i : i + chunk]), spec, token, tuple(fresh))
                        for i in range(0, len(rest), chunk)], "intents", len(rest))
        else:
            store.save_assignments({t: (None, None) for t in rest})
    sizes = store.intent_sizes()
    sub_sizes = store.intent_sizes(leaf=True)
    for rec in model.records:
        rec.size = sizes.get(rec.id, 0) if rec.parent_id is None else sub_sizes.get(rec.id, 0)
    intents = model.intents()
    store.set_meta(MODEL_KEY, model.to_dict())
    store.save_intents(intents)
    _clear_meta(store, RUN_KEY, STAGED_MODEL_KEY)
    return intents, new_ids, emb_name


def _clear_meta(store: Store, *keys: str) -> None:
    from sqlalchemy import delete

    from ..store._tables import MetaRow

    m = MetaRow.__table__  # type: ignore[attr-defined]
    with store.engine.begin() as conn:
        conn.execute(delete(m).where(m.c.key.in_(keys)))


def assign_intents(
    store: Store,
    *,
    mode: Mode = "default",
    embedder: Embedder | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    min_cluster_size: int | None = None,
    workers: int | None = None,
    executor: Executor | str | None = None,
    chunk_size: int = CHUNK,
    fit_sample: int | None = None,
) -> tuple[list[Intent], dict[str, str | None], list[str], str]:
    """Give every unassigned thread an intent: discover the intents on the first run (or with
    ``rebuild``), else assign to the stored intents and turn dense unassigned groups into new
    ones. Ids never change once given. Arguments as :func:`extract`.

    Returns:
        (all intents with sizes, ``thread_id -> intent id`` for all threads, new intent ids,
        embedder name).
    """
    ex, owned = executor_for(workers, executor)
    try:
        runner = _Runner(store, ex, embedder, progress)
        intents, new_ids, emb_name = _intents_stage(
            store, runner, mode=mode, embedder=embedder, rebuild=rebuild,
            min_cluster_size=min_cluster_size, chunk=chunk_size, fit_sample=fit_sample)
    finally:
        if owned:
            ex.close()
    return intents, store.load_assignments(), new_ids, emb_name


def extract(
    store: Store,
    since: datetime | None = None,
    *,
    mode: Mode = "default",
    embedder: Embedder | None = None,
    registry: DetectorRegistry | None = None,
    context: DetectionContext | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
    min_cluster_size: int | None = None,
    workers: int | None = None,
    executor: Executor | str | None = None,
    chunk_size: int = CHUNK,
    fit_sample: int | None = None,
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
        embedder: Any :class:`Embedder` (e.g. wrapping a LangChain ``Embeddings``); with
            workers it must pickle.
        registry: Signal detectors to run (default: the built-ins plus any you registered);
            with workers they must be importable module-level functions.
        context: Detector settings.
        rebuild: Forget the stored intents and rediscover them from every thread.
        progress: Called with ``(stage, done, total)`` as work units finish.
        min_cluster_size: Smallest group that becomes an intent (default: scaled to the data).
        workers: Run the work units in this many local processes (``spawn``-ed; each opens
            the store from its URL, so SQLite needs a file). ``None``/1: in this process.
        executor: An :class:`~loop_middleware.scale.Executor` (e.g. ``RayExecutor(address=...)``)
            or ``"ray"`` (a local Ray with ``workers`` CPUs); overrides ``workers``.
        chunk_size: Threads per work unit.
        fit_sample: Openings the first run discovers intents on (default
            :data:`FAST_FIT_SAMPLE` in ``fast`` mode, else :data:`DEFAULT_FIT_SAMPLE`).

    Raises:
        ExtractionError: Embedding or clustering failed.
        StoreError: The store cannot be read or written.
        ConfigError: The executor cannot run these detectors/embedder (they do not pickle).
    """
    if embedder is not None and not callable(getattr(embedder, "embed", None)):
        raise ConfigError(f"embedder must be an Embedder (with .embed), got {embedder!r}; "
                          "for a built-in one pass mode='default', 'fast' or 'tfidf'")
    t0 = time.perf_counter()
    ex, owned = executor_for(workers, executor)
    try:
        runner = _Runner(store, ex, embedder, progress)
        processed, kinds, _, window = _signals_stage(store, since, runner, registry=registry,
                                                     context=context, chunk=chunk_size,
                                                     collect=False)
        intents, new_ids, emb_name = _intents_stage(
            store, runner, mode=mode, embedder=embedder, rebuild=rebuild,
            min_cluster_size=min_cluster_size, chunk=chunk_size, fit_sample=fit_sample)
    finally:
        if owned:
            ex.close()
    return ExtractionResult(
        threads_total=store.count_threads(),
        threads_processed=processed,
        intents=intents,
        new_intents=new_ids,
        embedder=emb_name,
        seconds=time.perf_counter() - t0,
        signal_counts=kinds,
        executor=ex.name,
        units=runner.units,
        peak_worker_rss_mb=runner.peak_rss_mb,
        unit_costs=runner.costs,
        store=store,
        window=window,
    )
