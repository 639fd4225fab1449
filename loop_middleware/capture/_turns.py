"""The one rule that cuts a conversation into turns, shared by the callback handler and the
``create_agent`` middleware.

**Threads.** A thread is one conversation, keyed by the run's ``thread_id`` (LangGraph's
``configurable.thread_id``, copied into run metadata; for chains without LangGraph also
``session_id`` / ``conversation_id``, as ``RunnableWithMessageHistory`` uses). An invocation
with none of them is a thread of its own, never mixed with another.

**Turns.** A turn is one user request and everything the agent did until it answered:

1. A new top-level invocation starts a new turn, whether or not its input holds a user message.
   Runs nested inside it (nodes, subgraphs, ``Send`` branches, sub-agents called from tools,
   retries, fallbacks) belong to it.
2. A resume (``Command(resume=...)`` on a thread whose last turn was interrupted) continues the
   interrupted turn instead: the interrupt and the resume value are recorded on it, and its
   latency counts the agent's working time, not the time a human took to answer.
3. The turn's user text is the new user message(s) of its input: the trailing user messages,
   minus those an earlier turn of the thread already carried (a stream the client abandoned
   leaves its question in the checkpoint; it is not asked again by the next turn). At least the
   last message is always kept: a client that retries the same question asks it again.
4. A turn ends when its top-level run ends: with its reply, with the error that escaped it, as
   interrupted (rule 2), or as abandoned when the client stops reading a stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

__all__ = ["THREAD_KEYS", "ThreadMemory", "thread_id_of"]

THREAD_KEYS = ("thread_id", "session_id", "conversation_id")
"""Where a run's thread id is read from, in this order (run metadata, then ``configurable``)."""


def thread_id_of(*sources: Mapping[str, Any] | None) -> str | None:
    """The first thread id found in ``sources`` (metadata, configurable, ...), as a string."""
    for key in THREAD_KEYS:
        for src in sources:
            if src:
                value = src.get(key)
                if value is not None and value != "":
                    return str(value)
    return None


def _key(m: Mapping[str, Any]) -> str:
    mid = m.get("id")
    return f"id:{mid}" if mid else f"text:{m.get('content')}"


class ThreadMemory:
    """What earlier turns of each thread carried, so a message is never counted twice (rule 3).

    Used on the writer thread only (turn starts reach it in the order the host started them).
    Bounded: the least recently used threads are forgotten first.
    """

    def __init__(self, max_threads: int = 50_000, per_thread: int = 64) -> None:
        self._seen: OrderedDict[str, list[str]] = OrderedDict()
        self.max_threads = max_threads
        self.per_thread = per_thread

    def new_user_messages(self, thread_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` (the trailing user messages of a turn's input) minus those an earlier turn
        already carried, keeping at least the last one; remembers what it returns."""
        seen = self._seen.get(thread_id)
        out = messages
        if seen and len(messages) > 1:
            known = set(seen)
            i = 0
            while i < len(messages) - 1 and _key(messages[i]) in known:
                i += 1
            out = messages[i:]
        if out:
            keys = (seen or []) + [_key(m) for m in out]
            self._seen[thread_id] = keys[-self.per_thread :]
            self._seen.move_to_end(thread_id)
            while len(self._seen) > self.max_threads:
                self._seen.popitem(last=False)
        return out
