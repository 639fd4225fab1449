"""Property tests of OTLP/JSON ingest: random span trees (GenAI and OpenInference conventions,
any depth and branching, several roots per trace) and random corruptions of them.

Valid input: every LLM or tool span becomes exactly one call of the turn of its root, every
root with something to show becomes one turn, and the others are reported as skipped. Broken
records are skipped by name while the good ones are still ingested; only ``IngestError`` may
escape, and only when nothing at all could be read.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from loop_middleware import IngestError, Store, StoreError
from loop_middleware.capture import ingest_otlp

# Lone surrogates are left out here; the store cleans them (see the bad-span cases below).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def s(v: str) -> dict[str, Any]:
    return {"stringValue": v}


def kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


@dataclass
class SpanSpec:
    trace: int
    span_id: str
    parent: str | None
    role: str  # llm | tool | agent | plain
    convention: str  # genai | oi
    has_input: bool
    raw: dict[str, Any] = field(default_factory=dict)


@st.composite
def attributes(draw: st.DrawFn, role: str, convention: str, has_input: bool) -> list[dict[str, Any]]:
    """Attributes as the two conventions' instrumentations write them."""
    def msgs(role_: str) -> str:
        return json.dumps([{"role": role_, "content": draw(text)}])

    # An agent's input is non-empty: ingest keeps the first *truthy* input of a turn's agent
    # spans, so an empty one counts or not depending on span order (reported, not pinned here).
    said = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20).filter(str.strip)

    if role == "plain":
        return [kv("http.method", s("GET"))]
    if convention == "genai":
        if role == "llm":
            return [kv("gen_ai.operation.name", s("chat")), kv("gen_ai.request.model", s(draw(text))),
                    kv("gen_ai.input.messages", s(msgs("user"))), kv("gen_ai.output.messages", s(msgs("assistant"))),
                    kv("gen_ai.usage.input_tokens", {"intValue": str(draw(st.integers(0, 10**6)))})]
        if role == "tool":
            return [kv("gen_ai.operation.name", s("execute_tool")), kv("gen_ai.tool.name", s(draw(text))),
                    kv("gen_ai.tool.call.arguments", s(json.dumps(draw(json_value)))),
                    kv("gen_ai.tool.call.result", s(draw(text)))]
        return [kv("gen_ai.operation.name", s("invoke_agent")),
                *([kv("gen_ai.input.messages", s(json.dumps([{"role": "user", "content": draw(said)}])))]
                  if has_input else [])]
    if role == "llm":
        return [kv("openinference.span.kind", s("LLM")), kv("llm.model_name", s(draw(text))),
                kv("llm.input_messages.0.message.role", s("user")),
                kv("llm.input_messages.0.message.content", s(draw(text))),
                kv("llm.output_messages.0.message.role", s("assistant")),
                kv("llm.output_messages.0.message.content", s(draw(text))),
                kv("llm.token_count.prompt", {"intValue": draw(st.integers(0, 10**6))})]
    if role == "tool":
        return [kv("openinference.span.kind", s("TOOL")), kv("tool.name", s(draw(text))),
                kv("tool.parameters", s(json.dumps(draw(json_value)))), kv("output.value", s(draw(text)))]
    return [kv("openinference.span.kind", s("AGENT")), *([kv("input.value", s(draw(said)))] if has_input else [])]


