"""What every import format is read into, and the one place it becomes store rows.

Each format (:mod:`._import_openai`, :mod:`._import_langsmith`, :mod:`._import_langfuse`) turns
its records into :class:`Conversation` s: the conversation's messages in order, as
:class:`Step` s, each with what the export knows about the call behind it (the LLM call's
model, tokens, latency and real input; the tool call's arguments, latency and error).
:func:`conversation_rows` then applies the live-capture turn rule to all of them alike, so an
imported thread has the shape a captured one has and the detectors cannot tell them apart.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import IngestError
from ..privacy import Redactor
from ..prompts import PromptRegistry, versions_in_messages
from ..types import PromptVersion
from ._import_read import note
from ._messages import jsonable
from ._writer import Row

__all__ = ["Conversation", "ImportContext", "Step", "conversation_rows"]

# --- the intermediate model -----------------------------------------------------------------


@dataclass
class Step:
    """One message of a conversation, and what the export knows about the call behind it."""

    msg: dict[str, Any]
    """The message in loop-middleware's shape (see :func:`message`)."""
    loc: str
    """Where it is in its record, for error messages (``messages[3]``, ``run 1f2e… outputs``)."""
    at: datetime | None = None
    """When it happened (an LLM or tool call: when the call started)."""
    end: datetime | None = None
    call_id: str | None = None
    """The export's own id of the LLM or tool call (a LangSmith run id, a Langfuse observation
    id); derived from the position when absent."""
    turn_key: str | None = None
    """The export's id of the turn a user step opens (a trace or root run id)."""
    call_input: list[dict[str, Any]] | None = None
    """An LLM call's real input, when the export recorded it; else the history so far."""
    explicit: dict[str, PromptVersion] = field(default_factory=dict)
    """Prompt versions the export declares (a prompt run's metadata): hash of the rendered
    system text -> version, as live capture collects them (see ``versions_in_messages``)."""
    rendered: tuple[str, ...] = ()
    """Hashes of the prompt templates rendered in the call's turn."""
    model: str | None = None
    provider: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    """The call failed: an LLM error, or a tool error (the tool message's text is the error)."""
    failed_without_output: bool = False
    """An LLM call that raised before answering: it has no output message."""
    arguments: Any = None
    """A tool step's arguments when the export has them on the tool call itself."""
    no_result: bool = False
    """A tool call that raised: no result, only its error (its message's text is the error)."""
    turn_error: str | None = None
    """The turn as a whole failed (a root run's error)."""
    feedback: list[dict[str, Any]] = field(default_factory=list)
    """Feedback on this step's turn (``kind``, ``score``, ``label``, ``comment``,
    ``created_at``, ``key``)."""


@dataclass
class Conversation:
    """One thread read from an export."""

    thread_id: str
    record: str
    """Where it came from (``file:line``, ``file[3]``, ``trace …``)."""
    fmt: str
    steps: list[Step]
    user_id: str | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    """Thread-level feedback and outcomes (``turn_key`` / ``turn_index`` may tie one to a turn)."""


@dataclass
class ImportContext:
    """Settings and state shared by every conversation of one import."""

    registry: PromptRegistry | None
    redactor: Redactor | None
    max_chars: int | None
    default_time: datetime
    imported_at: datetime
    source: str = "import"
    warnings: list[str] = field(default_factory=list)
    _cache: dict[str, str] = field(default_factory=dict)
    _msgs: dict[int, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)

    # Redaction exactly as live capture does it (Recorder._r): message text, tool calls,
    # arguments, results and errors; a message's text is redacted once however often the
    # history repeats it.
    def text(self, value: str | None) -> str | None:
        if value is None or self.redactor is None:
            return value
        cached = self._cache.get(value)
        if cached is None:
            cached = self.redactor.redact(value)
            if len(self._cache) >= 20_000:
                self._cache.clear()
            self._cache[value] = cached
        return cached

    def value(self, value: Any) -> Any:
        return value if self.redactor is None else self.redactor.redact_value(value)

    def msgs(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._msg(m) for m in msgs]

    def _msg(self, m: dict[str, Any]) -> dict[str, Any]:
        if self.redactor is None:
            return dict(m)
        # Each history message is redacted once per conversation, however many LLM inputs
        # repeat it (keyed by identity; the original is kept so an id is never reused).
        hit = self._msgs.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        out = {**m, "content": self.text(m["content"] or ""),
               "tool_calls": self.redactor.redact_value(m["tool_calls"]) if m.get("tool_calls") else []}
        self._msgs[id(m)] = (m, out)
        return out

    def new_conversation(self) -> None:
        """Forget the per-conversation memo (its messages are about to be garbage)."""
        self._msgs.clear()


# --- conversation -> rows -------------------------------------------------------------------


def _check_sizes(conv: Conversation, limit: int | None) -> None:
    if not limit:
        return
    for s in conv.steps:
        sizes = [("content", len(s.msg["content"] or ""))]
        if s.msg["tool_calls"]:
            sizes.append(("tool_calls", len(json.dumps(s.msg["tool_calls"], default=str))))
        for name, n in sizes:
            if n > limit:
                raise IngestError(
                    f"message {name} is {n:,} characters, over the limit of {limit:,} "
                    "(raise max_message_chars / --max-message-chars to import it)",
                    record=conv.record, field=f"{s.loc}.{name}")


