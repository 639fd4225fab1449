"""The same work units on every executor give the same stored results: in this process,
``workers=2`` (spawned processes) and Ray, on PostgreSQL and on a SQLite file."""

from __future__ import annotations

import functools
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loop_middleware import Store
from loop_middleware.errors import ConfigError
from loop_middleware.extract import DetectorRegistry, extract
from loop_middleware.extract._units import WorkUnit
from loop_middleware.scale import InlineExecutor, ProcessExecutor, RayExecutor
from tests.conftest import new_pg_database
from tests.scale._helpers import clone_pg, die_once, fill, snapshot

N, MORE = 1200, 300
# A small discovery sample and small units: every path runs (sample embedded in units, assign
# units, novelty on a sample of the leftovers, leftovers placed by units).
OPTIONS: dict[str, Any] = {"mode": "fast", "fit_sample": 60, "chunk_size": 150}


class Recording(InlineExecutor):
    """Inline, noting which kinds of unit ran."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()

    def map(self, fn: Any, units: Any, *, on_result: Any = None) -> list[Any]:
        self.kinds.update(type(u).__name__ for u in units)
        return super().map(fn, units, on_result=on_result)


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[RayExecutor]:
    import ray

    ex = RayExecutor(num_cpus=2)
    yield ex
    ex.close()
    ray.shutdown()


def _two_rounds(url: str, executor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    store = Store(url)
    try:
        extract(store, executor=executor, **OPTIONS)
        first = snapshot(store)
        fill(store, MORE, first=N)
        extract(store, executor=executor, **OPTIONS)
        return first, snapshot(store)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_inline_processes_and_ray_store_identical_results(
    postgres_url: str, ray_executor: RayExecutor
) -> None:
    base = new_pg_database(postgres_url)
    store = Store(base)
    fill(store, N)
    store.close()
    inline_url, workers_url, ray_url = clone_pg(base, 3)

    recording = Recording()
    inline = _two_rounds(inline_url, recording)
    # Every kind of unit ran, the novelty placement included.
    assert set(recording.kinds) == {"SignalUnit", "EmbedUnit", "AssignUnit", "PlaceUnit"}
    first, second = inline
    assert len(first["signals"]) > 500 and len({a for _, a in first["assignments"]}) > 5
    assert len(second["assignments"]) == N + MORE and second["pending"] == []
    assert len(second["signals"]) > len(first["signals"])

    with ProcessExecutor(2) as pool:
        assert _two_rounds(workers_url, pool) == inline
    assert _two_rounds(ray_url, ray_executor) == inline


@pytest.mark.slow
def test_workers_on_a_sqlite_file_equal_inline(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    store = Store(f"sqlite:///{a}")
    fill(store, 600)
    store.close()
    shutil.copy(a, b)
    options = {**OPTIONS, "mode": "tfidf"}
    inline = Store(f"sqlite:///{a}")
    extract(inline, **options)
    pooled = Store(f"sqlite:///{b}")
    result = extract(pooled, workers=2, **options)
    assert result.executor == "processes" and result.units > 4
    assert snapshot(pooled) == snapshot(inline)


def test_a_dead_worker_costs_only_its_unit(tmp_path: Path) -> None:
    """A worker process that dies (here: exits in the middle of unit 3) breaks the pool; the
    units that had not finished run again in a new pool and every result comes back once, in
    order."""
    with ProcessExecutor(2, retries=1) as pool:
        out = pool.map(functools.partial(die_once, str(tmp_path)), list(range(8)))
    assert out == [x * x for x in range(8)]
    assert (tmp_path / "died-3").exists()


def _lambda_registry() -> DetectorRegistry:
    reg = DetectorRegistry()
    reg.register("local", lambda thread, ctx: [])
    return reg


def test_what_workers_cannot_run_is_refused_up_front(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    fill(store, 5)
    with pytest.raises(ConfigError, match="cannot be sent to worker processes"):
        extract(store, workers=2, registry=_lambda_registry(), mode="tfidf")
    with pytest.raises(ConfigError, match="in-memory SQLite"):
        extract(Store("sqlite://"), workers=2, mode="tfidf")
    with pytest.raises(ConfigError):
        extract(store, executor="spark", mode="tfidf")  # type: ignore[arg-type]
    # inline, the same registry is fine
    assert extract(store, registry=_lambda_registry(), mode="tfidf").threads_processed == 5


def test_work_unit_alias_names_every_unit() -> None:
    from loop_middleware.extract import _units

    assert {t.__name__ for t in WorkUnit.__args__} == {  # type: ignore[attr-defined]
        n for n in _units.__all__ if n.endswith("Unit") and n != "WorkUnit"}
