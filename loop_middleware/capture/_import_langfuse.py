"""Langfuse exports: traces, observations and scores as the public API returns them.

Accepted records, in any mix and over any number of files: traces (``GET /api/public/traces/{id}``
gives ``TraceWithFullDetails``: ``id``, ``timestamp``, ``sessionId``, ``userId``, ``input`` /
``output``, ``metadata``, ``tags`` and the ``observations`` and ``scores`` as objects; the list
endpoint gives ids only, then the observations and scores are separate records), observations
(``id``, ``traceId``, ``type`` GENERATION / SPAN / EVENT / TOOL / ..., ``startTime`` /
``endTime``, ``model``, ``input`` / ``output``, ``usage`` / ``usageDetails``, ``level`` /
``statusMessage``, ``metadata``), scores (``traceId`` or ``sessionId``, ``observationId``,
``name``, ``value`` / ``stringValue``, ``dataType``, ``comment``) and sessions with their
``traces``. A page of the API (``{"data": [...], "meta": ...}``) is unwrapped by the caller.

One trace is one agent invocation; traces are grouped into threads by ``sessionId`` (else each
trace is a thread). Each GENERATION is an LLM call with its real input; TOOL observations, and
SPANs that answer one of the generations' tool calls (Langfuse's LangChain integration records
tools as spans), are tool calls. A trace without generations is read from its input and output.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .._text import clean_text
from ..errors import IngestError
from ._import_model import Conversation, Step
from ._import_read import (
    RECORD_ERRORS,
    count,
    input_messages,
    messages,
    note,
    output_messages,
    parse_arguments,
    parse_time,
    result_text,
    say,
    trailing_user,
)

__all__ = ["conversations", "looks_like"]

_MARKERS = ("traceId", "observations", "sessionId", "parentObservationId", "startTime",
            "usageDetails", "htmlPath", "dataType", "stringValue", "observationId")


def looks_like(record: Any) -> bool:
    """A trace, observation, score or session as the Langfuse API writes them."""
    return isinstance(record, Mapping) and (
        any(k in record for k in _MARKERS)
        or (isinstance(record.get("traces"), list) and "projectId" in record))


def _kind(rec: Mapping[str, Any]) -> str:
    if "startTime" in rec and "type" in rec:
        return "observation"
    if "name" in rec and ("traceId" in rec or "sessionId" in rec) and (
            "value" in rec or "stringValue" in rec or "dataType" in rec):
        return "score"
    if isinstance(rec.get("traces"), list):
        return "session"
    return "trace"


def _str(rec: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    v = rec.get(key)
    if v is None or v == "":
        if required:
            raise IngestError(f"missing '{key}'", record=where, field=key)
        return None
    if not isinstance(v, str):
        raise IngestError(f"'{key}' must be a string", record=where, field=key)
    return v


class _Obs:
    def __init__(self, raw: Mapping[str, Any], where: str, pos: int) -> None:
        self.id = _str(raw, "id", where, required=True) or ""
        self.where = w = f"{where} (observation {self.id})"
        self.raw, self.pos = raw, pos
        self.type = (_str(raw, "type", w, required=True) or "").upper()
        self.trace = _str(raw, "traceId", w)
        self.name = _str(raw, "name", w)
        self.start = parse_time(raw.get("startTime"), w, "startTime")
        self.end = parse_time(raw.get("endTime"), w, "endTime")
        meta = raw.get("metadata")
        self.meta: dict[str, Any] = dict(meta) if isinstance(meta, Mapping) else {}
        level = raw.get("level")
        self.error = None
        if level == "ERROR":
            self.error = clean_text(_str(raw, "statusMessage", w) or "error")
        # the v2 observations API carries the trace's session and user on every observation
        self.session = _str(raw, "sessionId", w)
        self.user = _str(raw, "userId", w)

    @property
    def key(self) -> tuple[float, int]:
        return (self.start.timestamp() if self.start else 0.0, self.pos)

    def latency_ms(self) -> float | None:
        if self.start and self.end:
            return max(0.0, (self.end - self.start).total_seconds() * 1000.0)
        lat = self.raw.get("latency")  # ObservationsView: seconds
        return float(lat) * 1000.0 if isinstance(lat, (int, float)) and not isinstance(lat, bool) \
            and math.isfinite(lat) and lat >= 0 else None


def _usage(raw: Mapping[str, Any]) -> tuple[int | None, int | None]:
    for key in ("usageDetails", "usage"):
        u = raw.get(key)
        if isinstance(u, Mapping) and u:
            i = next((count(u[k]) for k in ("input", "prompt_tokens", "input_tokens", "promptTokens")
                      if k in u), None)
            o = next((count(u[k]) for k in ("output", "completion_tokens", "output_tokens",
                                            "completionTokens") if k in u), None)
            if i is not None or o is not None:
                return i, o
    for a, b in (("inputUsage", "outputUsage"), ("promptTokens", "completionTokens")):
        if a in raw or b in raw:
            return count(raw.get(a)), count(raw.get(b))
    return None, None


def _io(value: Any) -> Any:
    """An input or output: the v2 observations API returns them as JSON text, v1 as JSON."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "[", '"'):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _gen_input(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, Mapping) and not ("messages" in value or "role" in value or value.get("lc") == 1):
        return input_messages(value, where, "input")
    return messages(value, where, "input")


def _gen_step(o: _Obs, turn_key: str) -> Step | None:
    w = o.where
    call_input = _gen_input(_io(o.raw.get("input")), w)
    out = [m for m in output_messages(_io(o.raw.get("output")), w, "output")
           if m["role"] == "assistant"][-1:]
    if not out and o.error is None:
        return None
    i, n = _usage(o.raw)
    return Step(
        msg=out[0] if out else {"role": "assistant", "content": "", "name": None, "tool_calls": [],
                                "tool_call_id": None, "id": None},
        loc=f"observation {o.id} output", at=o.start, end=o.end, call_id=o.id, turn_key=turn_key,
        call_input=call_input, model=_str(o.raw, "model", w),
        provider=o.meta["ls_provider"] if isinstance(o.meta.get("ls_provider"), str) else None,
        input_tokens=i, output_tokens=n, latency_ms=o.latency_ms(), error=o.error,
        failed_without_output=not out,
    )


def _tool_step(o: _Obs, turn_key: str) -> Step:
    out = _io(o.raw.get("output"))
    inputs = o.meta.get("inputs")  # the LangChain integration keeps the argument dict here
    args = dict(inputs) if isinstance(inputs, Mapping) else parse_arguments(_io(o.raw.get("input")))
    cid = o.meta.get("tool_call_id")
    if isinstance(out, Mapping):
        cid = cid or out.get("tool_call_id")
    content = result_text(out) if out is not None else (o.error or "")
    status = out.get("status") if isinstance(out, Mapping) else None
    return Step(
        msg={"role": "tool", "content": content, "name": o.name,
             "tool_call_id": cid if isinstance(cid, str) else None, "tool_calls": [], "id": None},
        loc=f"observation {o.id}", at=o.start, end=o.end, call_id=o.id, turn_key=turn_key,
        arguments=args, error=o.error or (content if status == "error" else None),
        latency_ms=o.latency_ms(), no_result=out is None,
    )


def _score(s: Mapping[str, Any], where: str, trace: str | None) -> dict[str, Any]:
    name = _str(s, "name", where, required=True)
    value, sv = s.get("value"), s.get("stringValue")
    numeric = value if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None
    dtype = s.get("dataType")
    comment = clean_text(s["comment"]) if isinstance(s.get("comment"), str) else None
    label: Any = name
    if dtype in ("TEXT", "CORRECTION"):  # free text: a comment, not a rating
        numeric = None
        comment = "\n".join(t for t in (comment, sv if isinstance(sv, str) else None) if t) or None
    elif dtype == "CATEGORICAL" or isinstance(value, str):
        # the category says more than the score's name ("thumbs_down", "wrong")
        label = sv if isinstance(sv, str) else value if isinstance(value, str) else name
    return {"kind": "feedback", "key": str(s.get("id") or f"{trace}:{name}"), "score": numeric,
            "label": clean_text(str(label)), "comment": comment,
            "created_at": parse_time(s.get("timestamp"), where, "timestamp")}


def conversations(records: list[tuple[str, Any]], *, prefix: str = "",
                  skipped: list[str]) -> list[Conversation]:
    """Langfuse records (from any number of files) as threads; a broken observation or score
    skips its trace (named in ``skipped``), the other traces of the thread are kept."""
    traces: dict[str, tuple[Mapping[str, Any], str]] = {}
    raw_obs: list[tuple[Mapping[str, Any], str]] = []
    raw_scores: list[tuple[Mapping[str, Any], str]] = []

    def add(rec: Any, where: str) -> None:
        if not isinstance(rec, Mapping):
            skipped.append(note(f"not a Langfuse trace, observation or score (a "
                                f"{type(rec).__name__})", where) + "; skipped")
            return
        kind = _kind(rec)
        if kind == "observation":
            raw_obs.append((rec, where))
        elif kind == "score":
            raw_scores.append((rec, where))
        elif kind == "session":
            for i, t in enumerate(rec["traces"]):
                add({"sessionId": rec.get("id"), **t} if isinstance(t, Mapping) else t,
                    f"{where} traces[{i}]")
        else:
            tid = rec.get("id")
            if not isinstance(tid, str) or not tid:
                skipped.append(note("a trace needs a string 'id'", where, "id") + "; skipped")
                return
            traces.setdefault(tid, (rec, where))
            for key, sink in (("observations", raw_obs), ("scores", raw_scores)):
                items = rec.get(key)
                if isinstance(items, list):
                    sink.extend(({"traceId": tid, **x}, f"{where} {key}[{i}]")
                                for i, x in enumerate(items) if isinstance(x, Mapping))

    for where, rec in records:
        add(rec, where)
    broken: dict[str, str] = {}
    obs_by_trace: dict[str, dict[str, _Obs]] = defaultdict(dict)
    for pos, (raw, where) in enumerate(raw_obs):
        try:
            o = _Obs(raw, where, pos)
        except RECORD_ERRORS as exc:
            t = raw.get("traceId")
            if isinstance(t, str) and t:
                broken.setdefault(t, say(exc, where))
            else:
                skipped.append(f"{say(exc, where)}; skipped")
            continue
        if o.trace is None:
            skipped.append(note("observation without a 'traceId'", o.where, "traceId") + "; skipped")
            continue
        obs_by_trace[o.trace].setdefault(o.id, o)
    scores: dict[str, list[dict[str, Any]]] = defaultdict(list)
    session_scores: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw, where in raw_scores:
        t, sess = raw.get("traceId"), raw.get("sessionId")
        try:
            item = _score(raw, where, t if isinstance(t, str) else None)
        except RECORD_ERRORS as exc:
            if isinstance(t, str) and t:
                broken.setdefault(t, say(exc, where))
            else:
                skipped.append(f"{say(exc, where)}; skipped")
            continue
        if isinstance(t, str) and t:
            scores[t].append(item)
        elif isinstance(sess, str) and sess:
            session_scores[sess].append(item)
    threads: dict[str, list[tuple[datetime | None, list[Step], Mapping[str, Any], str, list[_Obs]]]] = \
        defaultdict(list)
    for trace_id in sorted({*traces, *obs_by_trace, *broken}):
        if trace_id in broken:
            skipped.append(f"{broken[trace_id]}; trace {trace_id} skipped")
            continue
        rec, where = traces.get(trace_id, ({"id": trace_id}, f"observations of trace {trace_id}"))
        obs = sorted(obs_by_trace.get(trace_id, {}).values(), key=lambda o: o.key)
        try:
            at = parse_time(rec.get("timestamp"), where, "timestamp") or (obs[0].start if obs else None)
            steps = _trace_steps(trace_id, rec, where, obs, at, scores.get(trace_id, []))
            session = _str(rec, "sessionId", where) or next((o.session for o in obs if o.session), None)
            _str(rec, "userId", where)  # a wrong type is an error, not a silent None
        except RECORD_ERRORS as exc:
            skipped.append(f"{say(exc, where)}; trace {trace_id} skipped")
            continue
        threads[session or trace_id].append((at, steps, rec, where, obs))
    out = []
    for tid, parts in threads.items():
        parts.sort(key=lambda p: p[0].timestamp() if p[0] else 0.0)
        at, _, rec, where, _ = parts[0]
        meta = dict(rec["metadata"]) if isinstance(rec.get("metadata"), Mapping) else {}
        if isinstance(rec.get("tags"), list) and rec["tags"]:
            meta["tags"] = [t for t in rec["tags"] if isinstance(t, str)]
        user = next((p[2]["userId"] for p in parts if isinstance(p[2].get("userId"), str)), None) \
            or next((o.user for p in parts for o in p[4] if o.user), None)
        out.append(Conversation(
            thread_id=prefix + clean_text(tid), record=f"{where} (Langfuse thread {tid})",
            fmt="langfuse", steps=[s for p in parts for s in p[1]], user_id=user, created_at=at,
            metadata=meta, feedback=session_scores.get(tid, []),
        ))
    return out


def _trace_steps(trace_id: str, rec: Mapping[str, Any], where: str, obs: list[_Obs],
                 at: datetime | None, scores: list[dict[str, Any]]) -> list[Step]:
    gens = {o.id: _gen_step(o, trace_id) for o in obs if o.type == "GENERATION"}
    tool_names = {c["name"] for s in gens.values() if s is not None for c in s.msg["tool_calls"]}
    steps: list[Step] = []
    if gens:
        first = next((s for s in gens.values() if s is not None), None)
        new = trailing_user(first.call_input or []) if first is not None else []
        if not new:
            new = input_messages(_io(rec.get("input")), where, "input")
        steps += [Step(msg=m, loc="input", at=at, turn_key=trace_id) for m in new]
        for o in obs:
            if o.type == "GENERATION":
                s = gens[o.id]
                if s is not None:
                    steps.append(s)
            elif o.type == "TOOL" or (o.type == "SPAN" and (
                    o.name in tool_names or "tool_call_id" in o.meta
                    or (isinstance(o.raw.get("output"), Mapping) and "tool_call_id" in o.raw["output"]))):
                steps.append(_tool_step(o, trace_id))
    else:
        steps += [Step(msg=m, loc="input", at=at, turn_key=trace_id)
                  for m in input_messages(_io(rec.get("input")), where, "input")]
        end = max((o.end for o in obs if o.end), default=None)
        steps += [Step(msg=m, loc="output", at=end, turn_key=trace_id)
                  for m in output_messages(_io(rec.get("output")), where, "output")]
    if not steps:
        raise IngestError("the trace has no messages (no generation, nothing in its input or "
                          "output)", record=where, field="input")
    steps[0].feedback = scores
    return steps
