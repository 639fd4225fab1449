"""One diagnosis per root cause on real traffic: the example agent's simulated customers (planted
defects: no refund policy, ungrounded answers after an empty ``search_kb``, context cut after
turn 8, v2 dropped the escalation section), captured by the real ``LoopCallbackHandler`` and
analysed by ``extract``; diagnosed over every thread and, at scale, over a sample with the
numbers counted by the database.
"""

from __future__ import annotations

from collections import Counter

import pytest

from examples.support_agent import simulate
from examples.support_agent.agent import V1_PROMPT_DIR
from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.diagnose import DiagnoseConfig, diagnose, diagnose_store
from loop_middleware.diagnose._merge import mechanism_key
from loop_middleware.extract import extract

N = 450


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('merge') / 'traffic.db'}"
    store = Store(url)
    handler = LoopCallbackHandler(store, emit_spans=False)
    simulate(N // 3, seed=5, prompt_dir=V1_PROMPT_DIR, callbacks=[handler], store=store,
             thread_prefix="v1")
    simulate(N - N // 3, seed=6, callbacks=[handler], store=store, thread_prefix="v2")
    handler.close()
    extract(store, mode="tfidf")
    return url


def test_every_root_cause_is_listed_once_with_a_breakdown_that_sums(analysed: str) -> None:
    store = Store(analysed)
    threads = store.list_threads()
    assignments = store.load_assignments()
    ds = diagnose(threads, store.load_signals(), store.load_intents(), assignments)
    keys = [k for d in ds if (k := mechanism_key(d)) is not None]
    assert len(keys) == len(set(keys)), [d.headline for d in ds]
    modes = Counter(d.failure_mode for d in ds if d.failure_mode != "unexplained")
    # The planted ones that reach several intents, once each.
    assert {"coverage_gap", "ungrounded_answer"} <= set(modes), [d.headline for d in ds]
    assert all(n == 1 for m, n in modes.items()
               if m in ("ungrounded_answer", "regression", "context_loss")), modes
    merged = [d for d in ds if "merged" in d.details]
    assert merged, "the planted defects reach several intents"
    for d in ds:
        per = d.details["intents"]
        assert sum(e["sessions"] for e in per) == d.sessions_affected
        assert d.share_of_sessions == pytest.approx(d.sessions_affected / len(threads))
        ids = set(d.details["affected_thread_ids"])
        if d.sessions_affected <= 100:
            assert len(ids) == d.sessions_affected
            for e in per:
                assert e["sessions"] == sum(1 for t in ids if assignments.get(t) == e["intent_id"])
    for d in merged:
        members = d.details["merged"]
        assert members[0]["id"] == d.id and members[0]["role"] == "primary"
        assert d.details["merged_ids"] == [m["id"] for m in members[1:]]
        # The primary is the strongest member, and the merged one is at least as strong.
        assert all(members[0]["impact"] >= m["impact"] for m in members if m["role"] == "root")
        assert d.impact >= members[0]["impact"]
        assert d.q_value == max(m["q_value"] for m in members)
    # Deterministic: the same input, the same diagnoses.
    again = diagnose(threads, store.load_signals(), store.load_intents(), assignments)
    assert [d.model_dump() for d in again] == [d.model_dump() for d in ds]


def test_at_scale_the_breakdown_counts_every_session(analysed: str) -> None:
    store = Store(analysed)
    threads = store.list_threads()
    signals = store.load_signals()
    assignments = store.load_assignments()
    sampled = diagnose_store(store, sample_size=N // 2)
    assert any("merged" in d.details for d in sampled)
    excluded = DiagnoseConfig().opening_excluded_signals
    for d in sampled:
        assert sum(e["sessions"] for e in d.details["intents"]) == d.sessions_affected
        if d.failure_mode == "regression" or "merged" not in d.details:
            continue
        # A merged diagnosis of cells: each member intent's count is exact, over every session.
        for m in d.details["merged"]:
            if m["role"] == "consequence":
                continue
            kinds = set(m["signals"])
            exact = {s.thread_id for s in signals if s.kind in kinds
                     and assignments.get(s.thread_id) == m["intent_id"]
                     and not (s.kind in excluded and s.turn_index == 0)}
            [entry] = [e for e in d.details["intents"] if e["intent_id"] == m["intent_id"]]
            assert entry["sessions"] == m["sessions_affected"] == len(exact)
    assert sum(1 for t in threads) == sampled[0].details["sample"]["of"]
