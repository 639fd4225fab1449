"""Store GROUP BY counts (SQLite and PostgreSQL) equal a Python count over ``list_threads()``."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from loop_middleware import Store
from loop_middleware.diagnose._hypotheses import thread_main_prompt
from loop_middleware.types import Signal, Thread

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
SHAS = ["a" * 64, "b" * 64, "c" * 64]
KINDS = ["frustration", "tool_error", "escalation", "refusal"]


def populate(store: Store, n: int, seed: int) -> None:
    """Threads that exercise every rule: several prompt versions per thread (ties included),
    calls with no prompt, turns without calls, threads without turns, missing ``created_at``,
    unassigned threads, sub-intents, signals on the first turn and with no turn."""
    rng = random.Random(seed)
    rows: list[tuple[str, dict[str, Any]]] = []
    for pv in SHAS:
        rows.append(("prompt_version", {"sha256": pv, "text": f"prompt {pv[0]}", "first_seen": T0}))
    signals: list[Signal] = []
    assignments: dict[str, tuple[str | None, str | None]] = {}
    for i in range(n):
        tid = f"t{i:04d}"
        created = T0 + timedelta(hours=rng.randint(0, 96))
        rows.append(("thread", {"thread_id": tid, "updated_at": created,
                                "created_at": None if rng.random() < 0.1 else created}))
        turns = 0 if rng.random() < 0.08 else rng.randint(1, 5)
        for k in range(turns):
            started = None if rng.random() < 0.05 else created + timedelta(minutes=k)
            rows.append(("turn", {"id": f"{tid}-{k}", "thread_id": tid, "started_at": started,
                                  "input_messages": [{"role": "user", "content": f"q{k}"}]}))
            for seq in range(rng.randint(0, 3)):
                shas = [] if rng.random() < 0.2 else rng.sample(SHAS, rng.randint(1, 2))
                rows.append(("llm_call", {"id": f"{tid}-{k}-{seq}", "turn_id": f"{tid}-{k}",
                                          "thread_id": tid, "seq": rng.choice([seq, 5 - seq]),
                                          "prompt_shas": shas}))
            for kind in rng.sample(KINDS, rng.randint(0, 2)):
                signals.append(Signal(thread_id=tid, kind=kind, turn_index=k))
        if rng.random() < 0.3:
            signals.append(Signal(thread_id=tid, kind=rng.choice(KINDS), turn_index=None))
        if rng.random() < 0.85:
            intent = rng.choice(["i1", "i2", "i3", None])
            sub = rng.choice([None, f"{intent}.s"]) if intent else None
            assignments[tid] = (intent, sub)
    store.write_rows(rows)
    store.save_signals([f"t{i:04d}" for i in range(n)], signals)
    store.save_assignments(assignments)


def _day(t: Thread) -> Any:
    when = t.created_at or min((u.started_at for u in t.turns if u.started_at), default=None)
    return when.date() if when else None


def reference(store: Store, exclude: set[str], leaf: bool) -> tuple[Counter[Any], Counter[Any]]:
    threads = store.list_threads()
    assigned = store.load_assignments(leaf=leaf)
    sessions: Counter[Any] = Counter()
    group = {}
    for t in threads:
        pv = thread_main_prompt(t)
        key = (assigned.get(t.thread_id), pv.sha256 if pv else None, _day(t))
        group[t.thread_id] = key
        sessions[key] += 1
    hits = {(s.thread_id, s.kind) for s in store.load_signals()
            if s.thread_id in group and not (s.kind in exclude and s.turn_index == 0)}
    affected: Counter[Any] = Counter()
    for tid, kind in hits:
        intent, sha, day = group[tid]
        affected[(intent, kind, sha, day)] += 1
    return sessions, affected


def test_counts_equal_a_python_count_over_list_threads(store_url: str) -> None:
    store = Store(store_url)
    populate(store, 240, seed=7)
    for leaf in (False, True):
        for exclude in (set(), {"frustration", "escalation"}):
            want_sessions, want_affected = reference(store, exclude, leaf)
            got_sessions = Counter({(c.intent_id, c.prompt_sha256, c.day): c.sessions
                                    for c in store.session_counts(leaf=leaf)})
            got_affected = Counter({(c.intent_id, c.kind, c.prompt_sha256, c.day): c.sessions
                                    for c in store.signal_counts(exclude_opening=exclude, leaf=leaf)})
            assert got_sessions == want_sessions
            assert got_affected == want_affected
    # The data really exercises the rules: several versions, days, unassigned and no-prompt groups.
    keys = list(want_sessions)
    assert {k[1] for k in keys} >= {*SHAS, None}
    assert None in {k[0] for k in keys} and len({k[2] for k in keys}) >= 4


def test_totals_are_the_sums_of_the_groups(store_url: str) -> None:
    store = Store(store_url)
    populate(store, 120, seed=3)
    groups = store.session_counts()
    by_intent: Counter[Any] = Counter()
    by_version: Counter[Any] = Counter()
    for c in groups:
        by_intent[c.intent_id] += c.sessions
        by_version[c.prompt_sha256] += c.sessions
    assert store.intent_totals() == dict(by_intent)
    assert store.prompt_version_totals() == dict(by_version)
    assert sum(by_intent.values()) == len(store.list_threads())
    sizes = store.intent_sizes()
    assert sizes == dict(Counter(store.load_assignments().values()))
    assert store.intent_sizes(leaf=True) == dict(Counter(store.load_assignments(leaf=True).values()))


def test_empty_store_has_no_counts(store_url: str) -> None:
    store = Store(store_url)
    assert store.session_counts() == [] and store.signal_counts() == []
    assert store.intent_totals() == {} and store.prompt_version_totals() == {}


def test_affected_sessions_of_several_kinds_count_each_session_once(store_url: str) -> None:
    store = Store(store_url)
    populate(store, 240, seed=11)
    threads = {t.thread_id for t in store.list_threads()}
    assigned = store.load_assignments()
    signals = store.load_signals()
    checked = 0
    for kinds in (["frustration"], ["frustration", "tool_error"], KINDS):
        for exclude in (set(), {"frustration"}):
            hit = {s.thread_id for s in signals if s.kind in kinds and s.thread_id in threads
                   and not (s.kind in exclude and s.turn_index == 0)}
            for intent in ("i1", "i3", None, "no-such-intent"):
                inside = {t for t in hit if assigned.get(t) == intent}
                got = store.affected_sessions(kinds, intent, exclude_opening=exclude)
                assert got == (len(inside), len(hit) - len(inside)), (kinds, exclude, intent)
                checked += bool(inside)
    assert checked >= 12  # most combinations have affected sessions inside the intent
    assert store.affected_sessions([], "i1") == (0, 0)
