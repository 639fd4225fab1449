"""Extraction and the loop at 100,000 threads in PostgreSQL: one process, ``workers=2`` and Ray.

The threads are the ones ``benchmarks/extract_throughput.py`` generates (BANKING77 openings,
synthetic turns, tools, feedback; its ``populate``), written into PostgreSQL (a temporary server
started here, ``fsync=off`` as in the tests, unless ``--url`` names one) by two worker processes.
Every measurement runs in its own process on a fresh copy of the database (``CREATE DATABASE ...
TEMPLATE``), so peak memory (``ru_maxrss``) is that measurement's alone:

- ``extract`` in ``fast`` and ``default`` mode, inline (one process), ``workers=2`` (spawned
  processes) and Ray (a local Ray with 2 CPUs), at 10,000 and 100,000 threads. The embedding
  model, the clustering libraries and the worker pool (or Ray) are warmed up on a 1,000-thread
  copy first, with the same executor: what is timed is the analysis, not start-up (reported
  apart). Each run's stored signals and assignments are hashed: the executors must agree.
- an incremental run after +1,000 threads (fast, inline, 100k);
- the whole loop iteration: extract (fast, ``workers=2``), then the companion graph's
  ``diagnose`` and ``propose_fixes`` nodes (``diagnose_store``: counts from SQL over every
  session, threads from a 10,000-thread sample), at 10k and 100k. A watchdog stops a measurement whose memory passes ``--max-rss-gb`` (the machine is
  shared) and records that instead.

Targets (issue 13; ratios of this run): ``workers=2`` >= 1.7x inline; 100k fast extract <= 10x
the 10k one; peak memory flat in the number of threads, < 2 GB at 100k; diagnosis < 30 s at 100k
Results: ``benchmarks/results/scale.json``.

    python benchmarks/scale.py                       # 100k + 10k, everything (~40 min on 2 cores)
    python benchmarks/scale.py --threads 3000 --small 1000 --no-write   # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.extract_throughput import DATA, load_requests, populate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
WARMUP = 1000


def find_data() -> Path:
    """BANKING77 beside the checkout (or beside a parent: a git worktree sits one level down)."""
    for parent in Path(__file__).resolve().parents[1:]:
        found = parent / "shared" / "datasets" / "banking77" / "train.csv"
        if found.is_file():
            return found
    return DATA


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the database --------------------------------------------------------------------------------


def start_postgres(tmp: Path) -> Any:
    from tests.conftest import PgServer, _free_port, _pg_bin

    bindir = _pg_bin()
    if bindir is None:
        sys.exit("no PostgreSQL binaries (apt-get install postgresql), or pass --url")
    # Its own top-level directory: the server runs as the postgres user, who cannot enter ours.
    base = Path(tempfile.mkdtemp(prefix="loop-pg-scale-"))
    (base / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(base / "sock", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    server = PgServer(bindir, base, prefix, _free_port())
    server.init()
    server.start()
    return server


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://")
                           + "/postgres", autocommit=True)


def create_db(url: str, name: str, template: str | None = None) -> str:
    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return url.rsplit("/", 1)[0] + f"/{name}"


def drop_db(url: str) -> None:
    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _populate_range(job: tuple[str, str, int, int]) -> int:
    from loop_middleware import Store

    url, data, first, count = job
    store = Store(url, create=False)
    try:
        populate(store, load_requests(Path(data)), first, count,
                 START + timedelta(seconds=6 * first), seed=0, batch=250)
    finally:
        store.close()
    return count


def fill(url: str, data: Path, first: int, count: int, *, later: bool = False) -> float:
    """Threads ``first .. first+count-1`` written by two worker processes; seconds taken."""
    from loop_middleware import Store
    from loop_middleware.scale import ProcessExecutor

    Store(url).close()  # the schema, once
    t0 = time.perf_counter()
    step = 2500
    jobs = [(url, str(data), i, min(step, first + count - i)) for i in range(first, first + count, step)]
    if later:  # added after the first extraction: newer than everything in the store
        from loop_middleware.store import Store as S

        s = S(url, create=False)
        populate(s, load_requests(data), first, count,
                 START + timedelta(seconds=6 * first + 3600), seed=0)
        s.close()
        return time.perf_counter() - t0
    with ProcessExecutor(2) as pool:
        pool.map(_populate_range, jobs)
    return time.perf_counter() - t0


# --- one measurement (in its own process) --------------------------------------------------------


def _watchdog(limit_mb: float) -> None:
    def watch() -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 1e6
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > limit_mb:
                print(json.dumps({"aborted": f"resident memory passed {limit_mb:.0f} MB"}), flush=True)
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def digest(store: Any) -> str:
    """A hash of what extraction stored (signals and assignments), to compare executors."""
    h = hashlib.sha256()
    for s in sorted((s.thread_id, s.kind, s.turn_index, s.evidence) for s in store.load_signals()):
        h.update(repr(s).encode())
    for kv in sorted(store.load_assignments(leaf=True).items(), key=lambda kv: kv[0]):
        h.update(repr(kv).encode())
    return h.hexdigest()[:16]


def _executor(kind: str) -> Any:
    from loop_middleware.scale import InlineExecutor, ProcessExecutor, RayExecutor

    if kind == "inline":
        return InlineExecutor()
    if kind == "workers2":
        return ProcessExecutor(2)
    return RayExecutor(num_cpus=2)


def _warm(mode: str) -> None:
    import importlib

    from loop_middleware.extract import default_embedder

    default_embedder(mode).embed(["warm up"])  # type: ignore[arg-type]
    for module in ("scipy.cluster.hierarchy", "sklearn.feature_extraction.text", "sklearn.metrics",
                   "sklearn.neighbors"):
        importlib.import_module(module)


def measure_extract(job: dict[str, Any]) -> dict[str, Any]:
    from loop_middleware import Store
    from loop_middleware.extract import extract

    _warm(job["mode"])
    ex = _executor(job["executor"])
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    warm = Store(job["warm_url"], create=False)
    extract(warm, mode=job["mode"], executor=ex)
    warm.close()
    out["warmup_seconds"] = round(time.perf_counter() - t0, 2)
    store = Store(job["url"], create=False)
    t0 = time.perf_counter()
    res = extract(store, mode=job["mode"], executor=ex)
    out.update(seconds=round(time.perf_counter() - t0, 2), threads=res.threads_processed,
               units=res.units, signals=sum(res.signal_counts.values()),
               intents=sum(1 for i in res.intents if i.parent_id is None),
               unit_costs={k: {"units": int(v["units"]), "threads": int(v["threads"]),
                               "seconds": round(v["seconds"], 2)} for k, v in res.unit_costs.items()},
               worker_peak_rss_mb=res.peak_worker_rss_mb)
    out["digest"] = digest(store)
    if job.get("incremental"):
        fill(job["url"], Path(job["data"]), job["threads"], job["incremental"], later=True)
        t0 = time.perf_counter()
        inc = extract(store, mode=job["mode"], executor=ex)
        out["incremental"] = {"added": job["incremental"], "threads": inc.threads_processed,
                              "seconds": round(time.perf_counter() - t0, 2),
                              "new_intents": len(inc.new_intents)}
    store.close()
    ex.close()
    out["driver_peak_rss_mb"] = round(_rss_mb(), 1)
    out["peak_rss_mb"] = max(out["driver_peak_rss_mb"], out["worker_peak_rss_mb"])
    return out


def measure_loop(job: dict[str, Any]) -> dict[str, Any]:
    """extract (fast, workers=2) + the graph's diagnose and propose_fixes nodes."""
    from loop_middleware import Store
    from loop_middleware.config import LoopConfig
    from loop_middleware.extract import extract
    from loop_middleware.graph import diagnose_node, propose_fixes_node
    from loop_middleware.scale import ProcessExecutor

    _warm("fast")
    out: dict[str, Any] = {}
    store = Store(job["url"], create=False)
    with ProcessExecutor(2) as pool:
        t0 = time.perf_counter()
        res = extract(store, mode="fast", executor=pool)
        out["extract_seconds"] = round(time.perf_counter() - t0, 2)
        out["threads"] = res.threads_processed
    store.close()
    cfg = LoopConfig(database_url=job["url"], repo_dir=job["repo"], embedder="fast",
                     allowed_globs=["prompts/**/*.md"])
    run: Any = {"configurable": {"loop": cfg.model_dump()}}
    state: dict[str, Any] = {}
    for name, node in (("diagnose", diagnose_node), ("propose_fixes", propose_fixes_node)):
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        state.update(node(state, run))  # type: ignore[arg-type]
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_peak_rss_mb"] = round(max(rss0, _rss_mb()), 1)
    out["diagnoses"] = len(state.get("diagnoses", []))
    out["fixes"] = len(state.get("fixes", []))
    out["total_seconds"] = round(out["extract_seconds"] + out["diagnose_seconds"]
                                 + out["propose_fixes_seconds"], 2)
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    return out


