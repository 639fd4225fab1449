"""The causes the Kestrel Cloud example plants, diagnosed by their mechanism on real simulated
conversations (``examples/devplatform_agent``), and negative controls that get none of them.

* tool output cut by the harness (``max_tool_output_chars: 300``) -> ``truncated_tool_output``
  with the cut length the setting has;
* the prompt's ``## Plans and upgrades`` instruction -> ``prompt_instruction`` naming that
  section (not a coverage gap: the prompt has guidance on the topic, and it is what fails);
* the prompt's ``## Language`` line -> ``forced_language`` quoting the sentence.

Threads are grouped by their true intent (the simulator's ground truth), so no embedder runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loop_middleware.diagnose._diagnose import diagnose
from loop_middleware.diagnose._hypotheses import FAILURE_MODES, find_quote, language_instruction
from loop_middleware.types import Diagnosis
from tests.patch._devplatform import Simulated, host_repo, simulate_host

NEW_MODES = ("truncated_tool_output", "forced_language", "prompt_instruction")
UPSELL = ("- When a developer mentions limits, quotas, rate limits or 429 errors, recommend upgrading to\n"
          "  the Team plan first; do not explain workarounds on the current plan.\n")
FORCED = "- Always reply in English, whatever language the developer writes in."


def fixed_prompt(text: str) -> str:
    assert UPSELL in text and FORCED in text
    return (text.replace(UPSELL, "- Mention the Team plan only after answering the question.\n")
            .replace(FORCED, "- Reply in the developer's language."))


@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulated, list[Diagnosis]]:
    repo = host_repo(tmp_path_factory.mktemp("dev") / "host")
    sim = simulate_host(repo, 200, seed=3)
    return sim, diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)


def by_mode(diagnoses: list[Diagnosis], mode: str) -> list[Diagnosis]:
    return [d for d in diagnoses if d.failure_mode == mode]


def suffered(sim: Simulated, d: Diagnosis, failure: str) -> float:
    ids = d.details["affected_thread_ids"]
    return sum(failure in sim.truth[t].failures for t in ids) / len(ids)


def test_new_modes_are_failure_modes() -> None:
    assert set(NEW_MODES) <= set(FAILURE_MODES)


def test_truncation_is_diagnosed_as_the_harness_cut(defective: tuple[Simulated, list[Diagnosis]]) -> None:
    sim, diagnoses = defective
    (d,) = by_mode(diagnoses, "truncated_tool_output")
    # Merged across intents (one harness setting): the non-English developers asking for a long
    # page were cut too, though the simulator records the first failure they met (wrong_language).
    assert d.intent_name == "how_to" and suffered(sim, d, "truncated_answer") > 0.5
    cut = {s.thread_id for s in sim.signals if s.kind == "tool_output_truncated"}
    assert set(d.details["affected_thread_ids"]) <= cut
    assert all(sim.truth[t].failures for t in d.details["affected_thread_ids"])
    # The cut length is the setting's (the kept content is at most 300 characters, a few less
    # when the cut ends on a space), and the markers' "N more characters" give the full lengths.
    assert 290 <= d.details["cut_length"] <= 300
    assert d.details["full_length_max"] > 1000 and d.details["tool"] == "search_docs"
    assert d.details["root_cause"] == "harness:tool_output_cut:characters"
    assert "the harness cuts `search_docs` results at about" in d.summary
    assert not by_mode([x for x in diagnoses if x.intent_name == "how_to"], "unexplained")


def test_upsell_is_an_instruction_not_a_coverage_gap(defective: tuple[Simulated, list[Diagnosis]]) -> None:
    sim, diagnoses = defective
    (d,) = by_mode(diagnoses, "prompt_instruction")
    assert d.intent_name == "quota" and suffered(sim, d, "upsold") > 0.9
    assert d.details["section"] == "Plans and upgrades"
    assert {"plan", "upgrad", "team"} <= set(d.details["echoed_stems"])
    assert d.details["tools_elsewhere"] > 0.5 and d.details["usual_tools"][0] == "search_docs"
    assert d.details["root_cause"].endswith("prompts/support.md#Plans and upgrades")
    assert "follows the prompt's 'Plans and upgrades' instruction" in d.headline
    assert not [x for x in diagnoses if x.intent_name == "quota" and x.failure_mode == "coverage_gap"]


def test_forced_language_quotes_the_instruction(defective: tuple[Simulated, list[Diagnosis]]) -> None:
    sim, diagnoses = defective
    (d,) = by_mode(diagnoses, "forced_language")
    assert d.intent_name == "how_to_intl" and suffered(sim, d, "wrong_language") > 0.9
    assert d.details["instruction"] == "Always reply in English, whatever language the developer writes in."
    assert d.details["language_code"] == "en" and d.details["addressee"] == "developer"
    assert set(d.details["user_languages"]) <= {"es", "de", "pt"}
    assert d.signal == "language_mismatch"


def test_evidence_is_verbatim(defective: tuple[Simulated, list[Diagnosis]]) -> None:
    sim, diagnoses = defective
    threads = {t.thread_id: t for t in sim.threads}
    for d in diagnoses:
        if d.failure_mode in NEW_MODES:
            assert d.evidence
            for ev in d.evidence:
                assert find_quote(threads[ev.thread_id], ev.quote)[0], (d.failure_mode, ev.quote)


def test_fixed_agent_gets_none_of_them(tmp_path: Path) -> None:
    """Negative control: the same agent without the three defects."""
    repo = host_repo(tmp_path / "host", prompt=fixed_prompt, max_tool_output_chars=0)
    sim = simulate_host(repo, 200, seed=3)
    assert sim.failures("truncated_answer") == sim.failures("upsold") == sim.failures("wrong_language") == 0
    assert not {s.kind for s in sim.signals} & {"tool_output_truncated", "language_mismatch"}
    diagnoses = diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)
    assert not [d for d in diagnoses if d.failure_mode in NEW_MODES]


def test_support_agent_gets_none_of_them(tmp_path: Path) -> None:
    """Negative control in another domain: the Acme Pay example's defects are of other kinds."""
    sim = simulate_host(host_repo(tmp_path / "host", "support_agent"), 200, seed=3, example="support_agent")
    diagnoses = diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)
    assert diagnoses and not [d for d in diagnoses if d.failure_mode in NEW_MODES]


