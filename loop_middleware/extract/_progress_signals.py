"""Detectors of a conversation that does not move forward.

``stall``: it goes round in circles (too many turns before any sign of resolution, or the same
tool called with the same arguments again and again). ``context_loss``: the agent lost part of
the conversation (over the model's token budget, messages dropped from the LLM input, asking
again for what the user already gave). ``latency_outlier``: a turn much slower than its batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from ..types import Message, Signal, Thread
from ._detection import DetectionContext, turn_latency_ms
from ._evidence import (
    _assistant_messages,
    _jsonable_args,
    _ordered_tools,
    _sentence,
    _signal,
    _user_messages,
    clip_quote,
)
from ._phrases import (
    _ADMITS_NOT_FOUND_RX,
    _ASK_ENTITY_RX,
    _ASK_VERB_RX,
    _DIGIT_RX,
    _DIGITS3_RX,
    _EMAIL_VALUE_RX,
    _ID_KEYWORD_RX,
    _ID_VALUE_RX,
    _NOT_RESOLVED_RX,
    _PHONE_VALUE_RX,
    _RECHECK_RX,
    _RESOLVED_RX,
    _USER_SAYS_LOST_RX,
)


def _canonical_args(args: Any) -> str:
    """One string per distinct argument value ('{"a": 1, "b": 2}' and '{"b":2,"a":1}' agree)."""
    value: Any = args
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except ValueError:
            return args.strip()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _resolution_turn(thread: Thread) -> int | None:
    """Position of the first user message that sounds like the problem was solved."""
    for pos, turn in enumerate(thread.turns):
        user = turn.user_text
        if pos > 0 and _RESOLVED_RX.search(user) and not _NOT_RESOLVED_RX.search(user):
            return pos
    return None


def stall(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The conversation goes round in circles: more than ``max_turns`` turns before any sign of
    resolution, or one tool called with identical arguments ``repeated_tool_calls`` times."""
    out: list[Signal] = []
    limit = ctx.evidence_max_chars
    resolved_at = _resolution_turn(thread)
    unresolved = len(thread.turns) if resolved_at is None else resolved_at
    if unresolved > ctx.max_turns and thread.turns:
        crossing = thread.turns[ctx.max_turns]
        quote_src = thread.opening_request or crossing.user_text
        if quote_src.strip():
            excess = unresolved - ctx.max_turns
            out.append(_signal(thread, "stall", crossing, clip_quote(quote_src, 0, None, limit),
                               0.5 + 0.1 * excess, reason="too_many_turns", turns=len(thread.turns),
                               unresolved_turns=unresolved, max_turns=ctx.max_turns))
    counts: dict[tuple[str, str], int] = {}
    for turn in thread.turns:
        for call in _ordered_tools(turn):
            key = (call.name, _canonical_args(call.arguments))
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == ctx.repeated_tool_calls:
                quote_src = turn.user_text if turn.user_text.strip() else call.name
                out.append(_signal(thread, "stall", turn, clip_quote(quote_src, 0, None, limit), 0.8,
                                   reason="repeated_tool_call", tool=call.name,
                                   arguments=_jsonable_args(call.arguments), calls=counts[key]))
    return out


def _conversation_size(messages: Iterable[Message]) -> int:
    # User and assistant text only: tool results and empty tool-calling assistant messages are
    # often pruned on purpose, and system messages are not conversation.
    return sum(1 for m in messages if m.role in ("user", "assistant") and m.content.strip())


