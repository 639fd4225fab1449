"""LangSmith run exports: what ``Client.list_runs()`` returns, dumped as JSON or JSON Lines.

A run (``langsmith.schemas.Run``) has ``id``, ``trace_id``, ``parent_run_id``, ``dotted_order``,
``run_type`` (``llm``, ``tool``, ``chain``, ...), ``inputs`` / ``outputs``, ``start_time`` /
``end_time``, ``error``, ``extra`` (``metadata``, ``invocation_params``), token counts
(``prompt_tokens`` / ``completion_tokens``), ``feedback_stats`` and optionally nested
``child_runs``. Feedback records (``langsmith.schemas.Feedback``: ``run_id``, ``key``, ``score``,
``value``, ``comment``) may sit in the same files.

One trace (the runs sharing a ``trace_id``) is one agent invocation; traces are grouped into
threads by ``thread_id`` / ``session_id`` / ``conversation_id`` in the metadata, as LangSmith's
own thread view does (else each trace is a thread). Inside a trace, each ``llm`` run is an LLM
call with its real input, each ``tool`` run a tool call; a trace without ``llm`` runs (an
export of root runs only) is read from the root's input and output messages.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from .._text import clean_text
from ..errors import IngestError
from ..prompts import PromptRegistry, sha256_text, version_from_metadata
from ..types import PromptVersion
from ._callbacks import _system_templates  # the one reader of a serialised ChatPromptTemplate
from ._import_model import Conversation, Step
from ._import_read import (
    RECORD_ERRORS,
    count,
    input_messages,
    message,
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

_THREAD_KEYS = ("thread_id", "session_id", "conversation_id")
_USER_KEYS = ("user_id", "userId", "user")
_MARKERS = ("run_type", "dotted_order", "child_runs", "feedback_stats", "parent_run_id")


def looks_like(record: Any) -> bool:
    """A run, or a feedback record (``run_id`` + ``key``)."""
    return isinstance(record, Mapping) and (
        any(k in record for k in _MARKERS) or ("run_id" in record and "key" in record))


def _obj(value: Any, where: str, fld: str) -> dict[str, Any]:
    if isinstance(value, str):  # bulk exports keep inputs/outputs as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return {"input" if fld == "inputs" else "output": value}
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise IngestError(f"{fld} must be an object", record=where, field=fld)
    return dict(value)


def _error(value: Any) -> str | None:
    """A run's error as live capture words it: the tracer stores ``repr(exc)`` plus the
    traceback, whose last line is ``Type: message``."""
    if not isinstance(value, str) or not value.strip():
        return None
    if "Traceback (most recent call last):" in value:
        last = next((ln.strip() for ln in reversed(value.splitlines()) if ln.strip()), "")
        if last:
            return clean_text(last)
    return clean_text(value.strip())


class _Run:
    __slots__ = ("dotted", "end", "error", "extra", "id", "inputs", "name", "outputs", "parent",
                 "pos", "raw", "run_type", "start", "trace", "where")

    def __init__(self, raw: Mapping[str, Any], where: str, pos: int) -> None:
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid:
            raise IngestError("a run needs a string 'id'", record=where, field="id")
        self.id, self.raw, self.where = rid, raw, f"{where} (run {rid})"
        w = self.where
        rt = raw.get("run_type")
        if not isinstance(rt, str):
            raise IngestError("'run_type' must be a string", record=w, field="run_type")
        self.run_type = rt
        self.name = clean_text(raw["name"]) if isinstance(raw.get("name"), str) else None
        self.start = parse_time(raw.get("start_time"), w, "start_time")
        self.end = parse_time(raw.get("end_time"), w, "end_time")
        parent, trace = raw.get("parent_run_id"), raw.get("trace_id")
        for key, v in (("parent_run_id", parent), ("trace_id", trace)):
            if v is not None and not isinstance(v, str):
                raise IngestError(f"'{key}' must be a string", record=w, field=key)
        self.parent, self.trace = parent or None, trace or None
        self.inputs = _obj(raw.get("inputs"), w, "inputs")
        self.outputs = _obj(raw.get("outputs"), w, "outputs")
        extra = raw.get("extra")
        self.extra = dict(extra) if isinstance(extra, Mapping) else {}
        self.error = _error(raw.get("error"))
        dotted = raw.get("dotted_order")
        self.dotted = dotted if isinstance(dotted, str) and dotted else None
        self.pos = pos

    @property
    def start_ts(self) -> float:
        return self.start.timestamp() if self.start else 0.0

    @property
    def metadata(self) -> dict[str, Any]:
        m = self.extra.get("metadata")
        return dict(m) if isinstance(m, Mapping) else {}


def _flatten(raw: Any, where: str, out: list[tuple[Mapping[str, Any], str]]) -> None:
    if not isinstance(raw, Mapping):
        raise IngestError("a run must be an object", record=where)
    out.append((raw, where))
    children = raw.get("child_runs")
    if isinstance(children, list):
        for i, c in enumerate(children):
            _flatten(c, f"{where} child_runs[{i}]", out)


def _llm_step(r: _Run, turn_key: str) -> Step | None:
    w = r.where
    ins = r.inputs
    if "messages" in ins:
        call_input = messages(ins["messages"], w, "inputs.messages")
    elif isinstance(ins.get("prompts"), list):  # a completion (non-chat) model
        call_input = [message(p, w, f"inputs.prompts[{i}]") for i, p in enumerate(ins["prompts"])
                      if isinstance(p, str)]
    else:
        call_input = input_messages(ins, w, "inputs")
    outs = r.outputs
    out: list[dict[str, Any]] = []
    finish = None
    msg_usage: Any = None
    gens = outs.get("generations")
    if isinstance(gens, list) and gens:
        first = gens[0][0] if isinstance(gens[0], list) and gens[0] else gens[0]
        if isinstance(first, Mapping):
            raw_msg = first.get("message")
            if raw_msg is not None:
                out = [message(raw_msg, w, "outputs.generations[0][0].message")]
                if isinstance(raw_msg, Mapping):
                    kw = raw_msg.get("kwargs")
                    msg_usage = (kw if isinstance(kw, Mapping) else raw_msg).get("usage_metadata")
            elif isinstance(first.get("text"), str):
                out = [{**message(first["text"], w, "outputs.generations[0][0].text"), "role": "assistant"}]
            info = first.get("generation_info")
            if isinstance(info, Mapping) and isinstance(info.get("finish_reason"), str):
                finish = info["finish_reason"]
    else:
        out = [m for m in output_messages(outs, w, "outputs") if m["role"] == "assistant"][-1:]
        choices = outs.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            finish = choices[0].get("finish_reason") if isinstance(choices[0].get("finish_reason"), str) else None
    if not out and r.error is None:
        return None
    msg = out[0] if out else {"role": "assistant", "content": "", "name": None, "tool_calls": [],
                              "tool_call_id": None, "id": None}
    if msg["role"] != "assistant":
        raise IngestError(f"an llm run's output is a {msg['role']} message", record=w, field="outputs")
    meta = r.metadata
    raw_inv, raw_lo = r.extra.get("invocation_params"), outs.get("llm_output")
    inv: Mapping[str, Any] = raw_inv if isinstance(raw_inv, Mapping) else {}
    llm_output: Mapping[str, Any] = raw_lo if isinstance(raw_lo, Mapping) else {}
    usage = _usage(r, outs, llm_output, meta, msg_usage)
    ser = r.raw.get("serialized")
    # The order live capture reads it in (LoopCallbackHandler), then what the output says.
    model = next((v for v in (meta.get("ls_model_name"), inv.get("model"), inv.get("model_name"),
                              ser.get("name") if isinstance(ser, Mapping) else None, r.name,
                              llm_output.get("model_name"), outs.get("model"))
                  if isinstance(v, str) and v), None)
    return Step(
        msg=msg, loc=f"run {r.id} outputs", at=r.start, end=r.end, call_id=r.id,
        turn_key=turn_key, call_input=call_input, model=model,
        provider=meta["ls_provider"] if isinstance(meta.get("ls_provider"), str) else None,
        input_tokens=usage[0], output_tokens=usage[1], finish_reason=finish, error=r.error,
        failed_without_output=not out,
    )


def _usage(r: _Run, outs: Mapping[str, Any], llm_output: Mapping[str, Any],
           meta: Mapping[str, Any], msg_usage: Any) -> tuple[int | None, int | None]:
    pt, ct = count(r.raw.get("prompt_tokens")), count(r.raw.get("completion_tokens"))
    if pt is not None or ct is not None:
        return pt, ct
    for u in (meta.get("usage_metadata"), msg_usage, llm_output.get("token_usage"),
              llm_output.get("usage"), outs.get("usage")):
        if isinstance(u, Mapping) and u:
            return (count(u.get("input_tokens", u.get("prompt_tokens"))),
                    count(u.get("output_tokens", u.get("completion_tokens"))))
    return None, None


def _tool_step(r: _Run, turn_key: str) -> Step:
    ins = r.inputs
    args: Any = ins
    if set(ins) == {"input"}:  # the tracer's {"input": input_str}
        args = parse_arguments(ins["input"])
    out = r.outputs.get("output", r.outputs if r.outputs else None)
    cid = r.extra.get("tool_call_id")
    status = None
    if isinstance(out, Mapping):
        kw = out.get("kwargs")
        body: Mapping[str, Any] = kw if out.get("lc") == 1 and isinstance(kw, Mapping) else out
        cid = cid or body.get("tool_call_id")
        status = body.get("status")
    content = result_text(out) if out is not None else (r.error or "")
    error = r.error or (content if status == "error" else None)
    return Step(
        msg={"role": "tool", "content": content, "name": r.name,
             "tool_call_id": cid if isinstance(cid, str) else None, "tool_calls": [], "id": None},
        loc=f"run {r.id}", at=r.start, end=r.end, call_id=r.id, turn_key=turn_key,
        arguments=args, error=error, no_result=out is None,
    )


def _feedback_of_stats(r: _Run) -> list[dict[str, Any]]:
    stats = r.raw.get("feedback_stats")
    out: list[dict[str, Any]] = []
    if not isinstance(stats, Mapping):
        return out
    for key, s in stats.items():
        if not isinstance(s, Mapping):
            continue
        avg = s.get("avg")
        values = s.get("values") if isinstance(s.get("values"), Mapping) else {}
        top = max(values, key=lambda v: values[v] if isinstance(values[v], (int, float)) else 0) \
            if values else None
        if not isinstance(avg, (int, float)) or isinstance(avg, bool):
            avg = None
        if avg is None and top is None:
            continue
        out.append({"kind": "feedback", "key": f"{r.id}:{key}", "score": avg,
                    "label": str(top) if top is not None and avg is None else str(key)})
    return out


def _feedback_record(f: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    run_id = f.get("run_id")
    if not isinstance(run_id, str):
        raise IngestError("feedback 'run_id' must be a string", record=where, field="run_id")
    score = f.get("score")
    if isinstance(score, bool):
        score = float(score)
    elif not isinstance(score, (int, float)):
        score = None
    value, key, comment = f.get("value"), f.get("key"), f.get("comment")
    return run_id, {
        "kind": "feedback", "key": str(f.get("id") or f"{run_id}:{key}"), "score": score,
        "label": clean_text(value) if isinstance(value, str) and value else str(key),
        "comment": clean_text(comment) if isinstance(comment, str) else None,
        "created_at": parse_time(f.get("created_at"), where, "created_at"),
    }


def conversations(records: list[tuple[str, Any]], *, prefix: str = "", skipped: list[str],
                  registry: PromptRegistry | None = None) -> list[Conversation]:
    """Runs and feedback records (from any number of files) as threads; a broken run skips its
    trace (named in ``skipped``), the other traces of the thread are kept."""
    flat: list[tuple[Mapping[str, Any], str]] = []
    fb_raw: list[tuple[Mapping[str, Any], str]] = []
    for where, rec in records:
        try:
            if isinstance(rec, Mapping) and "run_id" in rec and "key" in rec and "run_type" not in rec:
                fb_raw.append((rec, where))
            else:
                _flatten(rec, where, flat)
        except RECORD_ERRORS as exc:
            skipped.append(f"{say(exc, where)}; skipped")
    runs: dict[str, _Run] = {}
    broken: dict[str, str] = {}
    for pos, (raw, where) in enumerate(flat):
        try:
            run = _Run(raw, where, pos)
        except RECORD_ERRORS as exc:
            trace = raw.get("trace_id")
            if isinstance(trace, str) and trace:
                broken.setdefault(trace, say(exc, where))
            else:
                skipped.append(f"{say(exc, where)}; skipped")
            continue
        prev = runs.get(run.id)
        # The same run twice (nested and flat, or two overlapping exports): keep the finished one.
        if prev is None or (prev.end is None and run.end is not None):
            runs[run.id] = run

    def trace_of(r: _Run) -> str:
        seen = set()
        while r.trace is None and r.parent in runs and r.id not in seen:
            seen.add(r.id)
            r = runs[r.parent]
        return r.trace or r.id

    traces: dict[str, list[_Run]] = defaultdict(list)
    for r in runs.values():
        traces[trace_of(r)].append(r)
    feedback: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw, where in fb_raw:
        try:
            run_id, item = _feedback_record(raw, where)
        except RECORD_ERRORS as exc:
            skipped.append(f"{say(exc, where)}; skipped")
            continue
        target = runs.get(run_id)
        if target is None:
            skipped.append(note(f"feedback for run {run_id}, which is not in the import",
                                where, "run_id") + "; skipped")
            continue
        feedback[trace_of(target)].append(item)
    for trace, msg in broken.items():
        skipped.append(f"{msg}; trace {trace} skipped")
        traces.pop(trace, None)

    threads: dict[str, list[tuple[_Run, list[Step]]]] = defaultdict(list)
    for trace, members in traces.items():
        # dotted_order sorts a trace in execution order (that is what it is for); else by time.
        if all(r.dotted for r in members):
            members.sort(key=lambda r: r.dotted or "")
        else:
            members.sort(key=lambda r: (r.start_ts, r.pos))
        ids = {r.id for r in members}
        roots = [r for r in members if r.parent is None or r.parent not in ids]
        root = min(roots, key=lambda r: (r.start_ts, r.pos))
        try:
            steps = _trace_steps(root, members, feedback.get(trace, []), registry)
        except RECORD_ERRORS as exc:
            skipped.append(f"{say(exc, root.where)}; trace {trace} skipped")
            continue
        metas = [root.metadata, *(r.metadata for r in members)]
        tid = next((str(m[k]) for m in metas for k in _THREAD_KEYS
                    if isinstance(m.get(k), (str, int)) and not isinstance(m.get(k), bool)
                    and str(m.get(k))), trace)
        threads[tid].append((root, steps))
    out = []
    for tid, parts in threads.items():
        parts.sort(key=lambda p: p[0].start_ts)
        first = parts[0][0]
        meta = first.metadata
        user = next((meta[k] for k in _USER_KEYS if isinstance(meta.get(k), (str, int))), None)
        out.append(Conversation(
            thread_id=prefix + clean_text(tid), record=f"{first.where.split(' (run')[0]} (LangSmith thread {tid})",
            fmt="langsmith", steps=[s for _, steps in parts for s in steps],
            user_id=None if user is None else str(user), created_at=first.start,
            metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))
                      and not k.startswith(("langgraph_", "ls_", "lc_", "checkpoint_"))},
        ))
    return out


def _prompt_hints(members: list[_Run], registry: PromptRegistry | None
                  ) -> tuple[dict[str, PromptVersion], tuple[str, ...]]:
    """What the trace's prompt-template runs say, read as live capture reads a rendered
    template: the version its metadata declares (``as_template`` or LangChain hub) for each
    rendered system text, and the hashes of the templates rendered."""
    explicit: dict[str, PromptVersion] = {}
    rendered: list[str] = []
    for r in members:
        if r.run_type != "prompt":
            continue
        templates = _system_templates(r.raw.get("serialized"))
        out = r.outputs.get("output", r.outputs)
        if isinstance(out, Mapping) and out.get("lc") == 1 and isinstance(out.get("kwargs"), Mapping):
            out = out["kwargs"]
        systems: list[str] = []
        if isinstance(out, Mapping) and isinstance(out.get("messages"), list):
            systems = [m["content"] for m in messages(out["messages"], r.where, "outputs.output.messages")
                       if m["role"] == "system"]
        elif isinstance(out, Mapping) and isinstance(out.get("text"), str) and templates:
            systems = [out["text"]]  # a StringPromptValue used as the system text
        for i, text in enumerate(systems):
            template = templates[i] if i < len(templates) else None
            version = version_from_metadata(r.metadata, template, registry=registry)
            if version is not None:
                explicit[sha256_text(text)] = version
            if template:
                rendered.append(sha256_text(template))
    return explicit, tuple(rendered)


def _trace_steps(root: _Run, members: list[_Run], feedback: list[dict[str, Any]],
                 registry: PromptRegistry | None) -> list[Step]:
    key = root.id
    llm_steps = {r.id: _llm_step(r, key) for r in members if r.run_type == "llm"}
    explicit, rendered = _prompt_hints(members, registry)
    for s in llm_steps.values():
        if s is not None:
            s.explicit, s.rendered = explicit, rendered
    steps: list[Step] = []
    if llm_steps:
        first = next((s for s in llm_steps.values() if s is not None), None)
        new = trailing_user(first.call_input or []) if first is not None else []
        if not new:
            new = input_messages(root.inputs, root.where, "inputs")
        steps += [Step(msg=m, loc=f"run {root.id} inputs", at=root.start, turn_key=key) for m in new]
        for r in members:
            if r.run_type == "llm":
                s = llm_steps[r.id]
                if s is not None:
                    steps.append(s)
            elif r.run_type == "tool":
                steps.append(_tool_step(r, key))
    else:  # root runs only: the turn is in the root's input and output messages
        steps += [Step(msg=m, loc=f"run {root.id} inputs", at=root.start, turn_key=key)
                  for m in input_messages(root.inputs, root.where, "inputs")]
        steps += [Step(msg=m, loc=f"run {root.id} outputs", at=root.end, turn_key=key)
                  for m in output_messages(root.outputs, root.where, "outputs")]
    if not steps:
        raise IngestError("the trace has no messages (no llm run, nothing in the root's inputs "
                          "or outputs)", record=root.where, field="inputs")
    steps[0].turn_error = root.error
    # Feedback records when the export has them, else the runs' aggregated feedback_stats
    # (both describe the same feedback).
    steps[0].feedback = feedback or [f for r in members for f in _feedback_of_stats(r)]
    if steps[-1].end is None and root.end is not None and steps[-1].msg["role"] != "user":
        steps[-1].end = root.end
    return steps
