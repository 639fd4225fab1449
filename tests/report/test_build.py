"""ReportData assembled from a real store (the whole loop run on it), rendered to HTML."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loop_middleware import Diagnosis, Evidence, Intent, Signal, Store
from loop_middleware.errors import ConfigError
from loop_middleware.measure._cohorts import looks_key
from loop_middleware.report import render_report
from loop_middleware.report._build import build_report_data, to_fix_measurement
from tests.measure.test_cohorts import KeepScenario, build_keep_scenario


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeepScenario]:
    scenario = build_keep_scenario(tmp_path_factory.mktemp("report") / "host")
    yield scenario
    scenario.world.close()


def test_report_data_from_the_store_renders(keep: KeepScenario, tmp_path: Path) -> None:
    store = keep.world.store
    looks_before = store.get_meta(looks_key(keep.fix.id))
    calls: list[tuple[str, int, int]] = []
    data = build_report_data(store, title="Acme loop", min_group_size=5,
                             progress=lambda *a: calls.append(a))
    # Building a report does not spend a sequential look.
    assert store.get_meta(looks_key(keep.fix.id)) == looks_before
    assert calls and calls[-1][0] == "done" and {c[0] for c in calls} >= {"measuring fixes"}

    assert data.totals.threads == 166 and data.totals.turns == 166
    assert data.diagnoses and data.diagnoses[0].id == keep.fix.diagnosis_id
    assert [f.id for f in data.fixes] == [keep.fix.id]
    m = data.measurements[keep.fix.id]
    [result] = keep.results
    assert m.decision == "keep" and result.comparison is not None
    assert (m.before_n, m.after_n) == (result.comparison.before.n, result.comparison.after.n)
    assert m.delta == pytest.approx(result.comparison.delta)
    # Evidence threads are exactly the cited ones, with their signals.
    cited = {e.thread_id for d in data.diagnoses for e in d.evidence}
    assert {t.thread_id for t in data.threads} == cited and not data.missing_evidence_threads()
    assert {s.thread_id for s in data.thread_signals} <= cited and data.thread_signals
    # The matrix counts distinct threads per intent and signal, as the store holds them.
    assignments = store.load_assignments()
    fired = {(assignments.get(s.thread_id), s.kind, s.thread_id) for s in store.load_signals()}
    expected = Counter((i, k) for i, k, _ in fired if i is not None)
    for cell in data.signal_matrix:
        assert cell.count == expected[(cell.intent_id, cell.signal)] >= 5
    refund = keep.world.intent_of_kind("refund")
    assert sum(n for _, n in data.intent_trend[refund]) == sum(
        1 for a in assignments.values() if a == refund)
    assert [t.first("confirmed") is not None for t in data.health.timelines] == [True]

    out = render_report(data, tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    for d in data.diagnoses:
        assert d.id in html
    assert keep.fix.id in html and "Acme loop" in html
    # The header says which embedder made the intents and the quality to expect; a weaker one
    # than MiniLM (here TF-IDF) also gets a notice.
    assert data.embedder == "tfidf" and "NMI ~0.57" in data.embedder_note
    assert 'id="embedder"' in html and 'id="embedder-notice"' in html and "TF-IDF" in html

    # Precomputed measurements are used as given (FixMeasurementResult is converted).
    given = build_report_data(store, measurements={keep.fix.id: result})
    fm = to_fix_measurement(keep.fix, result)
    assert fm is not None and given.measurements[keep.fix.id] == fm
    assert build_report_data(store, measure=False).measurements == {}


def test_everything_is_suppressed_below_a_huge_group_size(keep: KeepScenario) -> None:
    data = build_report_data(keep.world.store, min_group_size=10_000, measure=False)
    assert data.intents == [] and data.diagnoses == [] and data.signal_matrix == []
    assert data.fixes == [] and data.threads == [] and data.health.timelines == []
    store = keep.world.store
    # A hidden intent hides its matrix row with it; the row's cells are not counted again.
    assert data.suppressed_groups == len(store.load_intents()) + len(store.load_diagnoses())


def test_small_groups_are_hidden_and_counted(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    t0 = datetime(2025, 6, 2, tzinfo=UTC)
    sizes = {"big": 10, "tiny": 3, "mid": 6}
    rows, assignments, signals = [], {}, []
    i = 0
    for intent, n in sizes.items():
        for _ in range(n):
            tid = f"t{i:03d}"
            rows.append(("thread", {"thread_id": tid, "created_at": t0 + timedelta(days=i % 3)}))
            rows.append(("turn", {"id": f"u{i}", "thread_id": tid, "started_at": t0,
                                  "input_messages": [{"role": "user", "content": "hi"}]}))
            assignments[tid] = (intent, None)
            if intent != "mid" or i % 2:  # mid: 3 of 6 threads fire -> a cell under 5
                signals.append(Signal(thread_id=tid, kind="refusal", turn_index=0))
            i += 1
    store.write_rows(rows)
    store.save_assignments(assignments)
    store.save_signals(list(assignments), signals)
    store.save_intents([Intent(id=k, name=f"{k} intent", category="other", size=n)
                        for k, n in sizes.items()])

    def dx(dx_id: str, intent: str, affected: int) -> Diagnosis:
        return Diagnosis(
            id=dx_id, intent_id=intent, intent_name=intent, signal="refusal",
            failure_mode="coverage_gap", summary="s", sessions_affected=affected,
            share_of_sessions=0.1, rate_in_intent=0.5, rate_elsewhere=0.1, lift=5, p_value=0.01,
            q_value=0.02, impact=float(affected), confidence=0.5,
            evidence=[Evidence(thread_id="t000", turn_index=0, quote="hi")],
        )

    store.save_diagnoses([dx("dx-big", "big", 10), dx("dx-tiny", "tiny", 3), dx("dx-few", "big", 4)])
    data = build_report_data(store, min_group_size=5)
    assert [i.id for i in data.intents] == ["big", "mid"]
    assert [(c.intent_id, c.count) for c in data.signal_matrix] == [("big", 10)]
    assert [d.id for d in data.diagnoses] == ["dx-big"]
    # hidden: intent tiny, cell mid x refusal (3 threads), diagnoses dx-tiny and dx-few
    assert data.suppressed_groups == 4
    assert set(data.intent_trend) == {"big", "mid"}
    assert [n for _, n in data.intent_trend["big"]] == [4, 3, 3]
    assert [t.thread_id for t in data.threads] == ["t000"]
    html = render_report(data, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "tiny intent" not in html and "big intent" in html
    with pytest.raises(ConfigError):
        build_report_data(store, min_group_size=0)
