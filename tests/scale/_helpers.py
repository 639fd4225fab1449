"""Shared by the scale tests: benchmark-like threads in a store, stores compared, unit functions
that worker processes can import."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchmarks.extract_throughput import DATA, load_requests, populate
from loop_middleware import Store
from loop_middleware.store._tables import MetaRow

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def banking77() -> Path:
    """``shared/datasets/banking77/train.csv`` beside the checkout (or beside a parent of it: a
    git worktree lives one level deeper)."""
    here = Path(__file__).resolve()
    for parent in here.parents[2:]:
        found = parent / "shared" / "datasets" / "banking77" / "train.csv"
        if found.is_file():
            return found
    return DATA


def fill(store: Store, n: int, *, first: int = 0, seed: int = 0) -> None:
    """``n`` threads as ``benchmarks/extract_throughput.py`` writes them (BANKING77 openings);
    threads after the ``first`` start later than the ones before (6 s apart, as it writes them)."""
    requests = load_requests(banking77())
    populate(store, requests, first, n, START + timedelta(seconds=6 * first + 3600 * bool(first)),
             seed=seed)


def clone_pg(url: str, count: int) -> list[str]:
    """``count`` copies of the PostgreSQL database of ``url`` (``CREATE DATABASE ... TEMPLATE``)."""
    import psycopg

    base, name = url.rsplit("/", 1)
    dsn = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            copy = f"{name}_c{i}"
            conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
            out.append(f"{base}/{copy}")
    return out


def snapshot(store: Store) -> dict[str, Any]:
    """Everything extraction stored, in a comparable form."""
    signals = sorted((s.thread_id, s.kind, s.turn_index, s.evidence, round(s.confidence, 9),
                      repr(sorted(s.details.items()))) for s in store.load_signals())
    m = MetaRow.__table__.c  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        meta = {k: v for k, v in conn.execute(select(m.key, m.value))}
    intents = sorted((i.id, i.name, i.parent_id, i.size, i.category) for i in store.load_intents())
    return {
        "signals": signals,
        "assignments": sorted(store.load_assignments().items(), key=lambda kv: kv[0]),
        "leaf": sorted(store.load_assignments(leaf=True).items(), key=lambda kv: kv[0]),
        "intents": intents,
        "model": meta.get("extract.intent_model"),
        "watermark": meta.get("extract.watermark"),
        "pending": sorted(k for k in meta if k in ("extract.intent_run", "extract.intent_model.staged")),
    }


def die_once(marker_dir: str, x: int) -> int:
    """A unit function whose worker process dies the first time it sees ``x == 3``."""
    flag = Path(marker_dir) / f"died-{x}"
    if x == 3 and not flag.exists():
        flag.write_text("x")
        os._exit(1)
    return x * x
