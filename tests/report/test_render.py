"""Unit tests of the report renderer: sections, escaping, empty states, self-containment."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pydantic
import pytest
from markupsafe import escape

from loop_middleware.errors import ConfigError
from loop_middleware.measure._stats import compare_rates
from loop_middleware.report._model import FixMeasurement, ReportData
from loop_middleware.report._render import render_html, render_report, thread_anchor
from loop_middleware.types import Diagnosis, Evidence, Intent, Message, Thread, Turn
from tests.report._sample import (
    REFUND_THREAD_ID,
    XSS_IMG,
    XSS_MARKDOWN,
    XSS_SCRIPT,
    empty_report_data,
    sample_report_data,
)

SECTIONS = ("intents", "signals", "diagnoses", "fixes", "health", "threads")


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text of every <script> element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script, self._buf = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            self._buf.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_script is not None:
            self.scripts.append((self._in_script, "".join(self._buf)))
            self._in_script = None

    def ids(self) -> set[str]:
        return {str(a["id"]) for _, a in self.tags if a.get("id")}

    def by_class(self, cls: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.tags if cls in (a.get("class") or "").split()]


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _outside_scripts(text: str) -> str:
    """The page without the contents of its <script> elements (plotly.js holds many strings)."""
    return re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", text, flags=re.S)


@pytest.fixture(scope="module")
def sample_html() -> str:
    return render_html(sample_report_data())


@pytest.fixture(scope="module")
def sample_page(sample_html: str) -> _Page:
    return _parse(sample_html)


def test_every_section_and_chart_is_present(sample_page: _Page) -> None:
    ids = sample_page.ids()
    assert set(SECTIONS) <= ids
    charts = [a["data-figure"] for a in sample_page.by_class("chart")]
    # intent volume + trend, heat map, f1 and f2 measured (f3 is not), health timeline
    assert len(charts) == 6
    islands = {a.get("id") for a, _ in sample_page.scripts if a.get("type") == "application/json"}
    assert set(charts) == islands
    data = sample_report_data()
    for d in data.diagnoses:
        assert f"diagnosis-{d.id}" in ids
    for f in data.fixes:
        assert f"fix-{f.id}" in ids
    for t in data.threads:
        assert thread_anchor(t.thread_id) in ids
    # the only "no data yet" block: fix f3 has not been measured
    assert len(sample_page.by_class("empty")) == 1


def test_internal_links_all_resolve(sample_page: _Page) -> None:
    ids = sample_page.ids()
    hrefs = [a.get("href") or "" for t, a in sample_page.tags if t == "a"]
    internal = [h for h in hrefs if h.startswith("#")]
    assert len(internal) > 10
    assert [h for h in internal if h[1:] not in ids] == []
    # Evidence links point into the thread view, at the cited turn.
    ev = {a["href"] for a in sample_page.by_class("evlink")}
    assert f"#{thread_anchor(REFUND_THREAD_ID)}-turn-0" in ev


def test_numbers_from_the_data_are_shown(sample_html: str) -> None:
    text = _outside_scripts(sample_html)
    data = sample_report_data()
    m = data.measurements["f1"]
    assert f"{m.before_rate * 100:.1f}%" in text and f"{m.after_rate * 100:.1f}%" in text
    assert f"{m.delta * 100:+.1f} pts" in text
    assert "48.6%" in text  # d1 rate in intent
    assert "812" in text and "2,391" in text
    assert "3</strong> groups hidden" in text and "fewer than 5 threads" in text


def test_hostile_text_is_escaped_everywhere(sample_html: str, sample_page: _Page) -> None:
    text = _outside_scripts(sample_html)
    for payload in (XSS_SCRIPT, XSS_IMG, "<b>raw html</b>", "<i>raw html stays text</i>",
                    "<b>2025</b>", "<i>setup</i>"):
        assert payload not in text, payload
    assert str(escape(XSS_SCRIPT)) in text
    assert str(escape(XSS_MARKDOWN)) in text
    tags = {t for t, _ in sample_page.tags}
    assert "img" not in tags and "b" not in tags and "i" not in tags
    handlers = [(t, k) for t, a in sample_page.tags for k in a if k.startswith("on")]
    assert handlers == []
    hrefs = [a.get("href") or "" for _, a in sample_page.tags]
    assert not [h for h in hrefs if "javascript" in h.lower()]
    # Exactly the page's own scripts: the JSON islands, plotly.js, the init script.
    assert len(sample_page.scripts) == 6 + 2
    assert sample_html.count("<script") == 8


def test_json_islands_cannot_be_closed_by_data() -> None:
    data = empty_report_data()
    data.intents = [Intent(id="x", name="</script><script>window.__xss=1</script>",
                           category="other", size=3)]
    page = _parse(render_html(data))
    islands = [s for a, s in page.scripts if a.get("type") == "application/json"]
    assert len(islands) == 1
    assert "</script" not in islands[0].lower() and "<" not in islands[0]
    import json

    fig = json.loads(islands[0])
    # plotly gets the entity-escaped label, which it displays literally
    assert fig["data"][0]["y"] == ["&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;"]


def test_self_contained_and_csp_allows_only_own_scripts(
    sample_html: str, sample_page: _Page
) -> None:
    for tag, attrs in sample_page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "img", "base"), tag
        assert "src" not in attrs, (tag, attrs)
        if tag != "a":
            assert not re.match(r"\s*(https?:)?//", attrs.get("href") or ""), (tag, attrs)
    assert "@import" not in sample_html and "url(http" not in sample_html
    external = [a["href"] for t, a in sample_page.tags if t == "a"
                and not (a.get("href") or "").startswith("#")]
    assert external == [u for u in (f.pr_url for f in sample_report_data().fixes)
                        if u and u.startswith("https://")]
    (csp,) = [a["content"] for t, a in sample_page.tags
              if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp is not None and "default-src 'none'" in csp
    allowed = set(re.findall(r"'(sha256-[^']+)'", csp))
    executable = [s for a, s in sample_page.scripts if a.get("type") != "application/json"]
    assert len(executable) == 2
    assert len(executable[0]) > 1_000_000  # plotly.js, inlined once
    digests = {"sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
               for s in executable}
    assert digests == allowed
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]


def test_empty_report_shows_no_data_states_and_no_plotly() -> None:
    text = render_html(empty_report_data())
    page = _parse(text)
    empties = page.by_class("empty")
    assert len(empties) == 6  # intents, matrix, diagnoses, fixes, health, threads
    assert text.count("No data yet") == 6
    assert set(SECTIONS) <= page.ids()
    assert not page.by_class("chart")
    assert len(text) < 100_000  # no figure, so no plotly.js bundle
    assert "groups hidden" not in text


def test_partial_report_marks_only_the_missing_parts() -> None:
    data = sample_report_data()
    data.measurements = {}
    data.health.timelines = []
    data.intent_trend = {}
    page = _parse(render_html(data))
    empties = page.by_class("empty")
    # trend, health, and one per unmeasured fix
    assert len(empties) == 1 + 1 + len(data.fixes)
    assert len(page.by_class("chart")) == 2  # volume + heat map


def test_missing_evidence_thread_is_named_not_linked(sample_html: str) -> None:
    data = sample_report_data()
    assert data.missing_evidence_threads() == ["th-refund-0099"]
    assert "th-refund-0099</code> <span class=\"muted\">(thread not included)" in sample_html
    assert f'href="#{thread_anchor("th-refund-0099")}' not in sample_html


def test_unsafe_pr_url_is_not_a_link(sample_page: _Page) -> None:
    prs = [a["href"] for a in sample_page.by_class("pr")]
    assert prs == ["https://github.com/acme/support-agent/pull/184",
                   "https://github.com/acme/support-agent/pull/191"]


def test_rationale_markdown_is_rendered_safely(sample_html: str) -> None:
    text = _outside_scripts(sample_html)
    assert "<strong>Diagnosis:</strong>" in text
    assert "&lt;i&gt;raw html stays text&lt;/i&gt;" in text
    # markdown-it refuses the javascript: link and leaves it as plain text
    assert "<p>[bad link](javascript:window.__xss='rationale')</p>" in text


def test_thread_view_shows_turns_tools_and_prompt_versions(sample_html: str) -> None:
    text = _outside_scripts(sample_html)
    assert "get_webhook_status" in text
    assert "error: TimeoutError: upstream status API did not answer in 10s" in text
    assert "&#34;endpoint_id&#34;: &#34;wh_8812&#34;" in text  # pretty JSON arguments, escaped
    data = sample_report_data()
    pv = data.threads[0].turns[0].llm_calls[-1].prompt_version
    assert pv is not None
    assert f"prompt <strong>{pv.name}</strong> <code title=\"{pv.sha256}\">{pv.short}</code>" in text


def test_odd_thread_ids_get_stable_hashed_anchors() -> None:
    odd = 'th 1/"quoted" <x>'
    anchor = thread_anchor(odd)
    assert anchor == thread_anchor(odd) and re.fullmatch(r"thread-h[0-9a-f]{16}", anchor)
    assert thread_anchor("th-ok_1.2") == "thread-th-ok_1.2"
    data = empty_report_data()
    data.threads = [Thread(thread_id=odd, turns=[Turn(id="t", thread_id=odd, messages=[
        Message(role="user", content="hello")])])]
    data.diagnoses = [Diagnosis(
        id="d", intent_id=None, intent_name="n", signal="s", failure_mode="unexplained",
        summary="s", sessions_affected=1, share_of_sessions=0.1, rate_in_intent=0.1,
        rate_elsewhere=0.0, lift=1.0, p_value=0.5, q_value=0.5, impact=1.0, confidence=0.5,
        evidence=[Evidence(thread_id=odd)])]
    page = _parse(render_html(data))
    assert anchor in page.ids()
    assert [a["href"] for a in page.by_class("evlink")] == [f"#{anchor}"]


def test_measurement_from_comparison_keeps_the_numbers() -> None:
    c = compare_rates(40, 100, 20, 100, metric="refusal rate", intent="refund")
    m = FixMeasurement.from_comparison(c)
    assert (m.before_rate, m.after_rate, m.before_n, m.after_n) == (0.4, 0.2, 100, 100)
    assert m.delta == pytest.approx(-0.2) and m.delta_ci == c.delta_ci
    assert m.before_ci == (c.before.ci_low, c.before.ci_high)
    assert m.decision == c.decision == "keep" and m.metric == "refusal rate in refund"


def test_contract_rejects_inconsistent_data() -> None:
    m = FixMeasurement.from_comparison(compare_rates(4, 40, 2, 40))
    with pytest.raises(pydantic.ValidationError, match="unknown fix ids: nope"):
        ReportData(generated_at=datetime.now(UTC), store="x", measurements={"nope": m})
    with pytest.raises(pydantic.ValidationError, match="not ordered"):
        FixMeasurement(metric="m", before_rate=0.1, before_ci=(0.2, 0.1), before_n=10,
                       after_rate=0.1, after_ci=(0.0, 0.2), after_n=10, delta=0.0,
                       delta_ci=(-0.1, 0.1), decision="wait")
    # the contract round-trips through JSON (the loop may hand it over as a file)
    data = sample_report_data()
    again = ReportData.model_validate_json(data.model_dump_json())
    assert again == data


def test_render_report_writes_one_file(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "report.html"
    out = render_report(empty_report_data(), target)
    assert out == target.resolve() and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left
    with pytest.raises(ConfigError, match="is a directory"):
        render_report(empty_report_data(), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write the report"):
        render_report(empty_report_data(), blocker / "report.html")
