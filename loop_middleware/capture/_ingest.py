"""Ingest OTLP/JSON span exports from other runtimes into the same Threads.

Reads what the OpenTelemetry Collector's file exporter, ``OTLPSpanExporter`` captures or a
backend export writes: one ``ExportTraceServiceRequest`` as JSON (``{"resourceSpans": [...]}``),
or JSON Lines of them. Spans are understood through adapters
(:mod:`loop_middleware.integrations`): the OpenTelemetry GenAI semantic conventions and
OpenInference, which is what the OpenAI Agents SDK, LlamaIndex and others emit through their
instrumentations.

One trace root is one turn; turns are grouped into threads by ``gen_ai.conversation.id`` or
``session.id`` (else each trace is its own thread). Bad records never stop the ingest: each is
skipped with a message naming the record and field, and counted.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import IngestError, StoreError
from ..integrations._base import LLMData, SpanAdapter, ToolData
from ..integrations.genai import GenAIAdapter
from ..integrations.openinference import OpenInferenceAdapter
from ..prompts import PromptRegistry, versions_in_messages
from ..store import Store
from ._messages import jsonable
from ._writer import Row

__all__ = ["IngestReport", "ingest_otlp", "parse_otlp"]

logger = logging.getLogger("loop_middleware.ingest")

DEFAULT_ADAPTERS: tuple[SpanAdapter, ...] = (GenAIAdapter(), OpenInferenceAdapter())


@dataclass
class Span:
    """One parsed span."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    error: str | None
    record: str


@dataclass
class IngestReport:
    """What an ingest did."""

    spans: int = 0
    threads: int = 0
    turns: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    skipped: list[str] = field(default_factory=list)
    """One clear message per skipped record (where, which field, why)."""

    def __str__(self) -> str:
        s = (f"{self.spans} spans -> {self.threads} threads, {self.turns} turns, "
             f"{self.llm_calls} LLM calls, {self.tool_calls} tool calls")
        return s + (f"; {len(self.skipped)} records skipped" if self.skipped else "")


# --- parsing ----------------------------------------------------------------------------------


