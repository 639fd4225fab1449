"""Optional: let an LLM name intents, place ambiguous threads, and summarise threads.

Extraction never needs an LLM: intents are discovered, named in words (a label from their own
most typical requests) and categorised offline. :class:`ExtractionLLM` only *improves* that output when the host configures a model:

(a) :meth:`ExtractionLLM.name_intent` names an intent from a sample of its threads' opening
    requests (at most ``max_examples`` per intent) -> :class:`IntentName` (2-6 word name, one of
    the configured categories, a one-line description); :func:`improve_intents` applies it to a
    list of intents and returns renamed copies with the **same ids**.
(b) :meth:`ExtractionLLM.classify_thread` places an ambiguous thread (close to no centroid)
    among the existing intents, or ``none``.
(c) :meth:`ExtractionLLM.summarize_thread` summarises a thread in one sentence.

Every answer is a pydantic model checked against the request (the category must be a configured
one, the intent id one of those offered): instructor re-asks the model with the validation error
(``max_retries`` re-asks). Cost control: a total budget of HTTP calls (``max_calls``, re-asks
included; transport-level retries are off in :meth:`ExtractionLLM.from_openai` so every call is
counted), a sample cap per intent, and a content-hash cache (the same model + the same input is
never sent twice; pass ``store=`` to keep it across runs in the store's meta table). On any error
(budget spent, endpoint down, answers that never validate) the method returns None, the reason is
logged and kept in :attr:`ExtractionLLM.errors`, and callers keep the offline result.

Usage::

    llm = ExtractionLLM.from_openai(base_url="http://localhost:8000/v1", api_key="...",
                                    model="gpt-4o-mini", store=store)
    result = extract(store)
    intents = improve_intents(result.intents, examples_by_intent(result, store), llm)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

import httpx
import instructor
import openai
from instructor.core.exceptions import InstructorError
from instructor.core.hooks import Hooks
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from ..errors import ConfigError
from ..types import Intent, Thread
from ._categories import DEFAULT_CATEGORIES, OTHER

__all__ = [
    "NONE_INTENT",
    "ExtractionLLM",
    "IntentChoice",
    "IntentName",
    "StoreCache",
    "ThreadSummary",
    "improve_intents",
]

log = logging.getLogger(__name__)

NONE_INTENT = "none"
"""What :class:`IntentChoice` answers when no offered intent fits."""

M = TypeVar("M", bound=BaseModel)


# --- answer models -------------------------------------------------------------------------------


def _context_list(info: ValidationInfo, key: str) -> list[str]:
    # The allowed values come with the request (validation context). Without them nothing can be
    # checked, and an unchecked category is exactly what these models exist to refuse.
    values = (info.context or {}).get(key)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"cannot check the answer: no {key} in the validation context")
    return [str(v) for v in values]


class IntentName(BaseModel):
    """What the LLM answers when naming an intent."""

    name: str = Field(min_length=3, max_length=80)
    """A short name, 2-6 words, in the customers' terms (e.g. "Card not arrived")."""
    category: str
    """Exactly one of the configured category names."""
    description: str = Field(min_length=10, max_length=300)
    """One sentence: what the customers in this intent want."""

    @field_validator("name")
    @classmethod
    def _two_to_six_words(cls, value: str) -> str:
        name = " ".join(value.split()).strip(" .\"'")
        n = len(name.split())
        if not 2 <= n <= 6:
            raise ValueError(f"the name must have 2 to 6 words, got {n}: {name!r}")
        return name

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str, info: ValidationInfo) -> str:
        allowed = _context_list(info, "categories")
        cat = value.strip()
        if cat not in allowed:
            raise ValueError(f"category {cat!r} is not one of: {', '.join(allowed)}")
        return cat

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())


class IntentChoice(BaseModel):
    """What the LLM answers when placing a thread among the known intents."""

    intent_id: str
    """The id of the best-fitting intent, copied exactly, or "none"."""

    @field_validator("intent_id")
    @classmethod
    def _offered(cls, value: str, info: ValidationInfo) -> str:
        allowed = _context_list(info, "intent_ids")
        choice = value.strip()
        if choice.lower() == NONE_INTENT:
            return NONE_INTENT
        if choice not in allowed:
            raise ValueError(f"intent_id {choice!r} is not one of the offered ids "
                             f"({', '.join(allowed)}) nor \"none\"")
        return choice