def context_loss(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent lost (part of) the conversation: a call's input went past the model's token
    budget, earlier messages were dropped from what the LLM saw, the agent asks again for an
    order number / email / phone the user already gave, or the user says "I already told you"."""
    out: list[Signal] = []
    limit = ctx.evidence_max_chars
    budget_hit: Signal | None = None
    dropped_hit: Signal | None = None
    budget_turns = dropped_turns = 0
    max_tokens = 0
    history: list[Message] = []  # user/assistant messages of the turns before the current one
    history_size = 0  # == _conversation_size(history), kept up to date instead of recounted
    given: dict[str, list[tuple[str, int]]] = {"id": [], "email": [], "phone": []}
    agent_asked_for: set[str] = set()
    budgets: dict[str | None, int] = {}  # context_budget() per model: one prefix scan per model

    def budget(model: str | None) -> int:
        if model not in budgets:
            budgets[model] = ctx.context_budget(model)
        return budgets[model]

    for turn in thread.turns:
        users = _user_messages(turn)
        # 1. Token budget.
        over = [c for c in turn.llm_calls
                if c.input_tokens is not None and c.input_tokens > budget(c.model)]
        if over:
            budget_turns += 1
            worst = max(over, key=lambda c: c.input_tokens or 0)
            max_tokens = max(max_tokens, worst.input_tokens or 0)
            if budget_hit is None:
                src = turn.user_text or worst.error or ""
                if src.strip():
                    budget_hit = _signal(thread, "context_loss", turn, clip_quote(src, 0, None, limit), 0.9,
                                         reason="token_budget", input_tokens=worst.input_tokens,
                                         budget=budget(worst.model), model=worst.model)
        # 2. Messages dropped from the LLM input.
        expected = history_size + len(users)
        for call in turn.llm_calls:
            if not call.input_messages:
                continue  # input not captured: nothing to compare
            got = _conversation_size(call.input_messages)
            if got < expected:
                dropped_turns += 1
                if dropped_hit is None:
                    seen = {m.content for m in call.input_messages}
                    lost = next((m for m in history if m.role in ("user", "assistant")
                                 and m.content.strip() and m.content not in seen), None)
                    src = lost.content if lost is not None else turn.user_text
                    if src.strip():
                        dropped_hit = _signal(thread, "context_loss", turn, clip_quote(src, 0, None, limit),
                                              0.6, reason="messages_dropped", expected=expected,
                                              sent=got, llm_call_id=call.id)
                break
        # 3. Entities the user gives, then the agent asking for them again.
        for msg in users:
            text = msg.content
            # Speed: an email needs an "@", an id 3 digits in a row, a phone number a digit; most
            # messages have none, and then the keyword regexes need not run (same result).
            if "@" in text:
                for v in _EMAIL_VALUE_RX.findall(text):
                    given["email"].append((v, turn.index))
            if _DIGIT_RX.search(text) is not None:
                if (_DIGITS3_RX.search(text) is not None
                        and ("id" in agent_asked_for or _ID_KEYWORD_RX.search(text))):
                    for v in _ID_VALUE_RX.findall(text):
                        if "@" not in v:
                            given["id"].append((v.lstrip("#").strip(), turn.index))
                # The "phone" group of the ask regex doubles as the keyword when a user gives one.
                if "phone" in agent_asked_for or any(
                        m.lastgroup == "phone" for m in _ASK_ENTITY_RX.finditer(text)):
                    for v in _PHONE_VALUE_RX.findall(text):
                        if sum(c.isdigit() for c in v) >= 7:
                            given["phone"].append((v.strip(), turn.index))
            m = _USER_SAYS_LOST_RX.search(text)
            if m and turn.index > 0:
                out.append(_signal(thread, "context_loss", turn, clip_quote(text, m.start(), m.end(), limit),
                                   0.6, reason="user_repeats"))
        agent_asked_for = set()
        for amsg in _assistant_messages(turn):
            reply = amsg.content
            for m in _ASK_ENTITY_RX.finditer(reply):
                kind = m.lastgroup or "id"
                sentence = _sentence(reply, m.start(), m.end(), 10_000)
                is_ask = sentence.rstrip().endswith(("?", "？")) or sentence.lstrip().startswith("¿") \
                    or _ASK_VERB_RX.search(sentence) is not None
                if not is_ask:
                    continue
                agent_asked_for.add(kind)
                if _RECHECK_RX.search(sentence) or _ADMITS_NOT_FOUND_RX.search(reply):
                    continue
                known = [(v, i) for v, i in given[kind] if v not in reply]
                if given[kind] and len(known) == len(given[kind]):
                    value, given_at = known[-1]
                    out.append(_signal(thread, "context_loss", turn,
                                       _sentence(reply, m.start(), m.end(), limit), 0.8,
                                       reason="asks_again", entity=kind, value=value,
                                       given_in_turn=given_at))
                    break
        added = [m for m in turn.messages if m.role in ("user", "assistant")]
        history.extend(added)
        history_size += _conversation_size(added)

    if budget_hit is not None:
        budget_hit.details.update(turns_affected=budget_turns, max_input_tokens=max_tokens)
        out.append(budget_hit)
    if dropped_hit is not None:
        dropped_hit.details["turns_affected"] = dropped_turns
        out.append(dropped_hit)
    out.sort(key=lambda s: s.turn_index if s.turn_index is not None else -1)
    return out


def latency_outlier(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """A turn much slower than the batch (``ctx.latency_threshold_ms``, see :func:`latency_threshold`)."""
    threshold = ctx.latency_threshold_ms
    if threshold is None:
        return []
    cut = max(threshold, ctx.latency_floor_ms)
    out: list[Signal] = []
    for turn in thread.turns:
        lat = turn_latency_ms(turn)
        if lat is None or lat <= cut:
            continue
        src = turn.user_text if turn.user_text.strip() else turn.reply_text
        if not src.strip():
            continue
        # Name the slowest step: the first thing to look at when diagnosing a slow turn.
        steps: list[tuple[float, str | None]] = [
            (c.latency_ms or 0.0, f"llm:{c.model or c.id}") for c in turn.llm_calls
        ]
        steps += [(t.latency_ms or 0.0, f"tool:{t.name}") for t in turn.tool_calls]
        slowest = max(steps, default=(0.0, None))
        # Twice the threshold is certain; just over it is a coin flip.
        out.append(_signal(thread, "latency_outlier", turn, clip_quote(src, 0, None, ctx.evidence_max_chars),
                           0.5 + 0.5 * min(1.0, math.log2(lat / cut)),
                           latency_ms=round(lat, 1), threshold_ms=round(cut, 1),
                           slowest_step=slowest[1]))
    return out