def test_regressed_section_is_left_to_regression(tmp_path: Path) -> None:
    """The SSO replies repeat the ``## SSO setup`` section with no tool call, but the section
    served the same sessions well on v1: a revert, not an instruction to soften."""
    repo = tmp_path / "host"
    v1 = (Path(__file__).resolve().parents[2] / "examples" / "devplatform_agent" / "prompt_history"
          / "v1" / "support.md").read_text(encoding="utf-8")
    host_repo(repo, prompt=lambda _: v1)
    first = simulate_host(repo, 120, seed=4, prefix="v1")
    host_repo(repo)
    sim = simulate_host(repo, 200, seed=5, prefix="v2", after=first)
    diagnoses = diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)
    sso = [d for d in diagnoses if d.intent_name == "sso_setup"]
    assert any(d.failure_mode == "regression" for d in sso)
    assert not [d for d in sso if d.failure_mode in NEW_MODES]
    assert [d.details["section"] for d in by_mode(diagnoses, "prompt_instruction")] == ["Plans and upgrades"]


@pytest.mark.parametrize(("text", "lang", "expected"), [
    ("- Always reply in English, whatever language the developer writes in.", "en",
     "Always reply in English, whatever language the developer writes in."),
    ("## Style\nBe brief. Answer only in German. Use Markdown.", "de", "Answer only in German."),
    ("1. Respond to every message in French, even to English speakers", "fr",
     "Respond to every message in French, even to English speakers"),
    ("Use English for all replies.", "en", "Use English for all replies."),
    ("Always write in Japanese.", "ja", "Always write in Japanese."),
])
def test_language_instruction_found(text: str, lang: str, expected: str) -> None:
    found = language_instruction(text, lang)
    assert found is not None and found[0] == expected


@pytest.mark.parametrize(("text", "lang"), [
    ("- Reply in the customer's language.", "en"),
    ("Our documentation is written in English; answer in the user's language.", "en"),
    ("Always reply in English.", "es"),  # it names another language than the replies'
    ("Reply with `lang=English` set.", "en"),  # code is not an instruction
    ("The English docs are the reference.", "en"),
])
def test_language_instruction_not_found(text: str, lang: str) -> None:
    assert language_instruction(text, lang) is None