@st.composite
def exports(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[SpanSpec]]:
    """One OTLP request per trace (a list of them), and what each span is."""
    requests, specs = [], []
    n_span = 0
    for t in range(draw(st.integers(1, 3))):
        trace_id = f"{t + 1:032x}"
        conv = draw(st.none() | st.sampled_from(["conv-a", "conv-b"]))
        spans: list[dict[str, Any]] = []
        ids: list[str] = []
        for _ in range(draw(st.integers(1, 8))):
            n_span += 1
            span_id = f"{n_span:016x}"
            # a parent already drawn (any depth and branching), none, or one not in the export
            parent = draw(st.none() | st.just("ffffffffffffffff") | (st.sampled_from(ids) if ids else st.none()))
            role = draw(st.sampled_from(["llm", "tool", "agent", "plain"]))
            convention = draw(st.sampled_from(["genai", "oi"]))
            spec = SpanSpec(t, span_id, parent, role, convention, draw(st.booleans()))
            attrs = draw(attributes(role, convention, spec.has_input))
            if conv:
                attrs.append(kv("gen_ai.conversation.id" if convention == "genai" else "session.id", s(conv)))
            start = draw(st.integers(1_600_000_000 * 10**9, 1_900_000_000 * 10**9))
            spec.raw = {"traceId": trace_id, "spanId": span_id, "name": draw(text),
                        "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + draw(st.integers(0, 10**12))),
                        "attributes": attrs, "status": draw(st.sampled_from([{}, {"code": 2, "message": "boom"}])),
                        **({"parentSpanId": parent} if parent else {})}
            spans.append(spec.raw)
            specs.append(spec)
            ids.append(span_id)
        requests.append({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    return requests, specs


@dataclass
class Expected:
    turns: dict[str, set[str]]  # turn id -> its call ids
    thread_of: dict[str, str]  # turn id -> thread id
    skipped_traces: list[str]
    llm: int
    tool: int


def expected(specs: list[SpanSpec]) -> Expected:
    """What ingest must make of these (valid) spans, from the spec's own definition of a turn."""
    by_trace: dict[int, list[SpanSpec]] = defaultdict(list)
    for sp in specs:
        by_trace[sp.trace].append(sp)
    out = Expected({}, {}, [], 0, 0)
    for spans in by_trace.values():
        ids = {sp.span_id for sp in spans}
        children: dict[str | None, list[SpanSpec]] = defaultdict(list)
        for sp in spans:
            children[sp.parent if sp.parent in ids else None].append(sp)
        for root in children[None]:
            tree, stack = [], [root]
            while stack:
                sp = stack.pop()
                tree.append(sp)
                stack.extend(children[sp.span_id])
            trace_id = root.raw["traceId"]
            calls = {f"{trace_id}:{sp.span_id}" for sp in tree if sp.role in ("llm", "tool")}
            out.llm += sum(sp.role == "llm" for sp in tree)
            out.tool += sum(sp.role == "tool" for sp in tree)
            if not calls and not any(sp.role == "agent" and sp.has_input for sp in tree):
                out.skipped_traces.append(trace_id)
                continue
            turn = f"{trace_id}:{root.span_id}"
            out.turns[turn] = calls
            conv = next((a["value"]["stringValue"] for a in root.raw["attributes"]
                         if a["key"] in ("gen_ai.conversation.id", "session.id")), None)
            out.thread_of[turn] = conv or f"trace-{trace_id}"
    return out


def check(store: Store, report: Any, want: Expected) -> None:
    assert (report.turns, report.llm_calls, report.tool_calls) == (len(want.turns), want.llm, want.tool)
    assert report.threads == len(set(want.thread_of.values()))
    no_calls = [m for m in report.skipped if "has no LLM, tool or agent span" in m]
    assert len(no_calls) == len(want.skipped_traces)
    for trace_id in want.skipped_traces:
        assert any(f"trace {trace_id} " in m for m in no_calls)
    got_turns = {t.id: t for th in store.list_threads() for t in th.turns}
    assert set(got_turns) == set(want.turns)
    for turn_id, calls in want.turns.items():
        t = got_turns[turn_id]
        assert t.thread_id == want.thread_of[turn_id]
        ids = [c.id for c in t.llm_calls] + [c.id for c in t.tool_calls]
        assert len(ids) == len(set(ids)) and set(ids) == calls  # each call exactly once, in its root's turn


def _store(d: str) -> Store:
    return Store(f"sqlite:///{Path(d) / 'i.db'}")


@SETTINGS
@given(export=exports(), as_lines=st.booleans())
def test_valid_span_trees_become_one_call_per_span_and_one_turn_per_root(
    export: tuple[list[dict[str, Any]], list[SpanSpec]], as_lines: bool
) -> None:
    requests, specs = export
    data = ("\n".join(json.dumps(r) for r in requests) if as_lines else json.dumps(requests)).encode()
    with tempfile.TemporaryDirectory() as d:
        store = _store(d)
        report = ingest_otlp(data, store)
        assert report.spans == len(specs)
        check(store, report, expected(specs))
        assert [m for m in report.skipped if "has no LLM" not in m] == []
        # a second ingest of the same export changes nothing (ids come from the spans)
        ingest_otlp(data, store)
        check(store, report, expected(specs))
        store.close()


# --- corruptions ------------------------------------------------------------------------------

# Each makes its span unreadable, so it must be skipped with its location.
SPAN_BREAKERS = {
    "no traceId": lambda r: r.pop("traceId"),
    "empty spanId": lambda r: r.update(spanId=""),
    "start not a number": lambda r: r.update(startTimeUnixNano="soon"),
    "negative start": lambda r: r.update(startTimeUnixNano="-5"),
    "attributes not a list": lambda r: r.update(attributes={"a": 1}),
    "attribute without key": lambda r: r["attributes"].append({"value": s("x")}),
    "attribute value not an object": lambda r: r["attributes"].append({"key": "k", "value": "v"}),
    "span not an object": None,  # replaced by a string below
}


@SETTINGS
@given(export=exports(), data=st.data())
def test_broken_spans_are_skipped_by_name_and_the_rest_ingested(
    export: tuple[list[dict[str, Any]], list[SpanSpec]], data: st.DataObject
) -> None:
    requests, specs = export
    broken = data.draw(st.sets(st.sampled_from(range(len(specs)))), label="broken spans")
    where: list[str] = []
    for i in broken:
        spec = specs[i]
        spans = requests[spec.trace]["resourceSpans"][0]["scopeSpans"][0]["spans"]
        k = spans.index(spec.raw)
        how = data.draw(st.sampled_from(sorted(SPAN_BREAKERS)), label=f"break {i}")
        breaker = SPAN_BREAKERS[how]
        if breaker is None:
            spans[k] = "not a span"
        else:
            breaker(spec.raw)
        doc = f"<input>[{spec.trace}]" if len(requests) > 1 else "<input>"
        where.append(f"{doc} resourceSpans[0].scopeSpans[0].spans[{k}]")
    survivors = [sp for i, sp in enumerate(specs) if i not in broken]
    with tempfile.TemporaryDirectory() as d:
        store = _store(d)
        report = ingest_otlp(json.dumps(requests).encode(), store)
        assert report.spans == len(survivors)
        for w in where:
            assert sum(w in m for m in report.skipped) == 1, (w, report.skipped)
        check(store, report, expected(survivors))  # children of a broken parent become roots
        store.close()


@SETTINGS
@given(export=exports(), data=st.data())
def test_bad_lines_of_json_lines_are_skipped_and_good_lines_ingested(
    export: tuple[list[dict[str, Any]], list[SpanSpec]], data: st.DataObject
) -> None:
    requests, specs = export
    lines = [json.dumps(r).encode() for r in requests]
    bad: set[int] = set()
    for i in range(len(lines)):
        how = data.draw(st.sampled_from(["keep", "keep", "truncate", "bytes", "not otlp"]), label=f"line {i}")
        if how == "truncate":
            lines[i] = lines[i][: data.draw(st.integers(1, len(lines[i]) - 1))]
        elif how == "bytes":  # never valid UTF-8, never a line break
            lines[i] = b"\xff" + data.draw(st.binary(max_size=30)).replace(b"\n", b"").replace(b"\r", b"")
        elif how == "not otlp":
            lines[i] = json.dumps(data.draw(st.dictionaries(text, json_value, max_size=3))).encode()
        if how != "keep":
            bad.add(i)
    payload = b"\n".join([b"", *lines]) if len(lines) == 1 else b"\n".join(lines)  # always JSON Lines
    good = [sp for sp in specs if sp.trace not in bad]
    with tempfile.TemporaryDirectory() as d:
        store = _store(d)
        if len(bad) == len(lines):
            with pytest.raises(IngestError, match="no OTLP/JSON trace data"):
                ingest_otlp(payload, store)
            return
        report = ingest_otlp(payload, store)
        first = 2 if len(lines) == 1 else 1  # line numbers count the leading blank line
        for i in bad:
            assert sum(m.startswith(f"<input>:{i + first}") for m in report.skipped) == 1, report.skipped
        check(store, report, expected(good))
        store.close()


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Anything from a valid export: values replaced by other JSON at random places, truncated,
    or plain random bytes."""
    requests, _ = draw(exports())
    kind = draw(st.sampled_from(["replace", "replace", "truncate", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "replace":
        for _ in range(draw(st.integers(1, 4))):
            node: Any = requests
            path: list[Any] = []
            while isinstance(node, (dict, list)) and node and draw(st.integers(0, 4)):
                key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
                path.append((node, key))
                node = node[key]
            if path:
                parent, key = path[-1]
                parent[key] = draw(json_value | st.sampled_from([1e300, -1, 10**30, "\ud800", [], {}]))
    raw = json.dumps(requests).encode()
    return raw[: draw(st.integers(1, len(raw)))] if kind == "truncate" else raw


def test_anything_raises_at_most_ingest_error() -> None:
    escaped: dict[str, bytes] = {}

    # Deterministic, and no shrinking: it only has to find failures, fast. They are collected
    # rather than raised so the report lists every kind of exception that escaped.
    @settings(SETTINGS, max_examples=150, derandomize=True, database=None, phases=[Phase.generate])
    @given(payload=mangled())
    def run(payload: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            store = _store(d)
            try:
                ingest_otlp(payload, store)
            except IngestError:
                pass
            except Exception as exc:  # noqa: BLE001 - what this test looks for
                escaped.setdefault(type(exc).__name__, payload[:300])
            finally:
                store.close()

    run()
    assert escaped == {}


# Minimal cases of what the property above finds: one bad span next to a good one in the same
# export. Each must be skipped with a message while the good span is ingested.
def _span(span_id: str, attrs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"traceId": "ab" * 16, "spanId": span_id, "startTimeUnixNano": "1700000000000000000",
            "attributes": attrs, **extra}


LLM = [kv("gen_ai.operation.name", s("chat")), kv("gen_ai.request.model", s("m"))]
TOOL = [kv("gen_ai.operation.name", s("execute_tool"))]

BAD_SPANS = [
    pytest.param(_span("b1", [*LLM, kv("x", {"doubleValue": "abc"})]), id="doubleValue-not-a-number"),
    pytest.param(_span("b1", [*LLM, kv("x", {"arrayValue": [1]})]), id="arrayValue-a-list"),
    pytest.param(_span("b1", [*LLM, kv("x", {"kvlistValue": {"values": [1]}})]), id="kvlist-entry-not-object"),
    pytest.param(_span("b1", [*LLM, kv("x", {"kvlistValue": {"values": [{"value": {}}]}})]), id="kvlist-entry-no-key"),
    pytest.param(_span("b1", LLM, parentSpanId=["x"]), id="parentSpanId-a-list"),
    pytest.param(_span("b1", LLM, startTimeUnixNano=1e300), id="start-1e300"),
    pytest.param(_span("b1", LLM, startTimeUnixNano=str(10**30)), id="start-after-year-9999"),
    pytest.param(_span("b1", [LLM[0], kv("gen_ai.request.model", {"kvlistValue": {"values": [kv("a", s("b"))]}})]),
                 id="model-an-object"),
    pytest.param(_span("b1", [*TOOL, kv("gen_ai.tool.call.id", {"arrayValue": {"values": []}})]),
                 id="tool-call-id-a-list"),
    pytest.param(_span("b1", [*LLM, kv("gen_ai.usage.input_tokens", {"intValue": str(2**70)})]),
                 id="tokens-beyond-int64"),
    pytest.param(_span("b1", [LLM[0], kv("gen_ai.request.model", s("\ud800"))]), id="lone-surrogate"),
    pytest.param(_span("b1", LLM, status="broken"), id="status-a-string"),
    pytest.param(_span("b1", LLM, startTimeUnixNano=None), id="start-null"),
]


@pytest.mark.parametrize("bad", BAD_SPANS)
def test_one_bad_span_does_not_stop_the_good_one(bad: dict[str, Any], tmp_path: Path) -> None:
    good = {**_span("g1", LLM), "traceId": "cd" * 16}
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [good]}]}, {"scopeSpans": [{"spans": [bad]}]}]}
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        report = ingest_otlp(json.dumps(doc).encode(), store)
    except (IngestError, StoreError) as exc:  # StoreError: one record made the whole write fail
        raise AssertionError(f"the good span was lost: {exc!r}") from exc
    calls = [c.id for th in store.list_threads() for t in th.turns for c in (*t.llm_calls, *t.tool_calls)]
    assert f"{'cd' * 16}:g1" in calls
    # either the bad span is skipped by name, or it was readable and ingested as a call
    assert any("resourceSpans[1]" in m for m in report.skipped) or f"{'ab' * 16}:b1" in calls
