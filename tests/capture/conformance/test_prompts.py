"""Conformance: the exact prompt version of every LLM call, through templates, explicit
metadata, hub metadata, ambiguous prompts and unregistered text (item 5 of the issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.prompts import ChatPromptTemplate

from loop_middleware import load_prompt
from loop_middleware.prompts import sha256_text, version_of
from tests._fakes import reply
from tests.capture.conformance._host import Capture, Host, check_turn

BASE = "You are the support agent of {company}. Be brief and kind."
EXTENDED = BASE + " Always offer the refund policy link when asked about refunds."
JSON_REPLY = 'You classify tickets for {company}. Reply only with JSON like {{"label": "<label>"}}.'


def _write(tmp: Path, name: str, text: str) -> Path:
    f = tmp / name
    f.write_text(text)
    return f


def _run(cap: Capture, host: Host, template: Any, values: dict[str, Any], key: str,
         thread: str, answer: str) -> None:
    chain = template | host.model(reply(answer))
    with host.invocation(key):
        chain.invoke(values, cap.config(thread))


def test_two_registered_templates_each_call_gets_its_own(sqlite_url: str, tmp_path: Path) -> None:
    """The second prompt's filled text contains the first's: it must still be the second's."""
    base = load_prompt(_write(tmp_path, "base.md", BASE))
    ext = load_prompt(_write(tmp_path, "extended.md", EXTENDED))
    cap, host = Capture("handler", sqlite_url), Host()
    for pv, key in ((base, "b"), (ext, "e")):
        t = ChatPromptTemplate([("system", pv.text), ("human", "{q}")])
        _run(cap, host, t, {"company": "Acme", "q": f"hi {key}"}, key, f"t-{key}", "hello")
    threads = cap.threads()
    check_turn(threads["t-b"].turns[0], host, "b", user="hi b", reply="hello", prompt_shas=[base.sha256])
    check_turn(threads["t-e"].turns[0], host, "e", user="hi e", reply="hello", prompt_shas=[ext.sha256])
    assert threads["t-e"].turns[0].llm_calls[0].prompt_version.path == str(tmp_path / "extended.md")  # type: ignore[union-attr]


def test_json_reply_template_with_escaped_braces(sqlite_url: str, tmp_path: Path) -> None:
    pv = load_prompt(_write(tmp_path, "classify.md", JSON_REPLY))
    cap, host = Capture("handler", sqlite_url), Host()
    _run(cap, host, ChatPromptTemplate([("system", pv.text), ("human", "{q}")]),
         {"company": "Acme", "q": "my card broke"}, "j", "json", '{"label": "bug"}')
    call = cap.threads()["json"].turns[0].llm_calls[0]
    assert call.input_messages[0].content == 'You classify tickets for Acme. Reply only with JSON like {"label": "<label>"}.'
    assert call.prompt_version is not None
    assert (call.prompt_version.sha256, call.prompt_version.name) == (pv.sha256, "classify")


def test_as_template_carries_the_version_without_matching(sqlite_url: str, tmp_path: Path) -> None:
    """``as_template()``: the version is explicit (metadata), even for a prompt made only of
    variables, which text matching never recognises."""
    pv = load_prompt(_write(tmp_path, "persona.md", "{persona}\n\n{rules}"))
    cap, host = Capture("handler", sqlite_url), Host()
    t = pv.as_template(("human", "{q}"))
    values = {"persona": "You are Max.", "rules": "Never share card numbers.", "q": "hi", "messages": []}
    _run(cap, host, t, values, "x", "explicit", "hello")
    call = cap.threads()["explicit"].turns[0].llm_calls[0]
    assert call.prompt_version is not None and call.prompt_version.sha256 == pv.sha256
    assert call.prompt_version.path == str(tmp_path / "persona.md")
    # The same text with no template run behind it is not guessed: the hash of what was sent.
    sent = "You are Max.\n\nNever share card numbers."
    assert version_of(sent)[0].sha256 == sha256_text(sent)


def test_hub_metadata_names_the_prompt_and_its_commit(sqlite_url: str) -> None:
    cap, host = Capture("handler", sqlite_url), Host()
    t = ChatPromptTemplate([("system", "You answer questions about {topic} only."), ("human", "{q}")],
                           metadata={"lc_hub_owner": "acme", "lc_hub_repo": "support-prompt",
                                     "lc_hub_commit_hash": "a1b2c3d4"})
    _run(cap, host, t, {"topic": "billing", "q": "hi"}, "h", "hub", "hello")
    pv = cap.threads()["hub"].turns[0].llm_calls[0].prompt_version
    assert pv is not None
    assert (pv.name, pv.git_commit, pv.sha256) == (
        "acme/support-prompt", "a1b2c3d4", sha256_text("You answer questions about {topic} only."))


def test_a_tie_is_resolved_by_the_rendered_template_or_not_guessed(sqlite_url: str, tmp_path: Path) -> None:
    """Two registered templates with the same fixed text but different variable names: the one
    the host rendered wins; from text alone it is a tie, so the exact text's hash is kept."""
    a = load_prompt(_write(tmp_path, "a.md", "Help the customer of {company} with their order today."))
    b = load_prompt(_write(tmp_path, "b.md", "Help the customer of {brand} with their order today."))
    cap, host = Capture("handler", sqlite_url), Host()
    _run(cap, host, ChatPromptTemplate([("system", b.text), ("human", "{q}")]),
         {"brand": "Acme", "q": "hi"}, "t", "tie", "hello")
    pv = cap.threads()["tie"].turns[0].llm_calls[0].prompt_version
    assert pv is not None and pv.sha256 == b.sha256
    sent = "Help the customer of Acme with their order today."
    assert [v.sha256 for v in version_of(sent)] == [sha256_text(sent)]
    assert a.sha256 != b.sha256


@pytest.mark.parametrize("sent, expect", [
    # A registered prompt inside a longer system message: recognised (its whole text is there).
    ("Today is Monday.\n\nYou are the support agent of Acme. Be brief and kind.", "base"),
    # A near miss (one word changed in the fixed text): never the neighbour's version.
    ("You are the sales agent of Acme. Be brief and kind.", None),
])
def test_text_matching_is_exact_or_the_hash_of_what_was_sent(tmp_path: Path, sent: str, expect: str | None) -> None:
    base = load_prompt(_write(tmp_path, "base.md", BASE))
    found = version_of(sent)
    if expect == "base":
        assert [v.sha256 for v in found] == [base.sha256]
    else:
        assert [v.sha256 for v in found] == [sha256_text(sent)] and found[0].path is None


def test_two_prompt_files_composed_in_one_system_message(tmp_path: Path) -> None:
    persona = load_prompt(_write(tmp_path, "persona.md", "You are Ava, Acme's assistant."))
    policy = load_prompt(_write(tmp_path, "policy.md", "Refunds are possible within the window in the policy."))
    found = version_of(f"{persona.text}\n\n{policy.text}")
    assert [v.sha256 for v in found] == [persona.sha256, policy.sha256]
