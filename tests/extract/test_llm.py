"""The optional LLM improvements of extraction, through a real ``openai.OpenAI`` client and
instructor, against a loopback chat-completions server replaying recorded responses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import instructor
import openai
import pytest
from pydantic import ValidationError

from loop_middleware.errors import ConfigError
from loop_middleware.extract._llm import (
    ExtractionLLM,
    IntentChoice,
    IntentName,
    StoreCache,
    improve_intents,
)
from loop_middleware.store import Store
from loop_middleware.types import Intent, Message, Thread, ToolCall, Turn
from tests._llm_server import FakeChatServer

CATEGORIES = ["billing_refund", "how_to", "bug_report", "other"]

CARD = Intent(id="intent-card", name="card / arrive / still", category="other",
              keyphrases=["card", "arrive", "still"],
              typical_request="My card still hasn't arrived.",
              examples=["My card still hasn't arrived.", "When will my card arrive?"], size=40)
CARD_SUB = Intent(id="intent-card-sub", name="new card / weeks", category="other",
                  parent_id="intent-card", examples=["It has been two weeks, no card."], size=12)
REFUND = Intent(id="intent-refund", name="refund / money / back", category="other",
                keyphrases=["refund"], examples=["I want my money back."], size=30)

CARD_OPENINGS = [f"My new card has not arrived yet, it has been {n} days." for n in range(3, 23)]


def name_answer(name: str, category: str, description: str = "Customers waiting for a card "
                "that has not been delivered.") -> str:
    return json.dumps({"name": name, "category": category, "description": description})


GOOD_NAME = name_answer("Card not arrived", "how_to")
SERVER_ERROR = {"status": 500, "body": {"error": {"message": "boom", "type": "server_error"}}}


def llm_for(server: FakeChatServer, **kw: object) -> ExtractionLLM:
    # max_retries=0 on the OpenAI client: its transport retries would hide what we count.
    client = openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    kw.setdefault("categories", CATEGORIES)
    return ExtractionLLM(instructor.from_openai(client, mode=instructor.Mode.JSON),
                         model="fake-model", **kw)  # type: ignore[arg-type]


def user_prompt(request: dict[str, object]) -> str:
    messages = request["messages"]
    assert isinstance(messages, list)
    return str(messages[1]["content"])


# --- (a) naming ----------------------------------------------------------------------------------


def test_names_an_intent_from_a_capped_sample_of_openings() -> None:
    with FakeChatServer([GOOD_NAME]) as server:
        llm = llm_for(server, max_examples=5)
        named = llm.name_intent(CARD, CARD_OPENINGS)
    assert named is not None
    assert (named.name, named.category) == ("Card not arrived", "how_to")
    assert named.description == "Customers waiting for a card that has not been delivered."
    assert len(server.requests) == 1 and llm.calls == 1
    sent = user_prompt(server.requests[0])
    # At most 5 examples: the intent's 2 central ones first, then 3 sampled openings.
    example_lines = [line for line in sent.splitlines() if line.startswith("- ")]
    assert len(example_lines) == 5
    assert example_lines[:2] == ["- My card still hasn't arrived.", "- When will my card arrive?"]
    assert all(line[2:] in CARD_OPENINGS for line in example_lines[2:])
    assert "billing_refund" in sent and "card, arrive, still" in sent
    # The LLM improves the offline name, seeing it and the most typical request.
    assert "Offline name: card / arrive / still" in sent
    assert "Most typical request: My card still hasn't arrived." in sent


def test_invalid_json_then_invalid_category_are_re_asked_until_valid() -> None:
    bad_category = name_answer("Card not arrived", "shipping")
    with FakeChatServer(["this is not json", bad_category, GOOD_NAME]) as server:
        llm = llm_for(server, max_retries=2)
        named = llm.name_intent(CARD, CARD_OPENINGS)
    assert named is not None and named.category == "how_to"
    assert len(server.requests) == 3 and llm.calls == 3
    # instructor sent our validator's message back to the model on the last re-ask.
    assert "is not one of: billing_refund, how_to, bug_report, other" in json.dumps(
        server.requests[2]["messages"])
    assert llm.errors == []


def test_names_outside_two_to_six_words_are_refused() -> None:
    ctx = {"categories": CATEGORIES}
    with pytest.raises(ValidationError, match="2 to 6 words"):
        IntentName.model_validate({"name": "Card", "category": "how_to",
                                   "description": "Customers waiting for a card."}, context=ctx)
    with pytest.raises(ValidationError, match="no categories"):
        IntentName.model_validate({"name": "Card not arrived", "category": "how_to",
                                   "description": "Customers waiting for a card."})
    ok = IntentName.model_validate({"name": '  "Card   not arrived."', "category": "how_to",
                                    "description": "Customers\nwaiting for a card."}, context=ctx)
    assert ok.name == "Card not arrived" and ok.description == "Customers waiting for a card."


def test_retries_exhausted_fall_back_with_the_reason_logged(caplog: pytest.LogCaptureFixture) -> None:
    with FakeChatServer(["nope", "still nope"]) as server, caplog.at_level(logging.WARNING):
        llm = llm_for(server, max_retries=1)
        assert llm.name_intent(CARD, CARD_OPENINGS) is None
        # The same input is not re-sent in this run.
        assert llm.name_intent(CARD, CARD_OPENINGS) is None
    assert len(server.requests) == 2
    assert len(llm.errors) == 1 and llm.errors[0].startswith("name:")
    assert "keeping the offline result" in caplog.text


# --- cache and budget ----------------------------------------------------------------------------


def test_the_same_input_is_answered_from_the_cache() -> None:
    with FakeChatServer([GOOD_NAME, GOOD_NAME]) as server:
        llm = llm_for(server)
        first = llm.name_intent(CARD, CARD_OPENINGS)
        again = llm.name_intent(CARD, list(reversed(CARD_OPENINGS)))  # same sample, other order
        assert len(server.requests) == 1
        assert again is not None and first is not None and again.model_dump() == first.model_dump()
        llm.name_intent(REFUND, ["Refund my last payment please."])  # new input: new call
        assert len(server.requests) == 2 and llm.calls == 2


def test_store_backed_cache_survives_a_new_client(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    with FakeChatServer([GOOD_NAME]) as server:
        first = llm_for(server, store=store).name_intent(CARD, CARD_OPENINGS)
        fresh = llm_for(server, store=store)
        again = fresh.name_intent(CARD, CARD_OPENINGS)
    assert len(server.requests) == 1 and fresh.calls == 0
    assert first is not None and again is not None
    assert again.model_dump() == first.model_dump()
    cache = StoreCache(store)
    with pytest.raises(KeyError):
        cache["missing"]
    store.close()


def test_a_cached_answer_invalid_under_new_settings_is_asked_again() -> None:
    cache: dict[str, object] = {}
    with FakeChatServer([GOOD_NAME]) as server:
        llm_for(server, cache=cache).name_intent(CARD, CARD_OPENINGS)
    assert len(cache) == 1
    # Same prompt key, but the stored answer's category is no longer allowed.
    key = next(iter(cache))
    cache[key] = json.loads(name_answer("Card not arrived", "shipping"))
    with FakeChatServer([GOOD_NAME]) as server:
        out = llm_for(server, cache=cache).name_intent(CARD, CARD_OPENINGS)
    assert len(server.requests) == 1 and out is not None and out.category == "how_to"


def test_the_call_budget_caps_requests_including_re_asks() -> None:
    with FakeChatServer(["not json", GOOD_NAME, GOOD_NAME, GOOD_NAME]) as server:
        llm = llm_for(server, max_calls=3, max_retries=2)
        a = llm.name_intent(CARD, CARD_OPENINGS)  # 2 calls (one re-ask)
        b = llm.name_intent(REFUND, ["Refund my last payment please."])  # the last call
        c = llm.name_intent(CARD_SUB, ["Three weeks and still no card."])  # over budget
    assert a is not None and b is not None and c is None
    assert len(server.requests) == 3 and llm.calls == 3 and llm.calls_left == 0
    assert llm.errors == ["name: budget of 3 LLM calls spent"]


def test_re_asks_shrink_to_the_calls_left() -> None:
    with FakeChatServer(["not json", "not json", GOOD_NAME]) as server:
        llm = llm_for(server, max_calls=2, max_retries=5)
        assert llm.name_intent(CARD, CARD_OPENINGS) is None
    assert len(server.requests) == 2 and llm.calls == 2


def test_server_errors_fall_back() -> None:
    with FakeChatServer([SERVER_ERROR]) as server:
        llm = llm_for(server, max_retries=0)
        assert llm.name_intent(CARD, CARD_OPENINGS) is None
        assert llm.classify_thread("Where is my card?", [CARD, REFUND]) is None
    assert len(server.requests) == 2  # the second got the server's "nothing left" 500
    assert all("InternalServerError" in e or "500" in e for e in llm.errors)


# --- (b) classification, (c) summary -------------------------------------------------------------


def test_classifies_an_ambiguous_thread_among_the_offered_intents() -> None:
    answers = [json.dumps({"intent_id": "intent-pizza"}), json.dumps({"intent_id": "intent-refund"}),
               json.dumps({"intent_id": "None"})]
    with FakeChatServer(answers) as server:
        llm = llm_for(server, max_retries=1)
        got = llm.classify_thread("Can I get my money back for a double charge?", [CARD, REFUND])
        none = llm.classify_thread("Do you sell pizza?", [CARD, REFUND])
    assert got == "intent-refund" and none is None
    assert len(server.requests) == 3
    assert "is not one of the offered ids" in json.dumps(server.requests[1]["messages"])
    sent = user_prompt(server.requests[0])
    assert "intent-card" in sent and "double charge" in sent
    with pytest.raises(ValidationError):
        IntentChoice.model_validate({"intent_id": "intent-card"})  # no context: unchecked


def test_summarises_a_thread_in_one_sentence() -> None:
    thread = Thread(thread_id="t1", turns=[Turn(
        id="t1-0", thread_id="t1", index=0,
        messages=[Message(role="system", content="SECRET SYSTEM PROMPT"),
                  Message(role="user", content="My card never arrived."),
                  Message(role="assistant", content="Sorry, something went wrong.")],
        tool_calls=[ToolCall(id="c1", name="get_card_status", error="TimeoutError: timed out")])])
    two = json.dumps({"summary": "The customer asked about a card. The tool failed."})
    one = json.dumps({"summary": "The customer's missing card could not be checked because the "
                                 "card-status tool timed out."})
    with FakeChatServer([two, one]) as server:
        summary = llm_for(server, max_retries=1).summarize_thread(thread)
    assert summary is not None and summary.startswith("The customer's missing card")
    sent = user_prompt(server.requests[0])
    assert "user: My card never arrived." in sent and "tool get_card_status failed" in sent
    assert "SECRET SYSTEM PROMPT" not in sent
    assert "ONE sentence" in json.dumps(server.requests[1]["messages"])


# --- improve_intents -----------------------------------------------------------------------------


def test_improve_intents_renames_copies_and_keeps_ids() -> None:
    # Parents are named first (card, refund), then the sub-intent.
    answers = [GOOD_NAME, SERVER_ERROR, name_answer("Card delayed weeks", "bug_report")]
    intents = [CARD_SUB, CARD, REFUND]  # a sub-intent before its parent: order must not matter
    examples = {"intent-card": CARD_OPENINGS, "intent-card-sub": ["Three weeks, no card."],
                "intent-refund": ["Refund my last payment please."]}
    with FakeChatServer(answers) as server:
        llm = llm_for(server, max_retries=0)
        out = improve_intents(intents, examples, llm)
    assert [i.id for i in out] == ["intent-card-sub", "intent-card", "intent-refund"]
    sub, card, refund = out
    assert card.name == "Card not arrived" and card.category == "how_to"
    # The sub-intent gets its own name but its parent's category.
    assert sub.name == "Card delayed weeks" and sub.category == "how_to"
    assert sub.parent_id == "intent-card" and sub.size == 12
    # The endpoint failed for the refund intent: offline name and category kept.
    assert refund == REFUND
    assert llm.descriptions["intent-card"].startswith("Customers waiting")
    assert CARD.name == "card / arrive / still"  # the inputs were not touched
    assert len(server.requests) == 3


def test_constructor_checks() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client())
    assert isinstance(ExtractionLLM(client, model="m")._client, instructor.Instructor)
    assert "other" in ExtractionLLM(client, model="m").categories
    with pytest.raises(ConfigError):
        ExtractionLLM(object(), model="m")
    with pytest.raises(ConfigError, match="max_calls"):
        ExtractionLLM(client, model="m", max_calls=0)
    with pytest.raises(ConfigError, match="max_retries"):
        ExtractionLLM(client, model="m", max_retries=-1)
    with pytest.raises(ConfigError, match="category"):
        ExtractionLLM(client, model="m", categories=[])
    client.close()
    llm = ExtractionLLM.from_openai(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    assert llm.calls_left == 100
