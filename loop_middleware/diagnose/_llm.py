"""Optional: let an LLM write the root-cause sentence of a diagnosis, with checked quotes.

The offline diagnosis is always computed first; :class:`DiagnosisWriter` only *rewrites* its
summary from a few sample threads. The LLM must back its sentence with quotes, and every quote
must appear **verbatim** in the stored thread it names: a pydantic validator checks that against
the thread texts passed as validation context, and instructor re-asks the model with the
validation error on failure (``max_retries`` re-asks). When retries are exhausted, the API fails or the
client is misconfigured, the LLM output is dropped and the offline summary is kept (the reason is
recorded in ``details["llm_error"]``): an optional improvement never breaks the offline path.

Cost control: at most ``max_threads`` sample threads (each cut to ``max_chars_per_thread``) per
diagnosis, at most ``max_diagnoses`` diagnoses per run, and a content-hash cache: the same
model + the same rendered input is never sent twice (failures are cached too).

Usage::

    writer = DiagnosisWriter.from_openai(base_url="http://localhost:8000/v1", api_key="...",
                                         model="gpt-4o-mini")
    diagnoses = diagnose(threads, signals, intents, assignments, llm=writer)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import httpx
import instructor
import openai
from instructor.core.exceptions import InstructorError
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from ..errors import ConfigError
from ..types import Diagnosis, Evidence, Thread
from ._hypotheses import find_quote

__all__ = ["DiagnosisWriter", "Quote", "RootCause", "thread_texts"]

log = logging.getLogger(__name__)


def thread_texts(thread: Thread) -> list[str]:
    """The stored texts of a thread a quote may be taken from (non-system messages, tool results
    and errors, LLM outputs)."""
    out: list[str] = []
    for turn in thread.turns:
        out.extend(m.content for m in turn.messages if m.role != "system" and m.content)
        for call in turn.tool_calls:
            out.extend(x for x in (call.result, call.error) if x)
        for llm in turn.llm_calls:
            out.extend(m.content for m in llm.output_messages if m.content)
    return out


class Quote(BaseModel):
    """A verbatim quote from one of the sample threads."""

    thread_id: str
    """The id of the thread the text is copied from."""
    text: str
    """The text, copied exactly (character for character) from one message of that thread."""


class RootCause(BaseModel):
    """What the LLM must answer: one root-cause sentence and the quotes that back it."""

    root_cause: str = Field(min_length=10)
    """One sentence naming the root cause, keeping the numbers given."""
    quotes: list[Quote] = Field(min_length=1, max_length=5)
    """1-5 quotes copied exactly from the sample threads."""

    @field_validator("quotes")
    @classmethod
    def _verbatim(cls, quotes: list[Quote], info: ValidationInfo) -> list[Quote]:
        # The context carries {"thread_texts": {thread_id: [text, ...]}}. Without it no quote can
        # be checked, and an unchecked quote is exactly what this model exists to refuse.
        texts = (info.context or {}).get("thread_texts")
        if not isinstance(texts, Mapping):
            raise ValueError("cannot check quotes: no thread texts in the validation context")
        problems = []
        for q in quotes:
            pieces = texts.get(q.thread_id)
            if pieces is None:
                problems.append(f"thread_id {q.thread_id!r} is not one of the sample threads "
                                f"({', '.join(sorted(texts))})")
            elif not q.text.strip() or not any(q.text in p for p in pieces):
                problems.append(f"the quote {q.text!r} does not appear verbatim in thread "
                                f"{q.thread_id!r}")
        if problems:
            raise ValueError("; ".join(problems) + ". Copy quotes exactly from the message texts "
                             "(without the 'user:'/'assistant:' prefixes), or leave them out.")
        return quotes


_SYSTEM = (
    "You explain why an AI customer-support agent fails on one kind of request. You get the "
    "statistics of the failure, an offline hypothesis, and transcripts of sample conversations. "
    "Write ONE sentence naming the most likely root cause in terms a prompt engineer can act on, "
    "keeping the key numbers (sessions affected and share of sessions). Back it with 1-3 quotes "
    "copied EXACTLY, character for character, from the message texts of the transcripts, each "
    "with its thread_id. Never paraphrase inside a quote."
)


class DiagnosisWriter:
    """Rewrites a diagnosis' root-cause sentence with an LLM, keeping only verifiable output.

    Args:
        client: An ``instructor`` client (``instructor.from_openai(OpenAI(...),
            mode=instructor.Mode.JSON)``) or a plain ``openai.OpenAI`` client (wrapped in JSON mode).
        model: The model name sent with each request.
        max_retries: Re-asks after the first attempt (instructor sends the validation error back
            to the model), so at most ``max_retries + 1`` requests per diagnosis.
        max_threads: Sample threads shown per diagnosis (the cost cap).
        max_chars_per_thread: Transcript characters per sample thread.
        max_diagnoses: Diagnoses rewritten per :meth:`write_all` call (the highest-impact ones).
        cache: Where results are kept by content hash (a dict by default; pass a shared mapping
            to keep it across runs).
    """

    def __init__(
        self,
        client: Any,
        *,
        model: str,
        max_retries: int = 2,
        max_threads: int = 3,
        max_chars_per_thread: int = 4000,
        max_diagnoses: int = 10,
        cache: MutableMapping[str, RootCause | None] | None = None,
    ) -> None:
        if isinstance(client, instructor.Instructor):
            self._client = client
        elif isinstance(client, openai.OpenAI):
            self._client = instructor.from_openai(client, mode=instructor.Mode.JSON)
        else:
            raise ConfigError("DiagnosisWriter needs an instructor.Instructor or an openai.OpenAI "
                              f"client, got {type(client).__name__}")
        if max_retries < 0:
            raise ConfigError(f"DiagnosisWriter max_retries must be >= 0, got {max_retries!r}")
        for name, value in (("max_threads", max_threads),
                            ("max_chars_per_thread", max_chars_per_thread),
                            ("max_diagnoses", max_diagnoses)):
            if value < 1:
                raise ConfigError(f"DiagnosisWriter {name} must be >= 1, got {value!r}")
        self.model = model
        self.max_retries = max_retries
        self.max_threads = max_threads
        self.max_chars_per_thread = max_chars_per_thread
        self.max_diagnoses = max_diagnoses
        self.cache: MutableMapping[str, RootCause | None] = {} if cache is None else cache
        self.requests = 0
        """LLM requests started (each makes up to ``max_retries + 1`` HTTP calls); cache hits
        do not count."""

    @classmethod
    def from_openai(cls, *, base_url: str | None = None, api_key: str | None = None, model: str,
                    **kwargs: Any) -> DiagnosisWriter:
        """A writer over an OpenAI-compatible endpoint, in instructor's JSON mode."""
        client = openai.OpenAI(base_url=base_url, api_key=api_key)
        return cls(instructor.from_openai(client, mode=instructor.Mode.JSON), model=model, **kwargs)

    # --- public -----------------------------------------------------------------------------------

    def write_all(self, diagnoses: Sequence[Diagnosis], threads: Mapping[str, Thread]) -> list[Diagnosis]:
        """:meth:`write` for the first ``max_diagnoses`` diagnoses; the rest are kept as they are."""
        return [self.write(d, threads) if i < self.max_diagnoses else d for i, d in enumerate(diagnoses)]

    def write(self, diagnosis: Diagnosis, threads: Mapping[str, Thread]) -> Diagnosis:
        """A copy of ``diagnosis`` with the LLM's root-cause sentence and quotes, or the diagnosis
        unchanged (plus ``details["llm_error"]``) when the LLM gives no valid answer."""
        sample = self._sample(diagnosis, threads)
        if not sample:
            return diagnosis
        messages = [{"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": self._render(diagnosis, sample)}]
        key = hashlib.sha256(json.dumps([self.model, messages], sort_keys=True).encode()).hexdigest()
        error: str | None = None
        if key in self.cache:
            result = self.cache[key]
            if result is None:
                error = "cached failure"
        else:
            self.requests += 1
            result, error = self._ask(messages, sample)
            self.cache[key] = result
        if result is None:
            log.warning("LLM root cause for %s dropped (%s); keeping the offline summary",
                        diagnosis.id, error)
            return diagnosis.model_copy(update={"details": {**diagnosis.details,
                                                           "llm_error": error}}, deep=True)
        return self._apply(diagnosis, result, sample)

    # --- internals --------------------------------------------------------------------------------

    def _ask(self, messages: list[dict[str, str]], sample: Sequence[Thread]
             ) -> tuple[RootCause | None, str | None]:
        context = {"thread_texts": {t.thread_id: thread_texts(t) for t in sample}}
        try:
            result = self._client.chat.completions.create(
                model=self.model, response_model=RootCause,
                messages=messages,  # type: ignore[arg-type]  # plain role/content dicts
                max_retries=self.max_retries, context=context, temperature=0)
        except (InstructorError, openai.OpenAIError, httpx.HTTPError, ValidationError) as exc:
            # Retries exhausted, the endpoint down, or an answer that never fit the model: the
            # offline summary stands.
            return None, f"{type(exc).__name__}: {str(exc)[:300]}"
        if not isinstance(result, RootCause):
            return None, f"unexpected response type {type(result).__name__}"
        return result, None

    def _sample(self, diagnosis: Diagnosis, threads: Mapping[str, Thread]) -> list[Thread]:
        """Evidence threads first, then other affected threads, up to ``max_threads``."""
        ids: list[str] = []
        for tid in [*(e.thread_id for e in diagnosis.evidence),
                    *diagnosis.details.get("affected_thread_ids", [])]:
            if tid in threads and tid not in ids:
                ids.append(tid)
        return [threads[tid] for tid in ids[: self.max_threads]]

    def _render(self, d: Diagnosis, sample: Sequence[Thread]) -> str:
        facts = {
            "intent": d.intent_name, "signal": d.signal, "signals": d.details.get("signals", [d.signal]),
            "offline_hypothesis": d.failure_mode, "offline_summary": d.summary,
            "sessions_affected": d.sessions_affected,
            "share_of_sessions": f"{100 * d.share_of_sessions:.1f}%",
            "rate_in_intent": f"{100 * d.rate_in_intent:.1f}%",
            "rate_elsewhere": f"{100 * d.rate_elsewhere:.1f}%",
            "prompt_path": d.prompt_path,
            "details": {k: v for k, v in d.details.items()
                        if k not in ("cells", "by_signal", "affected_thread_ids", "diff")},
        }
        if "diff" in d.details:
            facts["prompt_diff"] = str(d.details["diff"])[:1500]
        parts = ["Facts:", json.dumps(facts, ensure_ascii=False, default=str, indent=1), ""]
        for t in sample:
            lines = [f"### thread_id: {t.thread_id}"]
            for turn in t.turns:
                for m in turn.messages:
                    if m.role != "system" and m.content:
                        lines.append(f"[turn {turn.index}] {m.role}: {m.content[:800]}")
                for call in turn.tool_calls:
                    out = call.error or call.result or ""
                    lines.append(f"[turn {turn.index}] tool {call.name} -> {out[:400]}")
            text = "\n".join(lines)
            parts.append(text[: self.max_chars_per_thread])
        return "\n".join(parts)

    def _apply(self, d: Diagnosis, result: RootCause, sample: Sequence[Thread]) -> Diagnosis:
        by_id = {t.thread_id: t for t in sample}
        quotes: list[Evidence] = []
        for q in result.quotes:
            _, turn = find_quote(by_id[q.thread_id], q.text)
            quotes.append(Evidence(thread_id=q.thread_id, turn_index=turn, quote=q.text))
        merged: list[Evidence] = []
        for ev in [*quotes, *d.evidence]:
            if all((ev.thread_id, ev.quote) != (m.thread_id, m.quote) for m in merged):
                merged.append(ev)
        sentence = result.root_cause.strip()
        share = f"{100 * d.share_of_sessions:.1f}%"
        if share not in sentence:
            # The numbers are the point of a diagnosis: put them back if the model dropped them.
            sentence = f"{sentence.rstrip('.')} ({d.sessions_affected} sessions, {share} of sessions)."
        return d.model_copy(update={
            "summary": sentence,
            "evidence": merged[:5],
            "details": {**d.details, "offline_summary": d.summary, "llm_model": self.model},
        }, deep=True)
