"""Reliability figures: load, injected faults, bad inputs, redaction quality.

Runs, on this machine, with real parts:
- load: 200 concurrent threads x 10 turns through one handler (asyncio), with a slow database
  and a small queue so the "queue full -> overflow file" path is exercised; memory (tracemalloc
  peak), rows written, slowest host hand-over;
- faults: a real PostgreSQL server stopped mid-run and started again (every turn must land
  exactly once), a SQLite database locked by another connection, an unreachable database, and a
  host process killed with SIGKILL (turns lost, whether they are the newest, and how long before
  the kill the oldest lost turn finished: the writer's backlog);
- bad inputs: randomly corrupted OTLP/JSON exports fed to the ingest (no crash allowed: each is
  ingested, or skipped with a named record, or refused whole with an IngestError);
- redaction: precision/recall on the labelled corpus in tests/privacy.

Writes ``benchmarks/results/reliability.json``.

    python benchmarks/reliability.py [--skip-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop_middleware import IngestError, LoopCallbackHandler, Store  # noqa: E402
from loop_middleware.capture import BackgroundWriter, ingest_otlp  # noqa: E402
from tests._fakes import fake_model, reply, tool_call  # noqa: E402
from tests.capture.test_handler import build_graph, order_lookup  # noqa: E402


class SlowStore(Store):
    def write_rows(self, rows: Any) -> None:
        time.sleep(0.05)
        super().write_rows(rows)


def load(tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'load.db'}"
    writer = BackgroundWriter(SlowStore(url), max_queue=256, spool_path=tmp / "load.spool",
                              retry_interval=0.2)
    handler = LoopCallbackHandler(writer=writer)
    slowest = 0.0
    orig = writer.submit

    def timed(source: Any) -> None:
        nonlocal slowest
        t0 = time.perf_counter()
        orig(source)
        slowest = max(slowest, time.perf_counter() - t0)

    writer.submit = timed  # type: ignore[method-assign]

    async def user(i: int) -> None:
        graph = build_graph(fake_model(*[m for k in range(10) for m in (
            tool_call("order_lookup", {"order_id": f"{i}-{k}"}, call_id=f"c{k}"), reply(f"{i}/{k}"))]),
            [order_lookup])
        cfg: Any = {"callbacks": [handler], "configurable": {"thread_id": f"u{i}"}}
        for k in range(10):
            await graph.ainvoke({"messages": [("user", f"user {i} turn {k}")]}, config=cfg)

    async def main() -> None:
        await asyncio.gather(*(user(i) for i in range(200)))

    tracemalloc.start()
    t0 = time.perf_counter()
    asyncio.run(main())
    host_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    handler.flush(300)
    threads = Store(url).list_threads()
    return {
        "threads": 200, "turns_per_thread": 10,
        "turns_stored": sum(len(t.turns) for t in threads),
        "threads_stored": len(threads),
        "host_seconds": round(host_s, 2),
        "tracemalloc_peak_mb": round(peak / 2**20, 1),
        "queue_limit": 256,
        "rows_via_overflow_file": writer.stats.spooled,
        "slowest_host_handover_ms": round(slowest * 1000, 1),
        "db_write_delay_ms": 50,
        "lost": 2000 - sum(len(t.turns) for t in threads),
    }


def postgres_fault(tmp: Path) -> dict[str, Any]:
    import pytest

    from tests.conftest import PgServer, _free_port, _pg_bin, new_pg_database

    bindir = _pg_bin()
    if bindir is None:
        return {"skipped": "no PostgreSQL binaries"}
    import os
    import shutil

    base = Path(tempfile.mkdtemp(prefix="loop-pg-bench-"))
    (base / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(base / "sock", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    server = PgServer(bindir, base, prefix, _free_port())
    server.init()
    server.start()
    try:
        url = new_pg_database(server.url)
        writer = BackgroundWriter(Store(url), spool_path=tmp / "pg.spool", retry_interval=0.2)
        handler = LoopCallbackHandler(writer=writer)
        graph = build_graph(fake_model(*[reply(f"a{i}") for i in range(100)]), [order_lookup])

        def turn(i: int) -> None:
            graph.invoke({"messages": [("user", f"t{i}")]},
                         config={"callbacks": [handler], "configurable": {"thread_id": "pg"}})

        for i in range(20):
            turn(i)
        handler.flush()
        server.stop()
        t0 = time.perf_counter()
        for i in range(20, 60):
            turn(i)
        down_s = time.perf_counter() - t0
        handler.flush(5)
        spooled = writer.stats.spooled
        server.start()
        for i in range(60, 80):
            turn(i)
        ok = handler.flush(60)
        stored = [t.user_text for t in Store(url).get_thread("pg").turns]  # type: ignore[union-attr]
        return {"turns": 80, "turns_while_down": 40, "rows_spooled_while_down": spooled,
                "host_seconds_for_40_turns_while_down": round(down_s, 2), "flushed": ok,
                "turns_stored": len(stored), "duplicates": len(stored) - len(set(stored)),
                "lost": 80 - len(set(stored))}
    except pytest.skip.Exception as exc:  # pragma: no cover
        return {"skipped": str(exc)}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def sigkill(tmp: Path) -> dict[str, Any]:
    import os
    import signal
    import subprocess

    from tests.capture.test_reliability import KILL_SCRIPT

    url = f"sqlite:///{tmp / 'kill.db'}"
    script = tmp / "host.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), url=url))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    done: list[tuple[int, float]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        n, ts = line.split()
        done.append((int(n), float(ts)))
        if len(done) >= 200:
            break
    killed = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    stored = {t.user_text for t in Store(url).get_thread("k").turns}  # type: ignore[union-attr]
    lost = [n for n, _ in done if f"turn {n}" not in stored]
    last = {n for n, ts in done if killed - ts <= 0.25}
    finished = [n for n, _ in done]
    lost_set = set(lost)
    return {"turns_finished": len(done), "turns_lost": len(lost),
            "turns_finished_in_last_250ms": len(last),
            # The loss bound that holds: the newest unwritten turns (the writer's backlog).
            "lost_are_the_newest": lost == finished[len(finished) - len(lost):],
            "oldest_lost_finished_s_before_kill": round(max(
                (killed - ts for n, ts in done if n in lost_set), default=0.0), 3),
            "lost_all_within_last_batch_interval_plus_350ms": lost_set <= {
                n for n, ts in done if killed - ts <= 0.6}}


def bad_inputs(tmp: Path, n: int = 400, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    good = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "a" * 32, "spanId": f"{i:016x}", "name": "chat m",
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                       {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                           [{"role": "user", "content": f"hello {i}"}])}}]} for i in range(3)]}]}]}
    raw = json.dumps(good).encode()
    outcomes = {"ingested": 0, "records_skipped": 0, "refused_whole": 0, "crashed": 0}
    store = Store(f"sqlite:///{tmp / 'fuzz.db'}")
    for _ in range(n):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos: pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 10)))
        f = tmp / "fuzz.json"
        f.write_bytes(bytes(data))
        try:
            rep = ingest_otlp(f, store)
            outcomes["ingested"] += 1
            outcomes["records_skipped"] += len(rep.skipped)
        except IngestError:
            outcomes["refused_whole"] += 1
        except Exception:  # noqa: BLE001 - that is what we count
            outcomes["crashed"] += 1
    return {"inputs_tried": n, **outcomes}


def redaction() -> dict[str, Any]:
    path = ROOT / "benchmarks" / "results" / "redaction.json"
    if path.exists():
        data = json.loads(path.read_text())
        return {"corpus": data["corpus"], "overall": data["overall"],
                "holdout_overall": data["holdout"]["overall"],
                "throughput_mb_per_s": data["throughput"]["mb_per_s"]}
    return {"missing": "run benchmarks/redaction_quality.py"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-postgres", action="store_true", help="skip the PostgreSQL fault")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loop-rel-"))
    result: dict[str, Any] = {}
    for name, fn in (("load", lambda: load(tmp)),
                     ("postgres_stopped_mid_run", (lambda: {"skipped": "--skip-postgres"})
                      if args.skip_postgres else (lambda: postgres_fault(tmp))),
                     ("sigkill", lambda: sigkill(tmp)),
                     ("bad_inputs", lambda: bad_inputs(tmp)),
                     ("redaction", redaction)):
        t0 = time.perf_counter()
        result[name] = fn()
        result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