def run_child(job: dict[str, Any], max_rss_gb: float, timeout: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter (its own peak memory)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job),
           "--max-rss-gb", str(max_rss_gb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"aborted": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"aborted": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def host_repo(tmp: Path) -> Path:
    """A git repository holding the prompt the synthetic threads were served (what fixes edit)."""
    from benchmarks.extract_throughput import SYSTEM_PROMPT

    repo = tmp / "host_repo"
    (repo / "prompts").mkdir(parents=True)
    (repo / "prompts" / "support.md").write_text(SYSTEM_PROMPT + "\n")
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit",
                  "-qm", "support prompt"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000, help="the smaller store (growth ratio)")
    ap.add_argument("--incremental", type=int, default=1000)
    ap.add_argument("--url", help="a PostgreSQL server URL to use instead of a temporary one")
    ap.add_argument("--modes", default="fast,default")
    ap.add_argument("--executors", default="inline,workers2,ray")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--max-rss-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="per measurement (s)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the measurements already in the results file that this run does "
                         "not repeat (same --threads/--small), e.g. to add --modes default later")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _watchdog(args.max_rss_gb * 1024)
        job = json.loads(args.child)
        out = measure_loop(job) if job["kind"] == "loop" else measure_extract(job)
        print(json.dumps(out), flush=True)
        return 0

    data = find_data()
    modes = [m for m in args.modes.split(",") if m]
    executors = [e for e in args.executors.split(",") if e]
    results: dict[str, Any] = {
        "threads": args.threads, "small": args.small, "cores": os.cpu_count(),
        "machine": platform.machine(), "python": platform.python_version(),
        "load_before": os.getloadavg(), "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": "benchmarks/extract_throughput.py populate(): BANKING77 openings + synthetic turns",
        "database": "PostgreSQL " + ("(given)" if args.url else "(temporary server, fsync=off)"),
    }
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp_s:
        tmp = Path(tmp_s)
        server = None if args.url else start_postgres(tmp)
        base_url = args.url or server.url  # type: ignore[union-attr]
        try:
            bases: dict[str, str] = {}
            writes: dict[str, float] = {}
            for label, n in (("warm", WARMUP), ("small", args.small), ("big", args.threads)):
                url = create_db(base_url, f"scale_{label}")
                writes[label] = round(fill(url, data, 0, n), 1)
                bases[label] = url
                print(f"wrote {n} threads in {writes[label]} s", flush=True)
            results["seconds_write"] = writes
            sizes = {"small": args.small, "big": args.threads}
            runs: dict[str, Any] = {}
            for mode in modes:
                for size_label, n in sizes.items():
                    for ex in executors:
                        key = f"{mode}/{n}/{ex}"
                        url = create_db(base_url, "scale_run", f"scale_{size_label}")
                        warm = create_db(base_url, "scale_warm_run", "scale_warm")
                        job = {"kind": "extract", "mode": mode, "executor": ex, "url": url,
                               "warm_url": warm, "threads": n, "data": str(data)}
                        if mode == "fast" and ex == "inline" and size_label == "big":
                            job["incremental"] = args.incremental
                        runs[key] = run_child(job, args.max_rss_gb, args.timeout)
                        runs[key]["load_after"] = os.getloadavg()
                        drop_db(url)
                        drop_db(warm)
                        print(key, json.dumps(runs[key]), flush=True)
            results["extract"] = runs
            if not args.skip_loop:
                repo = host_repo(tmp)
                loops = {}
                for size_label, n in sizes.items():
                    url = create_db(base_url, "scale_run", f"scale_{size_label}")
                    loops[str(n)] = run_child({"kind": "loop", "url": url, "repo": str(repo)},
                                              args.max_rss_gb, args.timeout)
                    drop_db(url)
                    print("loop", n, json.dumps(loops[str(n)]), flush=True)
                results["loop"] = loops
        finally:
            if server is not None:
                server.stop()
                shutil.rmtree(server.base, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    if args.merge and RESULTS.is_file():
        results = merged(json.loads(RESULTS.read_text()), results)
        modes = sorted({k.split("/")[0] for k in results.get("extract", {})})
        executors = sorted({k.split("/")[2] for k in results.get("extract", {})})
    results["targets"] = targets(results, modes, executors)
    print(json.dumps(results["targets"], indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old``: extract runs and loops by key; every run keeps its own load/time."""
    if (old.get("threads"), old.get("small")) != (new["threads"], new["small"]):
        sys.exit(f"--merge: {RESULTS.name} is for {old.get('threads')}/{old.get('small')} threads")
    out = {**old, **{k: v for k, v in new.items() if k not in ("extract", "loop")}}
    out["extract"] = {**old.get("extract", {}), **new.get("extract", {})}
    out["loop"] = {**old.get("loop", {}), **new.get("loop", {})}
    out["runs"] = [*old.get("runs", [{"started": old.get("started")}]),
                   {"started": new["started"], "measured": sorted(new.get("extract", {}))
                    + [f"loop/{n}" for n in new.get("loop", {})]}]
    return out


def targets(results: dict[str, Any], modes: list[str], executors: list[str]) -> dict[str, Any]:
    runs = results.get("extract", {})
    big, small = results["threads"], results["small"]
    out: dict[str, Any] = {}

    def sec(key: str) -> float | None:
        v = runs.get(key, {}).get("seconds")
        return float(v) if v else None

    for mode in modes:
        one, two = sec(f"{mode}/{big}/inline"), sec(f"{mode}/{big}/workers2")
        if one and two:
            out[f"{mode}_workers2_speedup"] = {"value": round(one / two, 2), "target": ">= 1.7",
                                               "met": one / two >= 1.7}
        ray = sec(f"{mode}/{big}/ray")
        if one and ray:
            out[f"{mode}_ray_speedup"] = {"value": round(one / ray, 2)}
        s, b = sec(f"{mode}/{small}/inline"), sec(f"{mode}/{big}/inline")
        if s and b:
            out[f"{mode}_growth_{small}_to_{big}"] = {"value": round(b / s, 2), "target": "<= 10",
                                                     "met": b / s <= 10}
        digests = {k: v.get("digest") for k, v in runs.items() if k.startswith(f"{mode}/{big}/")}
        if len(digests) > 1:
            out[f"{mode}_identical_across_executors"] = len(set(digests.values())) == 1
    peaks = {k: v.get("peak_rss_mb") for k, v in runs.items() if v.get("peak_rss_mb")}
    if peaks:
        worst = max(v for k, v in peaks.items() if f"/{big}/" in k) if any(f"/{big}/" in k for k in peaks) else None
        out["peak_rss_mb_at_big"] = {"value": worst, "target": "< 2048",
                                     "met": worst is not None and worst < 2048}
        flat = {}
        for mode in modes:
            for ex in executors:
                a, b = peaks.get(f"{mode}/{small}/{ex}"), peaks.get(f"{mode}/{big}/{ex}")
                if a and b:
                    flat[f"{mode}/{ex}"] = round(b / a, 2)
        out["peak_rss_ratio_big_over_small"] = flat
    loop = results.get("loop", {}).get(str(big), {})
    if "diagnose_seconds" in loop:
        out["diagnose_at_big_seconds"] = {"value": loop["diagnose_seconds"], "target": "< 30",
                                          "met": loop["diagnose_seconds"] < 30}
    elif loop:
        out["diagnose_at_big_seconds"] = {"value": None, "aborted": loop.get("aborted")}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