def _fill_times(steps: list[Step], base: datetime) -> list[tuple[datetime, bool]]:
    """Every step's time and whether the export gave it: missing ones are 1 ms after the step
    before them (before the first known time: 1 ms before the step after), so order is kept."""
    known = [i for i, s in enumerate(steps) if s.at is not None]
    out: list[tuple[datetime, bool]] = []
    first = known[0] if known else None
    for i, s in enumerate(steps):
        if s.at is not None:
            out.append((s.at, True))
        elif first is None:
            out.append((base + timedelta(milliseconds=i), False))
        elif i < first:
            anchor = steps[first].at
            assert anchor is not None
            out.append((anchor - timedelta(milliseconds=first - i), False))
        else:
            out.append((out[-1][0] + timedelta(milliseconds=1), False))
    return out


def _ms(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else max(0.0, (b - a).total_seconds() * 1000.0)


def _match(call: dict[str, Any], candidates: list[int], steps: list[Step], claimed: set[int]) -> int | None:
    """The tool step answering ``call``: the same ``tool_call_id``, else (an id missing on
    either side) the first unclaimed result of a tool of that name."""
    cid = call.get("id")
    if cid:
        for j in candidates:
            if j not in claimed and steps[j].msg["tool_call_id"] == cid:
                return j
    for j in candidates:
        m = steps[j].msg
        if j in claimed or (cid and m["tool_call_id"]):
            continue
        if m["name"] in (None, call["name"]):
            return j
    return None


def conversation_rows(conv: Conversation, ctx: ImportContext) -> tuple[list[Row], dict[str, int]]:
    """The store rows of one conversation, by the live-capture turn rule.

    A turn starts with a user message that follows something else (or opens the conversation);
    everything until the next such message belongs to it. Each assistant message is one LLM call
    whose input is the history so far, system messages included (or the call's real input when
    the export recorded it); the assistant's tool calls, paired with tool messages by
    ``tool_call_id`` (by tool name when ids are missing), are its tool calls, in the assistant
    message's order. Messages before the first user message (a system prompt, a greeting) are
    history only.

    Returns:
        (rows, counts of turns / llm_calls / tool_calls / feedback).

    Raises:
        IngestError: The conversation is empty, has no user message, or a message is too big.
    """
    steps = conv.steps
    ctx.new_conversation()
    if not steps:
        raise IngestError("empty conversation: no messages", record=conv.record)
    _check_sizes(conv, ctx.max_chars)
    # Split into turns: a user step right after a non-user step starts one.
    starts = [i for i, s in enumerate(steps)
              if s.msg["role"] == "user" and (i == 0 or steps[i - 1].msg["role"] != "user")]
    if not starts:
        raise IngestError("conversation has no user message, so no turn", record=conv.record)
    times = _fill_times(steps, conv.created_at or ctx.default_time)
    tid = conv.thread_id
    rows: list[Row] = []
    counts = {"turns": 0, "llm_calls": 0, "tool_calls": 0, "feedback": 0}
    history: list[dict[str, Any]] = [s.msg for s in steps[: starts[0]] if not s.failed_without_output]
    turn_ids: dict[str, str] = {}
    used: set[str] = set()
    seen_prompts: set[str] = set()
    all_ids: list[str] = []
    bounds = [*starts, len(steps)]
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        key = steps[lo].turn_key
        turn_id = key if key and key not in used else f"{tid}:turn:{n:04d}"
        used.add(turn_id)
        all_ids.append(turn_id)
        for s in steps[lo:hi]:
            if s.turn_key:
                turn_ids.setdefault(s.turn_key, turn_id)
        idx = range(lo, hi)
        tools = [j for j in idx if steps[j].msg["role"] == "tool"]
        claimed: set[int] = set()
        seq = 0
        user_msgs: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        turn_error = next((s.turn_error for s in steps[lo:hi] if s.turn_error), None)
        k_llm = k_tool = 0

        def tool_row(j: int, call: dict[str, Any] | None, turn_id: str) -> None:
            nonlocal seq, k_tool
            s = steps[j]
            at = times[j][0]
            # What the tool got (as live capture records it) when the export has it, else what
            # the model asked for.
            args = s.arguments if s.arguments is not None or call is None else call["args"]
            rows.append(("tool_call", {
                "id": s.call_id or f"{turn_id}:tool:{k_tool}", "turn_id": turn_id, "thread_id": tid,
                "seq": seq, "name": (call or {}).get("name") or s.msg["name"] or "unknown",
                "arguments": ctx.value(jsonable(args)),
                "result": None if s.no_result else ctx.text(s.msg["content"]),
                "error": ctx.text(s.error),
                "latency_ms": s.latency_ms if s.latency_ms is not None else _ms(s.at, s.end),
                "tool_call_id": (call or {}).get("id") or s.msg["tool_call_id"],
                "started_at": at,
            }))
            seq += 1
            k_tool += 1
            counts["tool_calls"] += 1

        for j in idx:
            s = steps[j]
            role = s.msg["role"]
            at = times[j][0]
            if role == "user":
                user_msgs.append(s.msg)
            elif role == "assistant":
                call_input = s.call_input if s.call_input is not None else list(history)
                # Versions from the exact text (the prompt is the host's, not user data), then redact.
                versions = versions_in_messages(call_input, registry=ctx.registry,
                                                explicit=s.explicit or None, rendered=s.rendered)
                for v in versions:
                    # once per conversation: each conversation's rows stand on their own
                    if v.sha256 not in seen_prompts:
                        seen_prompts.add(v.sha256)
                        rows.append(("prompt_version", {**v.model_dump(), "first_seen": at}))
                out = [] if s.failed_without_output else [s.msg]
                rows.append(("llm_call", {
                    "id": s.call_id or f"{turn_id}:llm:{k_llm}", "turn_id": turn_id, "thread_id": tid,
                    "seq": seq, "model": s.model, "provider": s.provider,
                    "input_messages": ctx.msgs(call_input), "output_messages": ctx.msgs(out),
                    "prompt_shas": [v.sha256 for v in versions],
                    "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                    "latency_ms": s.latency_ms if s.latency_ms is not None else _ms(s.at, s.end),
                    "finish_reason": s.finish_reason or (
                        None if s.error else "tool_calls" if s.msg["tool_calls"] else "stop"),
                    "error": ctx.text(s.error), "started_at": at,
                }))
                seq += 1
                k_llm += 1
                counts["llm_calls"] += 1
                rest.extend(out)
                for call in s.msg["tool_calls"]:
                    m = _match(call, [t for t in tools if t > j], steps, claimed)
                    if m is None:
                        ctx.warnings.append(note(
                            f"turn {n}: tool call {call['name']!r}"
                            f"{' (' + call['id'] + ')' if call.get('id') else ''} has no tool result; "
                            "kept in the assistant message only", conv.record, s.loc))
                        continue
                    claimed.add(m)
                    tool_row(m, call, turn_id)
            elif role == "tool":
                rest.append(s.msg)
                if j not in claimed:
                    ctx.warnings.append(note(
                        f"turn {n}: the tool result answers no tool call of the turn; stored as "
                        "a tool call of its own", conv.record, s.loc))
                    claimed.add(j)
                    tool_row(j, None, turn_id)
            elif role != "system":
                rest.append(s.msg)
            if not s.failed_without_output:
                history.append(s.msg)
        # A turn's end and latency only from times the export gave: filled-in times are order,
        # not duration, and would feed the latency detector nonsense.
        started, real_start = times[lo]
        ends = [steps[j].end or times[j][0] for j in idx if times[j][1]]
        ended = max(ends) if real_start and ends and max(ends) > started else None
        rows.append(("turn", {
            "id": turn_id, "thread_id": tid, "started_at": started, "ended_at": ended,
            "latency_ms": _ms(started, ended), "error": ctx.text(turn_error),
            "input_messages": ctx.msgs(user_msgs), "output_messages": ctx.msgs(rest),
            "meta": {"source": ctx.source, "format": conv.fmt},
        }))
        counts["turns"] += 1
        for s in steps[lo:hi]:
            for f in s.feedback:
                rows.append(_feedback_row(f, tid, turn_id, times[lo][0], ctx))
                counts["feedback"] += 1
    for i, f in enumerate(conv.feedback):
        turn = turn_ids.get(f.get("turn_key") or "")
        ti = f.get("turn_index")
        if turn is None and isinstance(ti, int) and not isinstance(ti, bool) and 0 <= ti < len(all_ids):
            turn = all_ids[ti]
        rows.append(_feedback_row({"key": f"thread:{i}", **f}, tid, turn, times[-1][0], ctx))
        counts["feedback"] += 1
    thread_row: dict[str, Any] = {
        "thread_id": tid, "source": ctx.source, "created_at": conv.created_at or times[0][0],
        # updated_at is the time of the import, not of the conversation: it is the watermark
        # `extract` picks new threads up by, and months-old history is new to the loop.
        "updated_at": ctx.imported_at,
        "meta": ctx.value(jsonable({**conv.metadata, "import": {"format": conv.fmt,
                                                                 "record": conv.record}})),
    }
    if conv.user_id:
        thread_row["user_id"] = conv.user_id
    rows.insert(0, ("thread", thread_row))
    return rows, counts


def _feedback_row(f: dict[str, Any], tid: str, turn_id: str | None, at: datetime,
                  ctx: ImportContext) -> Row:
    return ("feedback", {
        "id": f"{tid}:feedback:{f.get('key') or f.get('id')}", "thread_id": tid,
        "turn_id": turn_id, "kind": f.get("kind") or "feedback", "score": f.get("score"),
        "label": f.get("label"), "comment": ctx.text(f.get("comment")),
        "created_at": f.get("created_at") or at,
    })