def _any_value(v: Any, where: str) -> Any:
    if not isinstance(v, dict):
        raise IngestError("attribute value must be an object", record=where, field="value")
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            raise IngestError(f"intValue {v['intValue']!r} is not an integer", record=where, field="intValue") from None
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_any_value(x, where) for x in (v["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _any_value(kv.get("value", {}), where) for kv in (v["kvlistValue"] or {}).get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _attrs(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise IngestError("attributes must be a list", record=where, field="attributes")
    out: dict[str, Any] = {}
    for kv in raw:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise IngestError("attribute without a string key", record=where, field="attributes")
        out[kv["key"]] = _any_value(kv.get("value", {}), where)
    return out


_MAX_NANOS = 253_402_300_799 * 10**9  # 9999-12-31T23:59:59Z


def _nanos(v: Any, where: str, name: str) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise IngestError(f"{name} must be an integer of nanoseconds, got {v!r}", record=where, field=name) from None
    if n < 0:
        raise IngestError(f"{name} is negative", record=where, field=name)
    if n > _MAX_NANOS:
        raise IngestError(f"{name} is after the year 9999", record=where, field=name)
    return n


def _span(raw: Any, where: str) -> Span:
    if not isinstance(raw, dict):
        raise IngestError("span must be an object", record=where)
    for key in ("traceId", "spanId"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise IngestError(f"missing or empty {key}", record=where, field=key)
    where = f"{where} (span {raw['spanId']})"
    start = _nanos(raw.get("startTimeUnixNano"), where, "startTimeUnixNano")
    end = _nanos(raw.get("endTimeUnixNano", start), where, "endTimeUnixNano")
    status = raw.get("status") or {}
    code = status.get("code") if isinstance(status, dict) else None
    error = None
    if code in (2, "STATUS_CODE_ERROR", "ERROR"):
        error = (status.get("message") or "error") if isinstance(status, dict) else "error"
    attrs = _attrs(raw.get("attributes"), where)
    parent = raw.get("parentSpanId") or None
    if parent is not None and not isinstance(parent, str):
        raise IngestError("parentSpanId must be a string", record=where, field="parentSpanId")
    return Span(
        trace_id=raw["traceId"], span_id=raw["spanId"], parent_id=parent,
        name=str(raw.get("name") or ""), start_ns=start, end_ns=max(end, start), attrs=attrs,
        error=error, record=where,
    )


def _s(value: Any) -> str | None:
    """A scalar text column from whatever an exporter put there."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)


def _i(value: Any) -> int | None:
    """A token count, or None when it is not a plausible 64-bit integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def _items(container: Any, *keys: str) -> list[Any]:
    """The list under the first present key of an object, or [] for anything malformed."""
    if not isinstance(container, dict):
        return []
    for key in keys:
        value = container.get(key)
        if value:
            return value if isinstance(value, list) else []
    return []


def _requests(data: bytes, source: str, report: IngestReport) -> Iterator[tuple[str, Any]]:
    """Yield (record name, decoded JSON request) from a JSON or JSON Lines document."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        stripped = text.strip()
        if not stripped:
            raise IngestError("empty input: no spans", record=source)
        try:
            yield source, json.loads(stripped)
            return
        except ValueError:
            pass  # perhaps JSON Lines
    for i, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{i}"
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            report.skipped.append(f"{where}: not valid UTF-8 at byte {exc.start}; line skipped")
        except ValueError as exc:
            report.skipped.append(f"{where}: not valid JSON ({exc}); line skipped")


def parse_otlp(data: bytes | str | dict[str, Any], *, source: str = "<input>",
               report: IngestReport | None = None) -> tuple[list[Span], IngestReport]:
    """Parse OTLP/JSON into spans; bad records are listed in the report, never fatal alone.

    Raises:
        IngestError: Nothing in the input could be read as OTLP/JSON.
    """
    report = report or IngestReport()
    if isinstance(data, dict):
        docs: Iterable[tuple[str, Any]] = [(source, data)]
    else:
        docs = _requests(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data,
                         source, report)
    spans: list[Span] = []
    seen_doc = False
    for where, doc in docs:
        reqs = doc if isinstance(doc, list) else [doc]
        for r_i, req in enumerate(reqs):
            rwhere = where if len(reqs) == 1 else f"{where}[{r_i}]"
            if not isinstance(req, dict) or not isinstance(req.get("resourceSpans"), list):
                report.skipped.append(f"{rwhere}: not an OTLP trace export (no 'resourceSpans' list)")
                continue
            seen_doc = True
            for a, rs in enumerate(req["resourceSpans"]):
                for b, ss in enumerate(_items(rs, "scopeSpans", "instrumentationLibrarySpans")):
                    for c, raw in enumerate(_items(ss, "spans")):
                        swhere = f"{rwhere} resourceSpans[{a}].scopeSpans[{b}].spans[{c}]"
                        try:
                            spans.append(_span(raw, swhere))
                        except IngestError as exc:
                            report.skipped.append(str(exc))
                        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
                            report.skipped.append(f"{swhere}: malformed span ({type(exc).__name__}: {exc})")
    if not seen_doc and not spans:
        raise IngestError(
            "no OTLP/JSON trace data found" + (f" ({report.skipped[0]})" if report.skipped else ""),
            record=source,
        )
    report.spans += len(spans)
    return spans, report


# --- assembling threads -------------------------------------------------------------------------


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _role(span: Span, adapters: Sequence[SpanAdapter]) -> tuple[str | None, SpanAdapter | None]:
    for a in adapters:
        r = a.role(span.attrs)
        if r is not None:
            return r, a
    return None, None


T = TypeVar("T", LLMData, ToolData)


def _merged(first: T, others: Iterable[T]) -> T:
    """The first adapter's reading, with fields it left empty filled from the others (a span
    may carry GenAI and OpenInference attributes side by side)."""
    for o in others:
        for f in fields(first):
            if getattr(first, f.name) in (None, [], "tool"):
                setattr(first, f.name, getattr(o, f.name))
    return first


def _trace_rows(
    spans: list[Span], adapters: Sequence[SpanAdapter], registry: PromptRegistry | None,
    report: IngestReport,
) -> list[Row]:
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for s in spans:
        parent = s.parent_id if s.parent_id in by_id else None
        children[parent].append(s)
    rows: list[Row] = []
    for root in sorted(children[None], key=lambda s: s.start_ns):
        # every span under this root belongs to the turn
        members: list[Span] = []
        stack = [root]
        while stack:
            s = stack.pop()
            members.append(s)
            stack.extend(children.get(s.span_id, []))
        members.sort(key=lambda s: (s.start_ns, s.span_id))
        conv = user_id = None
        for s in [root, *members]:
            for a in adapters:
                conv = conv or a.conversation_id(s.attrs)
                user_id = user_id or a.user_id(s.attrs)
        thread_id = conv or f"trace-{root.trace_id}"
        turn_id = f"{root.trace_id}:{root.span_id}"
        user_text = reply_text = None
        for s in members:
            role, adapter = _role(s, adapters)
            if role == "agent" and adapter is not None:
                u, r = adapter.io(s.attrs)
                user_text = user_text or u
                reply_text = reply_text or r
        seq = 0
        last_llm_out: list[dict[str, Any]] = []
        first_llm_in: list[dict[str, Any]] = []
        for s in members:
            role, adapter = _role(s, adapters)
            cid = f"{s.trace_id}:{s.span_id}"
            rest = [a for a in adapters if a is not adapter]
            if role == "llm" and adapter is not None:
                d = _merged(adapter.llm(s.attrs), (a.llm(s.attrs) for a in rest))
                versions = versions_in_messages(d.input_messages, registry=registry)
                rows.extend(("prompt_version", {**v.model_dump(), "first_seen": _utc(s.start_ns)}) for v in versions)
                rows.append(("llm_call", {
                    "id": cid, "turn_id": turn_id, "thread_id": thread_id, "seq": seq,
                    "model": _s(d.model), "provider": _s(d.provider), "input_messages": d.input_messages,
                    "output_messages": d.output_messages, "prompt_shas": [v.sha256 for v in versions],
                    "input_tokens": _i(d.input_tokens), "output_tokens": _i(d.output_tokens),
                    "latency_ms": (s.end_ns - s.start_ns) / 1e6, "finish_reason": _s(d.finish_reason),
                    "error": s.error, "started_at": _utc(s.start_ns),
                }))
                first_llm_in = first_llm_in or d.input_messages
                last_llm_out = d.output_messages or last_llm_out
                report.llm_calls += 1
                seq += 1
            elif role == "tool" and adapter is not None:
                t = _merged(adapter.tool(s.attrs), (a.tool(s.attrs) for a in rest))
                rows.append(("tool_call", {
                    "id": cid, "turn_id": turn_id, "thread_id": thread_id, "seq": seq,
                    "name": _s(t.name) or "tool", "arguments": jsonable(t.arguments), "result": _s(t.result),
                    "error": s.error,
                    "latency_ms": (s.end_ns - s.start_ns) / 1e6, "tool_call_id": _s(t.tool_call_id),
                    "started_at": _utc(s.start_ns),
                }))
                report.tool_calls += 1
                seq += 1
        if user_text is None:
            user_text = next((m["content"] for m in reversed(first_llm_in) if m["role"] == "user"), None)
        if reply_text is None:
            reply_text = next((m["content"] for m in reversed(last_llm_out) if m["role"] == "assistant"), None)
        if seq == 0 and user_text is None:
            report.skipped.append(f"{root.record}: trace {root.trace_id} has no LLM, tool or agent span; skipped")
            continue
        end = max(s.end_ns for s in members)
        rows.insert(0, ("thread", {"thread_id": thread_id, "source": "otlp",
                                   "created_at": _utc(root.start_ns),
                                   "updated_at": _utc(end), **({"user_id": user_id} if user_id else {})}))
        rows.append(("turn", {
            "id": turn_id, "thread_id": thread_id, "started_at": _utc(root.start_ns),
            "ended_at": _utc(end), "latency_ms": (end - root.start_ns) / 1e6, "error": root.error,
            "input_messages": [{"role": "user", "content": user_text, "name": None, "tool_calls": [],
                                "tool_call_id": None, "id": None}] if user_text else [],
            "output_messages": [{"role": "assistant", "content": reply_text, "name": None,
                                 "tool_calls": [], "tool_call_id": None, "id": None}] if reply_text else [],
            "meta": {"source": "otlp", "root_span": root.name},
        }))
        report.turns += 1
    return rows


def ingest_otlp(
    source: str | Path | bytes | dict[str, Any],
    store: Store,
    *,
    adapters: Sequence[SpanAdapter] = DEFAULT_ADAPTERS,
    registry: PromptRegistry | None = None,
) -> IngestReport:
    """Read OTLP/JSON spans (a file path, bytes, or a decoded dict) into ``store`` as Threads.

    Returns:
        An :class:`IngestReport`: counts, and one message per skipped record.

    Raises:
        IngestError: The input is unreadable as a whole (missing file, no OTLP data at all).
        StoreError: The store cannot be written.
    """
    if isinstance(source, (str, Path)) and not (isinstance(source, str) and source.lstrip().startswith("{")):
        path = Path(source)
        try:
            data: bytes | str | dict[str, Any] = path.read_bytes()
        except OSError as exc:
            raise IngestError(f"cannot read {path}: {exc.strerror or exc}", record=str(path)) from None
        name = str(path)
    else:
        data, name = source, "<input>"
    spans, report = parse_otlp(data, source=name)
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    traces: list[tuple[str, list[Row]]] = []
    for trace_id, trace_spans in by_trace.items():
        try:
            traces.append((trace_id, _trace_rows(trace_spans, adapters, registry, report)))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            report.skipped.append(f"{name}: trace {trace_id} malformed ({type(exc).__name__}: {exc}); skipped")
    written: list[Row] = []
    for i in range(0, len(traces), 100):
        chunk = traces[i : i + 100]
        rows = [r for _, trace_rows in chunk for r in trace_rows]
        try:
            store.write_rows(rows)
            written.extend(rows)
        except StoreError as exc:
            if exc.transient:
                raise
            # The database refused some values: find the traces at fault, keep the rest.
            for trace_id, trace_rows in chunk:
                try:
                    store.write_rows(trace_rows)
                    written.extend(trace_rows)
                except StoreError as one:
                    if one.transient:
                        raise
                    report.skipped.append(f"{name}: trace {trace_id} refused by the store ({one}); skipped")
    report.threads = len({v["thread_id"] for t, v in written if t == "thread"})
    if report.skipped:
        logger.warning("ingest of %s skipped %d records; first: %s", name, len(report.skipped), report.skipped[0])
    return report
