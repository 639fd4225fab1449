"""Capture at scale: several host processes (workers of one app) write to one PostgreSQL store
at the same time, some threads continued by more than one process. Nothing is lost, nothing is
duplicated, no write fails on a lock, and a thread shared by processes keeps its earliest start
and latest update whatever order the processes' writes landed in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from loop_middleware import Store
from tests.conftest import new_pg_database

ROOT = Path(__file__).resolve().parents[2]
PROCESSES, PRIVATE, SHARED, TURNS = 4, 6, 6, 3

HOST = textwrap.dedent('''
    import json, random, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from loop_middleware import LoopCallbackHandler
    from tests._fakes import fake_model, reply, tool_call
    from tests.capture.test_handler import build_graph, order_lookup

    worker = {worker}
    rng = random.Random(worker)
    handler = LoopCallbackHandler({url!r})
    turns = []
    for t in range({private}):
        turns += [(f"w{{worker}}-t{{t}}", i) for i in range({turns})]
    for t in range({shared}):
        turns += [(f"shared-{{t}}", i) for i in range({turns})]
    rng.shuffle(turns)
    script = []
    for n, _ in enumerate(turns):
        if n % 2:
            script.append(tool_call("order_lookup", {{"order_id": f"A-{{n}}"}}, call_id=f"c{{worker}}-{{n}}"))
        script.append(reply(f"answer {{worker}} {{n}}"))
    graph = build_graph(fake_model(*script), [order_lookup])
    go = Path({go!r})
    while not go.exists():  # every worker starts at once
        time.sleep(0.01)
    sent = []
    for n, (tid, i) in enumerate(turns):
        text = f"worker {{worker}} thread {{tid}} turn {{i}} #{{n}}"
        graph.invoke({{"messages": [("user", text)]}},
                     config={{"callbacks": [handler], "configurable": {{"thread_id": tid}}}})
        sent.append([tid, text, n % 2])
    ok = handler.flush(timeout=60)
    stats = handler.recorder.writer.stats.as_dict()
    print(json.dumps({{"ok": ok, "errors": handler.errors, "stats": stats, "sent": sent}}), flush=True)
    handler.close()
''')


@pytest.mark.postgres
@pytest.mark.slow
def test_four_host_processes_share_one_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    url = new_pg_database(postgres_url)
    Store(url).close()  # schema first, as a deployment would (migrations run once)
    go = tmp_path / "go"
    procs = []
    for w in range(PROCESSES):
        script = tmp_path / f"host{w}.py"
        script.write_text(HOST.format(root=str(ROOT), url=url, worker=w, private=PRIVATE,
                                      shared=SHARED, turns=TURNS, go=str(go)))
        procs.append(subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                            "LOOP_SPOOL_DIR": str(tmp_path / f"spool{w}")}))
    time.sleep(3.0)  # let every host import and build its graph
    go.write_text("go")
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
        assert "Traceback" not in err, err[-3000:]

    for r in reports:
        assert r["ok"] and r["errors"] == 0, r
        # No lock error, deadlock or refused row: every batch went straight into the store.
        assert r["stats"]["write_failures"] == 0 and r["stats"]["spooled"] == 0, r["stats"]
        assert r["stats"]["rejected"] == 0

    store = Store(url)
    sent = [(tid, msg, tool) for r in reports for tid, msg, tool in r["sent"]]
    assert len(sent) == PROCESSES * (PRIVATE + SHARED) * TURNS
    threads = {t.thread_id: t for t in store.list_threads()}
    assert len(threads) == PROCESSES * PRIVATE + SHARED
    stored = Counter(turn.user_text for t in threads.values() for turn in t.turns)
    # nothing lost, nothing twice
    assert stored == Counter(msg for _, msg, _ in sent)
    for tid, msg, _ in sent:
        assert msg in {turn.user_text for turn in threads[tid].turns}
    with store.engine.connect() as conn:
        calls = conn.execute(text("select count(*) from loop_llm_call")).scalar()
        tools = conn.execute(text("select count(*) from loop_tool_call")).scalar()
        versions = conn.execute(text("select count(*) from loop_prompt_version")).scalar()
    assert calls == len(sent) + sum(tool for *_, tool in sent)
    assert tools == sum(tool for *_, tool in sent)
    assert versions == 1
    # A shared thread's row spans all its turns, whichever process wrote last.
    for t in range(SHARED):
        thread = threads[f"shared-{t}"]
        assert len(thread.turns) == PROCESSES * TURNS
        starts = [turn.started_at for turn in thread.turns]
        ends = [turn.ended_at for turn in thread.turns]
        assert thread.created_at == min(starts), (thread.created_at, min(starts))
        assert thread.updated_at == max(ends), (thread.updated_at, max(ends))


OUTAGE_HOST = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from loop_middleware import LoopCallbackHandler
    from loop_middleware.capture import BackgroundWriter
    from loop_middleware.store import Store
    from tests._fakes import fake_model, reply
    from tests.capture.test_handler import build_graph, order_lookup

    worker = {worker}
    # Every worker of the app uses the default spool of the store's URL: one spool for all.
    writer = BackgroundWriter(Store({url!r}, create=False), retry_interval=0.1, flush_interval=0.05)
    handler = LoopCallbackHandler(writer=writer)
    graph = build_graph(fake_model(*[reply(f"a{{i}}") for i in range(100000)]), [order_lookup])
    stop = Path({stop!r})
    sent = []
    i = 0
    while not stop.exists():  # capture until the test has restarted the database
        text = f"worker {{worker}} turn {{i}}"
        graph.invoke({{"messages": [("user", text)]}},
                     config={{"callbacks": [handler], "configurable": {{"thread_id": f"o-{{i % 5}}"}}}})
        sent.append(text)
        if i == 0:
            print("started", flush=True)
        i += 1
        time.sleep(0.02)
    ok = handler.flush(timeout=120)
    print(json.dumps({{"ok": ok, "sent": sent, "stats": writer.stats.as_dict(),
                      "errors": handler.errors}}), flush=True)
    handler.close()
''')


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_sharing_one_spool_lose_nothing_when_postgres_restarts(
    pg_server: Any, tmp_path: Path
) -> None:
    """The database goes away while four workers of one app capture: they all spool to the one
    default spool of the store's URL, and replay it when it is back. Each replays its own take
    of the spool, so no row written by one worker is dropped by another's replay."""
    url = new_pg_database(pg_server.url)
    Store(url).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOP_SPOOL_DIR": str(tmp_path / "spool")}
    procs = []
    for w in range(PROCESSES):
        script = tmp_path / f"outage{w}.py"
        script.write_text(OUTAGE_HOST.format(root=str(ROOT), url=url, worker=w,
                                             stop=str(tmp_path / "stop")))
        procs.append(subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    for p in procs:  # every host is capturing
        assert p.stdout is not None and p.stdout.readline().strip() == "started"
    time.sleep(1.0)
    pg_server.stop()
    try:
        time.sleep(2.0)
    finally:
        pg_server.start()
    time.sleep(1.5)
    (tmp_path / "stop").write_text("stop")
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["stats"]["spooled"] for r in reports) > 0, "the outage missed the run"
    store = Store(url)
    stored = Counter(turn.user_text for t in store.list_threads() for turn in t.turns)
    store.close()
    sent = Counter(m for r in reports for m in r["sent"])
    assert stored == sent, ([{k: v for k, v in r.items() if k != "sent"} for r in reports], sent - stored)
    assert all(r["ok"] for r in reports), reports
    assert not list((tmp_path / "spool").glob("*.jsonl*")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "spool").glob("*.jsonl*"))
