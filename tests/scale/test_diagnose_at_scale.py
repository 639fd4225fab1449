"""``diagnose_store``: the same diagnoses as ``diagnose`` when every thread fits in the sample, and
numbers counted over every session when threads come from a smaller sample.

The store holds real traffic: the example agent's simulated customers captured by the real
``LoopCallbackHandler`` (planted defects included), analysed by ``extract``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.support_agent import simulate
from examples.support_agent.agent import V1_PROMPT_DIR
from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.diagnose import DiagnoseConfig, diagnose, diagnose_store, sample_thread_ids
from loop_middleware.extract import extract

N = 360


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('scale') / 'traffic.db'}"
    store = Store(url)
    handler = LoopCallbackHandler(store, emit_spans=False)
    simulate(N // 3, seed=3, prompt_dir=V1_PROMPT_DIR, callbacks=[handler], store=store,
             thread_prefix="v1")
    simulate(N - N // 3, seed=4, callbacks=[handler], store=store, thread_prefix="v2")
    handler.close()
    extract(store, mode="tfidf")
    return url


def test_a_sample_as_large_as_the_store_gives_diagnose_s_result(analysed: str) -> None:
    store = Store(analysed)
    want = diagnose(store.list_threads(), store.load_signals(), store.load_intents(),
                    store.load_assignments())
    assert len(want) >= 2  # the planted defects are there to be found
    got = diagnose_store(store, sample_size=N)
    assert [d.model_dump() for d in got] == [d.model_dump() for d in want]


def test_numbers_are_counted_over_every_session_when_threads_are_sampled(analysed: str) -> None:
    store = Store(analysed)
    threads = store.list_threads()
    signals = store.load_signals()
    assignments = store.load_assignments()
    full = diagnose(threads, signals, store.load_intents(), assignments)
    sampled = diagnose_store(store, sample_size=N // 2)
    assert sampled, "a half sample still finds the planted defects"
    excluded = DiagnoseConfig().opening_excluded_signals
    cell_based = [d for d in sampled if d.intent_id is not None]
    assert cell_based
    for d in sampled:
        assert d.details["sample"]["sessions"] <= N // 2 and d.details["sample"]["of"] == len(threads)
    for d in cell_based:
        kinds = set(d.details["signals"])
        hit = {s.thread_id for s in signals if s.kind in kinds
               and not (s.kind in excluded and s.turn_index == 0)}
        inside = {t for t in hit if assignments.get(t) == d.intent_id}
        in_intent = sum(1 for t in threads if assignments.get(t.thread_id) == d.intent_id)
        assert d.sessions_affected == len(inside), d.summary
        assert d.share_of_sessions == pytest.approx(len(inside) / len(threads))
        assert d.rate_in_intent == pytest.approx(len(inside) / in_intent)
        assert d.rate_elsewhere == pytest.approx((len(hit) - len(inside)) / (len(threads) - in_intent))
        assert f"{len(inside)} sessions" in d.summary
    # What the whole store shows first, the sample shows too.
    top = {(d.intent_id, d.failure_mode) for d in full[:2]}
    assert top & {(d.intent_id, d.failure_mode) for d in sampled}


def test_the_sample_is_deterministic_uniform_and_stable_as_the_store_grows() -> None:
    ids = [f"thread-{i}" for i in range(20_000)]
    a = sample_thread_ids(ids, 2_000)
    assert a == sample_thread_ids(list(reversed(ids)), 2_000)[::-1]  # order-free, input order kept
    assert len(a) == 2_000 and len(set(a)) == 2_000
    first_half = sum(1 for t in a if int(t.split("-")[1]) < 10_000)
    assert 850 < first_half < 1_150  # uniform over old and new threads (binomial sd ~ 22)
    grown = sample_thread_ids(ids + [f"thread-{i}" for i in range(20_000, 22_000)], 2_000)
    assert len(set(a) & set(grown)) > 1_700  # mostly the same threads after 10% growth
    assert sample_thread_ids(ids[:10], 2_000) == ids[:10]
    with pytest.raises(ValueError):
        diagnose_store(Store("sqlite://"), sample_size=0)


def test_an_empty_store_has_no_diagnoses(tmp_path: Path) -> None:
    assert diagnose_store(Store(f"sqlite:///{tmp_path / 'e.db'}")) == []


def test_an_embedder_named_by_a_string_is_a_clear_error(tmp_path: Path) -> None:
    from loop_middleware import ConfigError

    with pytest.raises(ConfigError, match="mode='default', 'fast' or 'tfidf'"):
        extract(Store(f"sqlite:///{tmp_path / 'x.db'}"), embedder="tfidf")  # type: ignore[arg-type]
