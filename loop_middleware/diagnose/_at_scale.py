"""Diagnose a whole store at any size: numbers counted by the database, threads from a sample.

Diagnosis reads threads for what only threads can tell: which reply pattern, tool outcome or
prompt change explains a failing cell, and the evidence quotes. Counting, on the other hand, is
what a database does best. So :func:`diagnose_store` loads at most ``sample_size`` threads (a
deterministic uniform sample: the ids with the smallest hash, so repeated runs and a growing
store keep nearly the same sample) without their LLM-call inputs, and the numbers of every
diagnosis come from SQL ``GROUP BY`` over every session (:class:`Population`). Its cost is then
flat in the number of threads, except for a few aggregate queries and the id list.

Below ``sample_size`` threads every thread is loaded and the result is exactly
:func:`~loop_middleware.diagnose.diagnose`'s.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._diagnose import diagnose
from ._population import Population
from ._stats import DiagnoseConfig

if TYPE_CHECKING:
    from ..store import Store
    from ..types import Diagnosis, Signal
    from ._llm import DiagnosisWriter

__all__ = ["DEFAULT_SAMPLE_SIZE", "diagnose_store", "sample_thread_ids"]

DEFAULT_SAMPLE_SIZE = 10_000
"""Threads read for mechanisms and evidence. A cell of 0.5% of sessions still has ~50 sampled
sessions to explain at this size; its numbers are exact whatever the sample."""

_CHUNK = 2_000  # ids per IN (...) list: within every database's parameter limit


def _rank_key(thread_id: str) -> bytes:
    return hashlib.blake2b(thread_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def sample_thread_ids(thread_ids: Iterable[str], size: int) -> list[str]:
    """A deterministic uniform sample of ``size`` ids (all of them when fewer), in input order.

    The ids whose hash is smallest: independent of order and time, and stable as the store
    grows (a sampled thread leaves the sample only for a new one with a smaller hash).
    """
    ids = list(thread_ids)
    if len(ids) <= size:
        return ids
    keep = set(heapq.nsmallest(size, ids, key=_rank_key))
    return [t for t in ids if t in keep]


def diagnose_store(
    store: Store,
    *,
    config: DiagnoseConfig | None = None,
    llm: DiagnosisWriter | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> list[Diagnosis]:
    """:func:`~loop_middleware.diagnose.diagnose` over every session of ``store``, at any size.

    Args:
        store: The store holding threads, signals, intents and assignments (after ``extract``).
        config: As for ``diagnose``.
        llm: As for ``diagnose`` (it reads the sampled threads).
        sample_size: At most this many threads are loaded; above it the numbers of every
            diagnosis are counted over all sessions by the database and ``details["sample"]``
            records the sample (see the module docstring).

    Returns:
        The diagnoses, ranked as ``diagnose`` ranks them.
    """
    cfg = config if config is not None else DiagnoseConfig()
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1, got {sample_size}")
    ids = store.thread_ids()
    intents = store.load_intents()
    assignments = store.load_assignments()
    if len(ids) <= sample_size:
        threads = store.list_threads(thread_ids=ids, llm_inputs=False)
        return diagnose(threads, store.load_signals(), intents, assignments, config=cfg, llm=llm)
    chosen = sample_thread_ids(ids, sample_size)
    threads = store.list_threads(thread_ids=chosen, llm_inputs=False)
    signals: list[Signal] = []
    for i in range(0, len(chosen), _CHUNK):
        signals += store.load_signals(thread_ids=chosen[i : i + _CHUNK])
    sessions = store.intent_totals()
    excluded = tuple(cfg.opening_excluded_signals)
    population = Population(
        total=sum(sessions.values()), sample=len(threads), sessions=sessions,
        count_affected=lambda kinds, intent: store.affected_sessions(
            kinds, intent, exclude_opening=excluded))
    in_sample = {t.thread_id for t in threads}
    return diagnose(threads, signals, intents,
                    {tid: g for tid, g in assignments.items() if tid in in_sample},
                    config=cfg, llm=llm, population=population)
