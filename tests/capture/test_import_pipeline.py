"""Imported history flows through extract and diagnose exactly like captured traffic.

The same scripted support conversations run once through a real LangGraph agent captured live
by ``LoopCallbackHandler`` and once as an OpenAI-style transcript file; both stores go through
``extract`` and ``diagnose`` and must give the same signals, intents and diagnoses.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.capture import import_transcripts
from loop_middleware.diagnose import diagnose
from loop_middleware.extract import extract
from tests._fakes import fake_model, reply, tool_call
from tests.capture.test_handler import SYSTEM, build_graph, order_lookup

REFUND = ["I want a refund for order {n}", "Please refund my purchase {n}, it arrived broken",
          "Can I get my money back for order {n}?", "refund order {n} please, the item is damaged"]
ANGRY = ["This is useless, I want to talk to a human!", "Are you kidding me? Just refund it!!",
         "ugh, forget it, this is pointless"]
TRACK = ["Where is my order {n}?", "Has order {n} shipped yet?", "track order {n} please",
         "When will order {n} arrive?"]
REFUSAL = "I'm sorry, I can't help with refunds."


def conversations(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Scripted conversations: refund requests the agent refuses, order tracking it handles."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        order = str(100 + i)
        if i % 2 == 0:
            turns = [(rng.choice(REFUND).format(n=order), None, REFUSAL),
                     (rng.choice(ANGRY), None, "I cannot do that.")]
        else:
            turns = [(rng.choice(TRACK).format(n=order), order, f"Order {order} shipped on Monday."),
                     ("thanks", None, "You're welcome!")]
        out.append({"id": f"e2e-{i:03d}", "turns": turns})
    return out


def capture_live(convs: list[dict[str, Any]], url: str) -> None:
    handler = LoopCallbackHandler(url, emit_spans=False)
    for c in convs:
        script = []
        for _, order, answer in c["turns"]:
            if order:
                script.append(tool_call("order_lookup", {"order_id": order}, f"call-{order}"))
            script.append(reply(answer))
        graph = build_graph(fake_model(*script), [order_lookup])
        for user, _, _ in c["turns"]:
            graph.invoke({"messages": [("user", user)]},
                         config={"callbacks": [handler], "configurable": {"thread_id": c["id"]}})
    handler.flush()
    handler.close()


def transcript(convs: list[dict[str, Any]], path: Path, start: datetime) -> None:
    """The same conversations as an OpenAI-style history file (with the usage the host model
    reported, as exports carry it)."""
    with path.open("w", encoding="utf-8") as f:
        for i, c in enumerate(convs):
            msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
            for user, order, answer in c["turns"]:
                msgs.append({"role": "user", "content": user})
                if order:
                    cid = f"call-{order}"
                    msgs.append({"role": "assistant", "content": "", "usage": {"prompt_tokens": 20, "completion_tokens": 5},
                                 "tool_calls": [{"id": cid, "type": "function", "function": {
                                     "name": "order_lookup", "arguments": json.dumps({"order_id": order})}}]})
                    msgs.append({"role": "tool", "tool_call_id": cid, "content": f"Order {order}: shipped on Monday"})
                msgs.append({"role": "assistant", "content": answer,
                             "usage": {"prompt_tokens": 30, "completion_tokens": 7}})
            f.write(json.dumps({"id": c["id"], "created_at": (start + timedelta(minutes=i)).isoformat(),
                                "messages": msgs}) + "\n")


def partition(assignments: dict[str, str | None]) -> set[frozenset[str]]:
    groups: dict[str | None, set[str]] = defaultdict(set)
    for tid, intent in assignments.items():
        groups[intent].add(tid)
    return {frozenset(g) for g in groups.values()}


def test_imported_history_is_analysed_like_captured_traffic(tmp_path: Path) -> None:
    convs = conversations(60)
    live = Store(f"sqlite:///{tmp_path / 'live.db'}")
    capture_live(convs, live.url)
    history = tmp_path / "history.jsonl"
    transcript(convs, history, datetime(2024, 1, 1, tzinfo=UTC))
    imported = Store(f"sqlite:///{tmp_path / 'imported.db'}")
    report = import_transcripts(imported, history)
    assert (report.threads, report.turns, report.skipped) == (60, 120, [])

    results = {}
    for name, store in (("live", live), ("imported", imported)):
        res = extract(store, mode="tfidf")
        found = diagnose(store.list_threads(), store.load_signals(), store.load_intents(),
                         store.load_assignments())
        signals = {(s.thread_id, s.kind, s.turn_index) for s in store.load_signals()
                   if s.kind != "latency_outlier"}  # live turns have measured latencies, the file none
        results[name] = (res, found, signals)
    (lres, ldiag, lsig), (ires, idiag, isig) = results["live"], results["imported"]
    assert ires.threads_processed == 60
    assert isig == lsig and isig  # the same signals on the same turns
    assert {k for _, k, _ in isig} >= {"refusal", "frustration"}
    assert partition(ires.assignments) == partition(lres.assignments)

    def key(d: Any) -> tuple[Any, ...]:
        return (d.failure_mode, d.signal, d.sessions_affected, round(d.share_of_sessions, 6),
                frozenset(e.thread_id for e in d.evidence))
    assert idiag, "the planted refusal should be diagnosed"
    assert sorted(map(key, idiag), key=repr) == sorted(map(key, ldiag), key=repr)
    refund_threads = {c["id"] for i, c in enumerate(convs) if i % 2 == 0}
    assert any(d.signal == "refusal" and {e.thread_id for e in d.evidence} <= refund_threads for d in idiag)


def test_history_older_than_the_last_extraction_is_still_extracted(tmp_path: Path) -> None:
    convs = conversations(20, seed=3)
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    transcript(convs[:10], first, datetime(2024, 6, 1, tzinfo=UTC))
    transcript(convs[10:], second, datetime(2023, 1, 1, tzinfo=UTC))  # older history, imported later
    import_transcripts(store, first)
    assert extract(store, mode="tfidf").threads_processed == 10
    import_transcripts(store, second)
    again = extract(store, mode="tfidf")
    assert again.threads_processed == 10
    refused_later = {c["id"] for i, c in enumerate(convs) if i >= 10 and i % 2 == 0}
    assert {s.thread_id for s in store.load_signals() if s.kind == "refusal"} >= refused_later
    assert set(again.assignments) == {c["id"] for c in convs}
