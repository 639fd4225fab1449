"""Render a :class:`ReportData` as ONE self-contained HTML file.

Why it is built this way:

* **One file, no network.** The page is opened from disk, attached to issues, archived in CI.
  plotly.js is inlined once (``plotly.offline.get_plotlyjs()``, ~4.6 MB); each figure travels as
  a JSON island (``<script type="application/json">``) that a small script hands to
  ``Plotly.newPlot``. No font, style or script is fetched, and a Content-Security-Policy with
  ``default-src 'none'`` makes any accidental fetch fail loudly instead of silently leaking.
* **Conversation text is hostile.** Users type ``<script>``, Markdown and HTML; intent names are
  built from their words. Jinja autoescaping is on for every template, the JSON islands escape
  ``<``, ``>`` and ``&`` so no string can close its ``<script>`` element, and labels handed to
  plotly are entity-escaped because plotly interprets a subset of HTML in text. As a second wall,
  the CSP allows only the page's own scripts by SHA-256 hash, so even an injected ``<script>`` or
  ``onerror=`` handler would not run.
* **Threads are collapsed** (``<details>``) so a report citing hundreds of threads stays
  scannable; following an evidence link opens the cited thread and scrolls to the turn.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import plotly.graph_objects as go
from markdown_it import MarkdownIt
from markupsafe import Markup

from loop_middleware.errors import ConfigError
from loop_middleware.report._model import (
    FailureModeTimeline,
    FixMeasurement,
    HealthStage,
    ReportData,
)
from loop_middleware.types import (
    Diagnosis,
    Fix,
    LLMCall,
    Message,
    Signal,
    Thread,
    ToolCall,
    Turn,
)

__all__ = ["render_html", "render_report", "thread_anchor", "turn_anchor"]

_TEMPLATE = "report.html.j2"
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,120}")
_MAX_TREND_INTENTS = 8
_MAX_BAR_INTENTS = 20

# One palette for page and charts, so a badge and its chart series read as the same thing.
_COLORS = {
    "ink": "#1f2933",
    "muted": "#616e7c",
    "grid": "#e4e7eb",
    "before": "#9aa5b1",
    "after": "#2563eb",
    "keep": "#15803d",
    "revert": "#b91c1c",
    "wait": "#b45309",
}
_STAGE_STYLE: dict[HealthStage, tuple[str, str, str]] = {
    # stage: (legend label, color, marker symbol)
    "first_seen": ("first seen", "#b91c1c", "circle"),
    "diagnosed": ("diagnosed", "#b45309", "diamond"),
    "pr_opened": ("PR opened", "#2563eb", "square"),
    "merged": ("merged", "#7c3aed", "square-open"),
    "confirmed": ("confirmed fixed", "#15803d", "star"),
    "reverted": ("reverted", "#6b7280", "x"),
    "recurred": ("came back", "#be185d", "triangle-up"),
}


# --- public helpers ---------------------------------------------------------------------------


def thread_anchor(thread_id: str) -> str:
    """The HTML id of a thread's view (``thread-<id>``; hashed when the id has odd characters)."""
    if _SAFE_ID.fullmatch(thread_id):
        return f"thread-{thread_id}"
    # Ids with spaces, slashes or quotes would need escaping in URLs and selectors; a stable hash
    # keeps links working without ever echoing the raw id into an attribute.
    return "thread-h" + hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:16]


def turn_anchor(thread_id: str, turn_index: int) -> str:
    """The HTML id of one turn inside a thread's view."""
    return f"{thread_anchor(thread_id)}-turn-{turn_index}"


def render_html(data: ReportData) -> str:
    """Render the report to an HTML string (what :func:`render_report` writes)."""
    view = _build_view(data)
    init_js = _INIT_JS
    plotly_js = _plotly_js() if view.figures else ""
    csp_hashes = [_csp_hash(init_js)] + ([_csp_hash(plotly_js)] if plotly_js else [])
    return _env().get_template(_TEMPLATE).render(
        data=data,
        v=view,
        plotly_js=Markup(plotly_js),
        init_js=Markup(init_js),
        csp_script_src=" ".join(f"'{h}'" for h in csp_hashes),
        colors=_COLORS,
    )


