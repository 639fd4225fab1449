"""Work units are idempotent: run twice, or killed half way and run again, the store ends up
exactly as after one clean run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loop_middleware import Store
from loop_middleware.extract import extract
from loop_middleware.extract._embed import TfidfEmbedder
from loop_middleware.extract._extract import MODEL_KEY, WATERMARK_KEY
from loop_middleware.extract._intents import build_intent_model
from loop_middleware.extract._signals import DetectionContext
from loop_middleware.extract._signals import default_registry as detectors
from loop_middleware.extract._units import (
    STAGED_MODEL_KEY,
    AssignUnit,
    EmbedderSpec,
    PlaceUnit,
    SignalUnit,
    Window,
    plan_ranges,
    run_unit,
    sample_ids,
    shard_key,
    stage_model,
)
from tests.scale._helpers import fill, snapshot

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"mode": "fast", "fit_sample": 60, "chunk_size": 50}


def test_each_unit_run_twice_stores_the_same(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'u.db'}")
    fill(store, 240)
    window = Window()
    ctx = DetectionContext(latency_threshold_ms=5000.0)
    units = [SignalUnit(store.url, r, window, detectors, ctx) for r in plan_ranges(store, "signals", 50, window)]
    assert len(units) == 5
    for u in units:
        run_unit(u)
    once = snapshot(store)
    for u in units[::-1]:  # again, in another order
        run_unit(u)
    assert snapshot(store) == once and len(once["signals"]) > 100

    # intents: a model fitted on some openings, then assign and place units, each run twice
    from loop_middleware.extract._extract import opening_texts

    openings = opening_texts(store)
    texts = [openings[t] for t in sorted(openings)[:120]]
    emb = TfidfEmbedder(n_components=32).fit(list(openings.values()))
    model, _ = build_intent_model(texts, embedder=emb, embeddings=emb.embed(texts))
    token = stage_model(store, model)
    spec = EmbedderSpec(mode="tfidf", embedder=emb)
    assign = [AssignUnit(store.url, r, spec, token) for r in plan_ranges(store, "intents", 50)]
    first = [run_unit(u) for u in assign]
    after_assign = snapshot(store)
    again = [run_unit(u) for u in assign]
    assert snapshot(store) == after_assign
    # the second run has only the leftovers left to look at, and finds the same ones
    assert [r.leftovers for r in again] == [r.leftovers for r in first]
    assert sum(r.written for r in again) == 0 and sum(r.written for r in first) > 0
    leftovers = tuple(t for r in first for t in r.leftovers)
    assert leftovers
    place = PlaceUnit(store.url, leftovers, spec, token, tuple(r.id for r in model.top_level[:2]))
    run_unit(place)
    placed = snapshot(store)
    run_unit(place)
    assert snapshot(store) == placed
    assert {t for t, _ in placed["assignments"]} >= set(leftovers)


def test_shards_and_samples_are_stable() -> None:
    ids = [f"t{i}" for i in range(1000)]
    assert shard_key("t1") == shard_key("t1") and shard_key("t1") != shard_key("t2")
    picked = sample_ids(iter(ids), 50)
    assert picked == sample_ids(reversed(ids), 50)[::-1]  # input order kept, same members
    assert len(picked) == 50 and picked == [t for t in ids if t in set(picked)]


KILLED = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    from loop_middleware import Store
    from loop_middleware.extract import extract

    def progress(stage, done, total):
        print(stage, done, total, flush=True)

    extract(Store({url!r}), progress=progress, **{options!r})
    print("done", flush=True)
''')


def _run_and_kill(url: str, stage: str, after: int, tmp_path: Path) -> None:
    script = tmp_path / "extract.py"
    script.write_text(KILLED.format(root=str(ROOT), url=url, options=OPTIONS))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    seen = 0
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.split()[0] == stage:
                seen += 1
                if seen >= after:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert "done" not in lines and seen >= after, lines


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["signals", "intents", "incremental"])
def test_killed_run_then_rerun_equals_one_clean_run(tmp_path: Path, stage: str) -> None:
    clean, killed = tmp_path / "clean.db", tmp_path / "killed.db"
    store = Store(f"sqlite:///{clean}")
    fill(store, 700)
    if stage == "incremental":
        extract(store, **OPTIONS)  # type: ignore[arg-type]
        fill(store, 300, first=700)
    store.close()
    shutil.copy(clean, killed)

    reference = Store(f"sqlite:///{clean}")
    extract(reference, **OPTIONS)  # type: ignore[arg-type]
    want = snapshot(reference)

    url = f"sqlite:///{killed}"
    _run_and_kill(url, "signals" if stage == "signals" else "intents", 3, tmp_path)
    half = Store(url)
    if stage == "signals":
        # killed before the watermark moved: the next run redoes the window
        assert half.get_meta(WATERMARK_KEY) is None
    else:
        # killed with a staged model: the committed one (if any) is still the previous run's
        assert half.get_meta(STAGED_MODEL_KEY) is not None
        assert (half.get_meta(MODEL_KEY) is None) == (stage == "intents")
    extract(half, **OPTIONS)  # type: ignore[arg-type]
    assert snapshot(half) == want