_SENTENCE_BREAK = re.compile(r"[.!?]\s+\S")


class ThreadSummary(BaseModel):
    """What the LLM answers when summarising a thread."""

    summary: str = Field(min_length=10, max_length=300)
    """One sentence: what the customer wanted and how the conversation ended."""

    @field_validator("summary")
    @classmethod
    def _one_sentence(cls, value: str) -> str:
        text = " ".join(value.split())
        if _SENTENCE_BREAK.search(text):
            raise ValueError("the summary must be ONE sentence (no sentence break inside)")
        return text


# --- cache ---------------------------------------------------------------------------------------


class StoreCache(MutableMapping[str, Any]):
    """A cache kept in the store's meta table (``<prefix><hash> -> answer``), so answers survive
    across runs and processes. Only successful answers are written."""

    def __init__(self, store: Any, prefix: str = "extract.llm.") -> None:
        self.store = store
        self.prefix = prefix

    def __getitem__(self, key: str) -> Any:
        value = self.store.get_meta(self.prefix + key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.store.set_meta(self.prefix + key, value)

    def __delitem__(self, key: str) -> None:
        # The store has no delete; a None value reads as missing.
        self.store.set_meta(self.prefix + key, None)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("StoreCache cannot be iterated")

    def __len__(self) -> int:
        raise TypeError("StoreCache has no length")


# --- prompts -------------------------------------------------------------------------------------

_NAME_SYSTEM = (
    "You name groups of customer-support conversations. You get sample opening requests of one "
    "group (and the name, most typical request and keyphrases found offline). Improve the "
    "offline name: answer with a short name of 2-6 words in the "
    "customers' terms (no ids, no quotes), the single best category from the list given, and a "
    "one-sentence description of what these customers want."
)
_CLASSIFY_SYSTEM = (
    "You route a customer-support conversation to one of the known intents. Answer with the "
    "intent_id of the best fit, copied exactly from the list, or \"none\" when no intent fits."
)
_SUMMARY_SYSTEM = (
    "You summarise customer-support conversations for a reviewer. Write ONE sentence (at most "
    "40 words): what the customer wanted and how the conversation ended (resolved, refused, "
    "escalated, abandoned, ...). No preamble."
)


class ExtractionLLM:
    """LLM improvements of extraction, each optional, cached, budgeted and safe to fail.

    Args:
        client: An ``instructor`` client (``instructor.from_openai(OpenAI(...),
            mode=instructor.Mode.JSON)``, or any other provider's) or a plain ``openai.OpenAI``
            client (wrapped in JSON mode).
        model: The model name sent with each request.
        categories: The business categories an intent may get (``name -> description``, or just
            names); default: :data:`~loop_middleware.extract._intents.DEFAULT_CATEGORIES` plus
            ``other``.
        max_retries: Re-asks after an invalid answer (at most ``max_retries + 1`` calls per
            request).
        max_calls: Total HTTP calls this object may make, re-asks included (the cost cap). When
            it is spent, methods return None without a request.
        max_examples: Opening requests shown per intent when naming it.
        max_chars: Characters kept per example / per transcript.
        cache: Where answers are kept by content hash (default: a dict, or the store's meta table
            when ``store`` is given).
        store: A :class:`~loop_middleware.store.Store` for a persistent cache.
    """

    def __init__(
        self,
        client: Any,
        *,
        model: str,
        categories: Mapping[str, str] | Sequence[str] | None = None,
        max_retries: int = 2,
        max_calls: int = 100,
        max_examples: int = 8,
        max_chars: int = 2000,
        cache: MutableMapping[str, Any] | None = None,
        store: Any = None,
    ) -> None:
        if isinstance(client, instructor.Instructor):
            self._client = client
        elif isinstance(client, openai.OpenAI):
            self._client = instructor.from_openai(client, mode=instructor.Mode.JSON)
        else:
            raise ConfigError("ExtractionLLM needs an instructor.Instructor or an openai.OpenAI "
                              f"client, got {type(client).__name__}")
        if not model:
            raise ConfigError("ExtractionLLM needs a model name")
        if max_retries < 0:
            raise ConfigError(f"ExtractionLLM max_retries must be >= 0, got {max_retries!r}")
        for name, value in (("max_calls", max_calls), ("max_examples", max_examples),
                            ("max_chars", max_chars)):
            if value < 1:
                raise ConfigError(f"ExtractionLLM {name} must be >= 1, got {value!r}")
        if categories is None:
            cats: dict[str, str] = {**DEFAULT_CATEGORIES, OTHER: "None of the above."}
        elif isinstance(categories, Mapping):
            cats = {str(k): str(v) for k, v in categories.items()}
        else:
            cats = {str(c): "" for c in categories}
        if not cats:
            raise ConfigError("ExtractionLLM needs at least one category")
        self.model = model
        self.categories = cats
        self.max_retries = max_retries
        self.max_calls = max_calls
        self.max_examples = max_examples
        self.max_chars = max_chars
        self.cache: MutableMapping[str, Any] = (
            cache if cache is not None else StoreCache(store) if store is not None else {}
        )
        self.calls = 0
        """HTTP calls made so far (re-asks included; cache hits make none)."""
        self.errors: list[str] = []
        """Why requests gave no answer (budget, endpoint errors, invalid answers), in order."""
        self.descriptions: dict[str, str] = {}
        """``intent id -> description`` written by :func:`improve_intents`."""
        self._failed: set[str] = set()

    @classmethod
    def from_openai(
        cls,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> ExtractionLLM:
        """Over an OpenAI-compatible endpoint, in instructor's JSON mode.

        The OpenAI client's own retries are turned off so that :attr:`max_calls` counts every
        HTTP call; re-asks on invalid answers are still done (``max_retries``).
        """
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        return cls(instructor.from_openai(client, mode=instructor.Mode.JSON), model=model, **kwargs)

    @property
    def calls_left(self) -> int:
        """HTTP calls still allowed by the budget."""
        return max(0, self.max_calls - self.calls)

    # --- the three tasks -------------------------------------------------------------------------

    def name_intent(self, intent: Intent, examples: Sequence[str]) -> IntentName | None:
        """Name ``intent`` from its threads' opening requests (sampled: at most
        ``max_examples``, the intent's most central examples first). None: keep the offline name."""
        sample = self.sample_examples(intent, examples)
        if not sample:
            return None
        lines = [f"Categories: {json.dumps(self.categories, ensure_ascii=False)}",
                 f"Offline name: {intent.name}",
                 f"Most typical request: {intent.typical_request or '-'}",
                 f"Offline keyphrases: {', '.join(intent.keyphrases[:8]) or '-'}",
                 f"Sample opening requests ({len(sample)}):"]
        lines += [f"- {s}" for s in sample]
        return self._ask("name", IntentName, _NAME_SYSTEM, "\n".join(lines),
                         {"categories": list(self.categories)})

    def classify_thread(self, text: str, intents: Sequence[Intent]) -> str | None:
        """The id of the intent ``text`` (a thread's opening request) belongs to, among
        ``intents``; None when the LLM says none fits or gives no valid answer."""
        text = text.strip()[: self.max_chars]
        if not text or not intents:
            return None
        catalogue = [{"intent_id": it.id, "name": it.name, "keyphrases": it.keyphrases[:5],
                      "examples": [e[:200] for e in it.examples[:2]]} for it in intents]
        prompt = (f"Known intents:\n{json.dumps(catalogue, ensure_ascii=False, indent=1)}\n\n"
                  f"Conversation opening request:\n{text}")
        choice = self._ask("classify", IntentChoice, _CLASSIFY_SYSTEM, prompt,
                           {"intent_ids": [it.id for it in intents]})
        if choice is None or choice.intent_id == NONE_INTENT:
            return None
        return choice.intent_id

    def summarize_thread(self, thread: Thread) -> str | None:
        """One sentence on what the customer wanted and how it ended (None on failure)."""
        lines: list[str] = []
        for turn in thread.turns:
            for m in turn.messages:
                if m.role in ("user", "assistant") and m.content.strip():
                    lines.append(f"{m.role}: {m.content.strip()[:500]}")
            for call in turn.tool_calls:
                if call.error:
                    lines.append(f"tool {call.name} failed: {call.error[:200]}")
        transcript = "\n".join(lines)[: self.max_chars]
        if not transcript:
            return None
        answer = self._ask("summary", ThreadSummary, _SUMMARY_SYSTEM, transcript, None)
        return None if answer is None else answer.summary

    # --- helpers ---------------------------------------------------------------------------------

    def sample_examples(self, intent: Intent, examples: Sequence[str]) -> list[str]:
        """At most ``max_examples`` distinct examples: the intent's central ones first, then a
        random sample of ``examples`` (seeded by the intent id, independent of their order)."""
        seen: dict[str, None] = {}
        for e in intent.examples:
            e = " ".join(e.split())[:300]
            if e:
                seen.setdefault(e, None)
        # Sorted before the seeded shuffle: the same set of examples in any order gives the same
        # sample, hence the same prompt and a cache hit.
        rest = sorted({" ".join(e.split())[:300] for e in examples if e.strip()} - set(seen))
        random.Random(intent.id).shuffle(rest)
        for e in rest:
            seen.setdefault(e, None)
        return list(seen)[: self.max_examples]

    def _ask(self, task: str, response_model: type[M], system: str, prompt: str,
             context: dict[str, Any] | None) -> M | None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        key = hashlib.sha256(json.dumps([self.model, task, response_model.__name__, messages,
                                         context], sort_keys=True).encode()).hexdigest()
        try:
            cached = self.cache.get(key)
        except Exception as exc:  # noqa: BLE001 - a broken cache must not break extraction
            log.warning("LLM cache read failed: %s", exc)
            cached = None
        if cached is not None:
            try:
                return response_model.model_validate(cached, context=context)
            except ValidationError:
                pass  # written under other settings (e.g. other categories): ask again
        if key in self._failed:
            return None
        if self.calls_left < 1:
            self._fail(key, task, f"budget of {self.max_calls} LLM calls spent")
            return None
        hooks = Hooks()
        hooks.on("completion:kwargs", self._count_call)
        try:
            answer = self._client.chat.completions.create(
                model=self.model, response_model=response_model,
                messages=messages,  # type: ignore[arg-type]  # plain role/content dicts
                # Never past the budget: fewer re-asks when few calls are left.
                max_retries=min(self.max_retries, self.calls_left - 1),
                context=context, hooks=hooks, temperature=0)
        except (InstructorError, openai.OpenAIError, httpx.HTTPError, ValidationError) as exc:
            self._fail(key, task, f"{type(exc).__name__}: {str(exc)[:300]}")
            return None
        if not isinstance(answer, response_model):
            self._fail(key, task, f"unexpected response type {type(answer).__name__}")
            return None
        try:
            self.cache[key] = answer.model_dump(mode="json")
        except Exception as exc:  # noqa: BLE001
            log.warning("LLM cache write failed: %s", exc)
        return answer

    def _count_call(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1

    def _fail(self, key: str, task: str, reason: str) -> None:
        # Failures are remembered for this object only: a later run may find the endpoint up.
        self._failed.add(key)
        self.errors.append(f"{task}: {reason}")
        log.warning("LLM %s gave no answer (%s); keeping the offline result", task, reason)
        return None


def improve_intents(
    intents: Sequence[Intent],
    examples_by_intent: Mapping[str, Sequence[str]],
    llm: ExtractionLLM,
) -> list[Intent]:
    """Renamed copies of ``intents`` (ids, sizes, keyphrases and examples unchanged).

    Each intent with examples (``examples_by_intent[intent.id]``, e.g. its threads' opening
    requests, or its own central examples) is named by ``llm``; a sub-intent keeps its parent's
    category. An intent the LLM could not name (budget, error) keeps its offline name and
    category. The LLM's descriptions are in ``llm.descriptions``.
    """
    renamed: dict[str, Intent] = {}
    # Parents first, so sub-intents can take their parent's (possibly new) category.
    order = sorted(range(len(intents)), key=lambda i: intents[i].parent_id is not None)
    result: list[Intent | None] = [None] * len(intents)
    for i in order:
        it = intents[i]
        examples = list(examples_by_intent.get(it.id, ()))
        named = llm.name_intent(it, examples) if (examples or it.examples) else None
        update: dict[str, Any] = {}
        if named is not None:
            update["name"] = named.name
            update["category"] = named.category
            llm.descriptions[it.id] = named.description
        parent = renamed.get(it.parent_id) if it.parent_id else None
        if parent is not None:
            update["category"] = parent.category
        new = it.model_copy(update=update, deep=True)
        renamed[it.id] = new
        result[i] = new
    return [r for r in result if r is not None]
