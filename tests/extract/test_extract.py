"""extract(store): incremental signals, stable intents across runs, novelty, persistence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from loop_middleware import Store
from loop_middleware.extract import extract, extract_signals, opening_text

REFUND = ["I want my money back for order {n}", "Please refund my purchase {n}",
          "How do I get a refund for {n}?", "Refund order {n}, it arrived broken",
          "I need a refund on transaction {n}", "can I return item {n} and get my money back"]
PASSWORD = ["I forgot my password for account {n}", "How do I reset my password? user {n}",
            "Password reset link not working {n}", "can't log in, need a new password {n}",
            "reset password please, account {n}", "my password doesn't work anymore {n}"]
DARK = ["Please add a dark mode to the app {n}", "Any plans for a dark theme? {n}",
        "I would love a night mode in the app {n}", "dark mode would be great for my eyes {n}",
        "Could you build a dark theme option {n}", "request: dark mode for the dashboard {n}"]

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def put(store: Store, tid: str, text: str, reply: str, when: datetime, *, tool_error: bool = False) -> None:
    rows: list[tuple[str, dict[str, Any]]] = [
        ("thread", {"thread_id": tid, "created_at": when, "updated_at": when}),
        ("turn", {"id": f"{tid}-0", "thread_id": tid, "started_at": when, "ended_at": when,
                  "input_messages": [{"role": "user", "content": text}]}),
        ("llm_call", {"id": f"{tid}-l", "turn_id": f"{tid}-0", "thread_id": tid, "seq": 1,
                      "input_messages": [{"role": "user", "content": text}],
                      "output_messages": [{"role": "assistant", "content": reply}]}),
    ]
    if tool_error:
        rows.append(("tool_call", {"id": f"{tid}-t", "turn_id": f"{tid}-0", "thread_id": tid, "seq": 0,
                                   "name": "refund_api", "arguments": {"n": 1},
                                   "error": "HTTP 503 Service Unavailable"}))
    store.write_rows(rows)


def fill(store: Store, groups: dict[str, list[str]], copies: int, start: datetime, prefix: str) -> None:
    i = 0
    for name, templates in groups.items():
        for c in range(copies):
            for t in templates:
                put(store, f"{prefix}-{name}-{i}", t.format(n=1000 + i), "Sure, let me check.",
                    start + timedelta(seconds=i), tool_error=(name == "refund" and c == 0))
                i += 1


def test_first_run_discovers_intents_then_runs_are_incremental_and_stable(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    fill(store, {"refund": REFUND, "password": PASSWORD}, 3, T0, "a")
    first = extract(store)
    assert first.threads_processed == 36
    tops = [i for i in first.intents if i.parent_id is None]
    assert len(tops) == 2
    groups: dict[str | None, set[str]] = {}
    for tid, iid in first.assignments.items():
        groups.setdefault(iid, set()).add(tid.split("-")[1])
    assert all(len(kinds) == 1 for iid, kinds in groups.items() if iid), groups  # pure clusters
    assert {s.kind for s in first.signals} >= {"tool_error"}
    assert sorted(i.size for i in tops) == [18, 18]

    # nothing new: nothing processed, nothing changes
    again = extract(store)
    assert again.threads_processed == 0
    assert again.assignments == first.assignments
    assert {i.id for i in again.intents} == {i.id for i in first.intents}

    # new threads of known intents keep the same ids; a new dense topic becomes a new intent
    fill(store, {"refund": REFUND, "dark": DARK}, 2, T0 + timedelta(days=1), "b")
    third = extract(store)
    assert third.threads_processed == 24
    for tid, iid in first.assignments.items():
        assert third.assignments[tid] == iid  # old threads never move
    refund_id = next(iid for tid, iid in first.assignments.items() if "-refund-" in tid)
    new_refunds = [third.assignments[t] for t in third.assignments if t.startswith("b-refund")]
    assert new_refunds.count(refund_id) >= 10
    assert third.new_intents
    dark = [third.assignments[t] for t in third.assignments if t.startswith("b-dark")]
    # the new topic goes to new intents (novelty), never into the old ones
    assert sum(1 for d in dark if d in third.new_intents) >= 8
    assert not set(dark) & {i.id for i in first.intents}
    assert store.load_intents() and len(store.load_signals()) >= len(first.signals)


def test_updated_threads_get_their_signals_replaced(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'y.db'}")
    put(store, "t1", "Refund order 5", "ok", T0)
    n, sigs = extract_signals(store)
    assert n == 1 and not [s for s in sigs if s.kind == "escalation"]
    later = T0 + timedelta(hours=1)
    store.write_rows([
        ("thread", {"thread_id": "t1", "created_at": T0, "updated_at": later}),
        ("turn", {"id": "t1-1", "thread_id": "t1", "started_at": later, "ended_at": later,
                  "input_messages": [{"role": "user", "content": "Let me talk to a real person NOW"}]}),
    ])
    n2, sigs2 = extract_signals(store)
    assert n2 == 1
    assert [s.kind for s in store.load_signals() if s.kind == "escalation"] == ["escalation"]
    assert {s.kind for s in sigs2} == {s.kind for s in store.load_signals()}


def test_tfidf_vocabulary_is_kept_so_ids_stay_stable(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'z.db'}")
    fill(store, {"refund": REFUND, "password": PASSWORD}, 3, T0, "a")
    first = extract(store, mode="tfidf")
    assert len([i for i in first.intents if i.parent_id is None]) >= 2
    fill(store, {"refund": REFUND}, 1, T0 + timedelta(days=1), "b")
    second = extract(store, mode="tfidf")
    for tid, iid in first.assignments.items():
        assert second.assignments[tid] == iid
    known = {i.id for i in first.intents}
    assert sum(1 for t, v in second.assignments.items() if t.startswith("b-") and v in known) >= 4


def test_opening_text_skips_empty_turns_and_cuts_long_pastes() -> None:
    from loop_middleware.types import Message, Thread, Turn

    t = Thread(thread_id="x", turns=[
        Turn(id="0", thread_id="x", messages=[Message(role="user", content="  ")]),
        Turn(id="1", thread_id="x", messages=[Message(role="user", content="Traceback " * 500)]),
    ])
    assert opening_text(t).startswith("Traceback") and len(opening_text(t)) == 600


def test_empty_store_is_fine(tmp_path: Path) -> None:
    res = extract(Store(f"sqlite:///{tmp_path / 'e.db'}"), mode="tfidf")
    assert res.threads_processed == 0 and res.intents == [] and res.assignments == {}


@pytest.mark.parametrize("mode", ["default"])
def test_result_helpers(tmp_path: Path, mode: str) -> None:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    fill(store, {"refund": REFUND, "password": PASSWORD}, 3, T0, "a")
    res = extract(store, mode=mode)  # type: ignore[arg-type]
    refund_id = next(iid for tid, iid in res.assignments.items() if "-refund-" in tid)
    assert res.share(refund_id) == pytest.approx(0.5)
    assert res.top_signals(refund_id)[0] == ("tool_error", 6)  # copy 0 of each template


def test_chunked_signal_extraction_equals_one_batch(tmp_path: Path) -> None:
    """Threads are read and examined a chunk at a time; the batch statistic (the latency
    outlier threshold) still comes from every thread, so the signals equal one whole batch."""
    from loop_middleware.extract import detect_signals

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    fill(store, {"refund": REFUND, "password": PASSWORD}, 2, T0, "a")
    # Steady ~1 s turns, with one 60 s turn: an outlier only against the whole batch.
    rows: list[tuple[str, dict[str, Any]]] = []
    for k, tid in enumerate(store.thread_ids()):
        rows.append(("turn", {"id": f"{tid}-0", "thread_id": tid, "latency_ms": 1000.0 + 10 * (k % 7)}))
    rows.append(("turn", {"id": "a-password-20-0", "thread_id": "a-password-20", "latency_ms": 60_000.0}))
    store.write_rows(rows)
    whole = detect_signals(store.list_threads())
    n, chunked = extract_signals(store, chunk_size=5)  # 24 threads: 5 units
    assert n == 24
    key = [(s.thread_id, s.kind, s.turn_index, s.evidence) for s in whole]
    assert [(s.thread_id, s.kind, s.turn_index, s.evidence) for s in chunked] == key
    assert ("a-password-20", "latency_outlier") in {(s.thread_id, s.kind) for s in chunked}
    stored = store.load_signals()
    assert sorted((s.thread_id, s.kind, s.turn_index) for s in stored) == sorted(k[:3] for k in key)