def render_report(data: ReportData, path: Path) -> Path:
    """Write the report for ``data`` to ``path`` as one self-contained HTML file.

    Parent directories are created. The file is written atomically (a temporary file renamed
    into place), so a reader never sees half a report. Returns the resolved path.

    Raises:
        ConfigError: ``path`` is a directory or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"report path {str(path)!r} is a directory; give a file name")
    text = render_html(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {str(path)!r}: {exc}") from exc
    return path.resolve()


# --- environment ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("loop_middleware.report", "templates"),
        # Always on, whatever the template's extension: every template renders untrusted text.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=_pct, pts=_pts, num=_num, dt=_dt, date=_date, short=_short, pretty=_pretty,
        safe_url=_safe_url, markdown=_markdown, pval=_pval,
    )
    env.globals.update(thread_anchor=thread_anchor, turn_anchor=turn_anchor)
    return env


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


@lru_cache(maxsize=1)
def _md() -> MarkdownIt:
    # html=False: raw HTML in a rationale is shown as text; markdown-it's link validation already
    # drops javascript:/vbscript:/data: (non-image) URLs.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


# --- filters ----------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _pts(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f} pts"


def _num(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pval(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _dt(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _date(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d")


def _short(value: str | None, n: int = 12) -> str:
    return "" if not value else value[:n]


def _pretty(value: Any) -> str:
    """Tool arguments as readable JSON (strings that are JSON are parsed first)."""
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except ValueError:
            return text
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _safe_url(value: str | None) -> str | None:
    """The URL if it is an http(s) link, else None (no javascript:, data:, file: hrefs)."""
    if not value:
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    return value.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _markdown(value: str) -> Markup:
    # markdown-it escapes text and (with html=False) raw HTML; its output is safe to mark up.
    return Markup(_md().render(value))


# --- view model -------------------------------------------------------------------------------


@dataclass
class _Figure:
    id: str
    json: Markup
    height: int


@dataclass
class _Step:
    kind: str  # "llm" | "tool"
    seq: int
    llm: LLMCall | None = None
    tool: ToolCall | None = None


@dataclass
class _TurnView:
    turn: Turn
    anchor: str
    steps: list[_Step]
    signals: list[Signal]
    messages: list[Message]


@dataclass
class _ThreadView:
    thread: Thread
    anchor: str
    turns: list[_TurnView]
    thread_signals: list[Signal]
    cited_by: list[Diagnosis]
    has_error: bool


@dataclass
class _HealthRow:
    timeline: FailureModeTimeline
    first_seen: datetime | None
    diagnosed: datetime | None
    pr_opened: datetime | None
    confirmed: datetime | None
    to_diagnose: str
    to_pr: str
    to_confirm: str


@dataclass
class _View:
    figures: list[_Figure] = field(default_factory=list)
    fig_intent_volume: str | None = None
    fig_intent_trend: str | None = None
    fig_heatmap: str | None = None
    fig_health: str | None = None
    fig_fix: dict[str, str] = field(default_factory=dict)
    intent_names: dict[str, str] = field(default_factory=dict)
    intents_sorted: list[Any] = field(default_factory=list)
    intent_share: dict[str, float] = field(default_factory=dict)
    thread_ids: set[str] = field(default_factory=set)
    threads: list[_ThreadView] = field(default_factory=list)
    diagnoses_by_id: dict[str, Diagnosis] = field(default_factory=dict)
    fixes_by_diagnosis: dict[str, list[Fix]] = field(default_factory=dict)
    health_rows: list[_HealthRow] = field(default_factory=list)
    decision_counts: dict[str, int] = field(default_factory=dict)
    signals_total: int = 0

    def add(self, fig: go.Figure, height: int) -> str:
        fig_id = f"fig-{len(self.figures)}"
        self.figures.append(_Figure(fig_id, _json_island(fig), height))
        return fig_id


def _json_island(fig: go.Figure) -> Markup:
    # Inside <script type="application/json"> the only danger is "</script" (or "<!--") closing
    # the element early; \u-escaping <, > and & keeps the JSON valid and the element closed.
    text = fig.to_json()
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(text)


def _lbl(text: str) -> str:
    """A label for plotly: it renders a subset of HTML (``<b>``, ``<a href>``) in text, so entity-
    escape untrusted words; plotly decodes the entities and shows the text literally."""
    return html.escape(text, quote=False)


def _build_view(data: ReportData) -> _View:
    v = _View()
    v.intent_names = {i.id: i.name for i in data.intents}
    v.intents_sorted = sorted(data.intents, key=lambda i: (-i.size, i.name))
    total = data.totals.threads or sum(i.size for i in data.intents if i.parent_id is None)
    v.intent_share = {i.id: (i.size / total if total else 0.0) for i in data.intents}
    v.diagnoses_by_id = {d.id: d for d in data.diagnoses}
    for fix in data.fixes:
        v.fixes_by_diagnosis.setdefault(fix.diagnosis_id, []).append(fix)
    v.thread_ids = {t.thread_id for t in data.threads}
    v.signals_total = sum(c.count for c in data.signal_matrix)
    for m in data.measurements.values():
        v.decision_counts[m.decision] = v.decision_counts.get(m.decision, 0) + 1

    if data.intents:
        v.fig_intent_volume = v.add(*_intent_volume_fig(v.intents_sorted))
    if data.intent_trend:
        fig = _intent_trend_fig(data.intent_trend, v.intents_sorted, v.intent_names)
        if fig is not None:
            v.fig_intent_trend = v.add(*fig)
    if data.signal_matrix:
        v.fig_heatmap = v.add(*_heatmap_fig(data, v.intents_sorted, v.intent_names))
    for fix in data.fixes:
        measured = data.measurements.get(fix.id)
        if measured is not None:
            v.fig_fix[fix.id] = v.add(*_fix_fig(measured))
    if data.health.timelines:
        v.fig_health = v.add(*_health_fig(data.health.timelines))

    v.threads = _thread_views(data)
    v.health_rows = [_health_row(t) for t in data.health.timelines]
    return v


def _steps(turn: Turn) -> list[_Step]:
    steps = [_Step("llm", c.seq, llm=c) for c in turn.llm_calls]
    steps += [_Step("tool", c.seq, tool=c) for c in turn.tool_calls]
    # Capture numbers LLM and tool calls on one sequence; keep the given order on ties.
    return sorted(steps, key=lambda s: s.seq)


def _chat_messages(turn: Turn) -> list[Message]:
    """The turn's messages for the chat column: system prompts are shown as prompt versions in
    the trace, and a tool result already shown (with its arguments) on its tool call is not
    repeated."""
    traced = {c.tool_call_id for c in turn.tool_calls if c.tool_call_id}
    return [
        m for m in turn.messages
        if m.role != "system" and not (m.role == "tool" and m.tool_call_id in traced)
    ]


def _thread_views(data: ReportData) -> list[_ThreadView]:
    by_thread: dict[str, list[Signal]] = defaultdict(list)
    for s in data.thread_signals:
        by_thread[s.thread_id].append(s)
    cited: dict[str, list[Diagnosis]] = defaultdict(list)
    for d in data.diagnoses:
        for tid in dict.fromkeys(e.thread_id for e in d.evidence):
            cited[tid].append(d)
    views = []
    for t in data.threads:
        sigs = by_thread.get(t.thread_id, [])
        turns = []
        for turn in sorted(t.turns, key=lambda x: x.index):
            turns.append(_TurnView(
                turn=turn,
                anchor=turn_anchor(t.thread_id, turn.index),
                steps=_steps(turn),
                signals=[s for s in sigs if s.turn_index == turn.index],
                messages=_chat_messages(turn),
            ))
        has_error = any(
            turn.error or any(c.error for c in turn.tool_calls) or any(c.error for c in turn.llm_calls)
            for turn in t.turns
        )
        views.append(_ThreadView(
            thread=t, anchor=thread_anchor(t.thread_id), turns=turns,
            thread_signals=[s for s in sigs if s.turn_index is None],
            cited_by=cited.get(t.thread_id, []), has_error=has_error,
        ))
    return views


def _duration(a: datetime | None, b: datetime | None) -> str:
    if a is None or b is None:
        return "–"
    seconds = (b - a).total_seconds()
    if seconds < 0:
        return "–"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _health_row(t: FailureModeTimeline) -> _HealthRow:
    def at(stage: HealthStage) -> datetime | None:
        e = t.first(stage)
        return e.at if e else None

    first, diag, pr, conf = at("first_seen"), at("diagnosed"), at("pr_opened"), at("confirmed")
    return _HealthRow(
        timeline=t, first_seen=first, diagnosed=diag, pr_opened=pr, confirmed=conf,
        to_diagnose=_duration(first, diag), to_pr=_duration(diag, pr),
        to_confirm=_duration(pr, conf),
    )


# --- figures ----------------------------------------------------------------------------------


def _style(fig: go.Figure, height: int, **layout: Any) -> tuple[go.Figure, int]:
    axis = {"gridcolor": _COLORS["grid"], "zerolinecolor": _COLORS["grid"], "automargin": True}
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12,
              "color": _COLORS["ink"]},
        hoverlabel={"font": {"size": 12}},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        **layout,
    )
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis)
    return fig, height


def _intent_volume_fig(intents: Sequence[Any]) -> tuple[go.Figure, int]:
    top = list(intents[:_MAX_BAR_INTENTS])[::-1]  # plotly draws the first bar at the bottom
    fig = go.Figure(go.Bar(
        x=[i.size for i in top],
        y=[_lbl(i.name) for i in top],
        customdata=[_lbl(i.category) for i in top],
        orientation="h",
        marker={"color": _COLORS["after"]},
        hovertemplate="%{y}<br>%{x} threads<br>category: %{customdata}<extra></extra>",
    ))
    return _style(fig, 80 + 26 * len(top), xaxis_title="threads", showlegend=False)


def _intent_trend_fig(
    trend: dict[str, list[tuple[str, int]]], intents: Sequence[Any], names: dict[str, str]
) -> tuple[go.Figure, int] | None:
    order = [i.id for i in intents if i.id in trend] + sorted(k for k in trend if k not in names)
    order = order[:_MAX_TREND_INTENTS]
    if not order:
        return None
    fig = go.Figure()
    for iid in order:
        points = trend[iid]
        fig.add_trace(go.Scatter(
            x=[p for p, _ in points], y=[c for _, c in points], mode="lines+markers",
            name=_lbl(names.get(iid, iid)),
            hovertemplate="%{x}: %{y} threads<extra>%{fullData.name}</extra>",
        ))
    return _style(fig, 340, yaxis_title="threads per period", xaxis_type="category")


def _heatmap_fig(
    data: ReportData, intents: Sequence[Any], names: dict[str, str]
) -> tuple[go.Figure, int]:
    cells = {(c.intent_id, c.signal): c for c in data.signal_matrix}
    signal_totals: dict[str, int] = defaultdict(int)
    for c in data.signal_matrix:
        signal_totals[c.signal] += c.count
    signals = sorted(signal_totals, key=lambda s: (-signal_totals[s], s))
    in_matrix = {c.intent_id for c in data.signal_matrix}
    rows = [i.id for i in intents if i.id in in_matrix]
    rows += sorted(in_matrix - set(rows))
    rows = rows[::-1]  # biggest intent on top
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    for iid in rows:
        zr: list[float | None] = []
        tr: list[str] = []
        for s in signals:
            cell = cells.get((iid, s))
            zr.append(None if cell is None else round(cell.rate * 100, 2))
            tr.append("" if cell is None else f"{cell.count}")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(
        z=z, x=[_lbl(s) for s in signals], y=[_lbl(names.get(r, r)) for r in rows],
        text=text, texttemplate="%{text}", textfont={"size": 11},
        colorscale=[[0, "#f8fafc"], [0.25, "#fde68a"], [0.6, "#f97316"], [1, "#991b1b"]],
        zmin=0, colorbar={"title": {"text": "rate %"}, "thickness": 12},
        hovertemplate="%{y} × %{x}<br>rate %{z:.1f}%<br>%{text} threads<extra></extra>",
        xgap=2, ygap=2,
    ))
    return _style(fig, 110 + 30 * len(rows), xaxis_side="top", showlegend=False)


def _fix_fig(m: FixMeasurement) -> tuple[go.Figure, int]:
    fig = go.Figure()
    if m.series:
        for phase, color in (("before", _COLORS["before"]), ("after", _COLORS["after"])):
            pts = [p for p in m.series if p.phase == phase]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[_lbl(p.label) for p in pts], y=[p.rate * 100 for p in pts],
                mode="lines+markers", name=f"{phase} the fix", line={"color": color},
                error_y={"type": "data", "symmetric": False, "color": color, "thickness": 1,
                         "array": [(p.ci_high - p.rate) * 100 for p in pts],
                         "arrayminus": [(p.rate - p.ci_low) * 100 for p in pts]},
                customdata=[p.n for p in pts],
                hovertemplate="%{x}: %{y:.1f}% (n=%{customdata})<extra></extra>",
            ))
        # The pooled cohort rates as reference lines: what the decision is based on.
        # Labels at opposite ends: the before points sit on the left, the after points right.
        for rate, color, label, where in (
            (m.before_rate, _COLORS["before"], "before", "top right"),
            (m.after_rate, _COLORS["after"], "after", "top left"),
        ):
            fig.add_hline(y=rate * 100, line={"color": color, "dash": "dot", "width": 1},
                          annotation_text=f"{label}: {rate * 100:.1f}% pooled",
                          annotation_font_color=color, annotation_position=where)
        xaxis_type = "category"
    else:
        labels = [f"before (n={m.before_n})", f"after (n={m.after_n})"]
        rates = [m.before_rate, m.after_rate]
        cis = [m.before_ci, m.after_ci]
        fig.add_trace(go.Scatter(
            x=labels, y=[r * 100 for r in rates], mode="markers",
            marker={"size": 12, "color": [_COLORS["before"], _COLORS["after"]]},
            error_y={"type": "data", "symmetric": False, "thickness": 1.5, "width": 8,
                     "array": [(hi - r) * 100 for r, (_, hi) in zip(rates, cis, strict=True)],
                     "arrayminus": [(r - lo) * 100 for r, (lo, _) in zip(rates, cis, strict=True)]},
            hovertemplate="%{x}: %{y:.1f}%<extra></extra>", showlegend=False,
        ))
        xaxis_type = "category"
    return _style(fig, 260, yaxis_title="rate %", yaxis_rangemode="tozero",
                  xaxis_type=xaxis_type)


def _health_fig(timelines: Iterable[FailureModeTimeline]) -> tuple[go.Figure, int]:
    timelines = list(timelines)
    fig = go.Figure()
    # A thin gray line per failure mode from first to last event, so each row reads as a lane.
    for t in timelines:
        if len(t.events) >= 2:
            ats = sorted(e.at for e in t.events)
            fig.add_trace(go.Scatter(
                x=[ats[0], ats[-1]], y=[_lbl(t.label)] * 2, mode="lines",
                line={"color": _COLORS["grid"], "width": 6}, hoverinfo="skip", showlegend=False,
            ))
    for stage, (label, color, symbol) in _STAGE_STYLE.items():
        xs, ys, notes = [], [], []
        for t in timelines:
            for e in t.events:
                if e.stage == stage:
                    xs.append(e.at)
                    ys.append(_lbl(t.label))
                    notes.append(_lbl(e.note) if e.note else label)
        if xs:
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="markers", name=label, customdata=notes,
                marker={"color": color, "symbol": symbol, "size": 12,
                        "line": {"width": 1, "color": "white"}},
                hovertemplate="%{y}<br>" + label + " %{x|%Y-%m-%d %H:%M}<br>%{customdata}"
                              "<extra></extra>",
            ))
    return _style(fig, 120 + 40 * len(timelines), yaxis_type="category",
                  yaxis_autorange="reversed")


# --- page script ------------------------------------------------------------------------------

# Draws every figure from its JSON island, and opens the <details> that holds the target of the
# URL fragment (evidence links point into collapsed thread views). Kept tiny and static: its
# SHA-256 goes into the page's Content-Security-Policy.
_INIT_JS = """
(function () {
  "use strict";
  function draw() {
    if (typeof Plotly === "undefined") { return; }
    document.querySelectorAll("div[data-figure]").forEach(function (div) {
      var island = document.getElementById(div.getAttribute("data-figure"));
      if (!island) { return; }
      var fig = JSON.parse(island.textContent);
      Plotly.newPlot(div, fig.data, fig.layout,
        {displayModeBar: false, responsive: true});
    });
  }
  function reveal() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    if (!id) { return; }
    var el = document.getElementById(id);
    if (!el) { return; }
    for (var d = el.closest("details"); d; d = d.parentElement && d.parentElement.closest("details")) {
      d.open = true;
    }
    document.querySelectorAll(".flash").forEach(function (x) { x.classList.remove("flash"); });
    el.classList.add("flash");
    el.scrollIntoView({block: "start"});
  }
  function toggleAll(open) {
    document.querySelectorAll("details.thread").forEach(function (d) { d.open = open; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    draw();
    reveal();
    var ex = document.getElementById("expand-all");
    var co = document.getElementById("collapse-all");
    if (ex) { ex.addEventListener("click", function () { toggleAll(true); }); }
    if (co) { co.addEventListener("click", function () { toggleAll(false); }); }
  });
  window.addEventListener("hashchange", reveal);
})();
"""
