"""Fixes for causes the host wrote itself (patch/_conflicts.py): the harness setting that cuts
tool output, the prompt line that forces a reply language, the prompt instruction the failing
replies followed.

On real simulated Kestrel Cloud conversations the fixes are proposed against the right files,
pass the contract, state no fact of their own, and, merged into the host repository, make the
defects' failures disappear from a new cohort (each fix alone and all together). The generic
pieces (finding the cut setting in YAML / JSON / TOML, the edits on other prompts) are tested on
hand-written files of other domains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loop_middleware.diagnose._diagnose import diagnose
from loop_middleware.patch import AllowedPaths
from loop_middleware.patch._conflicts import (
    find_cut_setting,
    forced_language_edit,
    prompt_instruction_edit,
    truncated_tool_output_edit,
)
from loop_middleware.patch._contract import apply_unified_diff, markdown_headings
from loop_middleware.patch._edits import EditContext, ProposeConfig
from loop_middleware.patch._facts import invented_facts
from loop_middleware.patch._propose import propose_fixes
from loop_middleware.types import Diagnosis, Fix, FixKind
from tests.patch._devplatform import Simulated, copy_repo, host_repo, simulate_host
from tests.patch.test_propose import diag

ALLOWED = AllowedPaths(["prompts/**/*.md", "agent.yaml"])


@pytest.fixture(scope="module")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulated, dict[str, Fix]]:
    base = tmp_path_factory.mktemp("conflicts")
    sim = simulate_host(host_repo(base / "host"), 200, seed=3)
    diagnoses = diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)
    fixes = propose_fixes(diagnoses, repo_dir=sim.repo, allowed=ALLOWED,
                          config=ProposeConfig(config_files=["agent.yaml"]), threads=sim.threads)
    mode = {d.id: d.failure_mode for d in diagnoses}
    return sim, {mode[f.diagnosis_id]: f for f in fixes}


def added_lines(diff: str) -> str:
    return "\n".join(line[1:] for line in diff.splitlines()
                     if line.startswith("+") and not line.startswith("+++"))


def test_cut_setting_raised_in_agent_yaml(proposed: tuple[Simulated, dict[str, Fix]]) -> None:
    _, fixes = proposed
    fix = fixes["truncated_tool_output"]
    assert fix.kind == FixKind.CONFIG_CHANGE and fix.target_file == "agent.yaml"
    assert "-max_tool_output_chars: 300\n" in fix.diff and "+max_tool_output_chars: 2000\n" in fix.diff
    # Above the longest page the markers reported (rotate-api-key: about 1,230 characters).
    assert max(len(p.read_text(encoding="utf-8")) for p in
               (Path(__file__).resolve().parents[2] / "examples/devplatform_agent/kb").glob("*.md")) < 2000


def test_language_line_replaced(proposed: tuple[Simulated, dict[str, Fix]]) -> None:
    _, fixes = proposed
    fix = fixes["forced_language"]
    assert fix.kind == FixKind.PROMPT_EDIT and fix.target_file == "prompts/support.md"
    assert "-- Always reply in English, whatever language the developer writes in." in fix.diff
    assert added_lines(fix.diff) == "- Reply in the developer's language."


def test_upsell_instruction_softened(proposed: tuple[Simulated, dict[str, Fix]]) -> None:
    sim, fixes = proposed
    fix = fixes["prompt_instruction"]
    assert fix.kind == FixKind.PROMPT_EDIT and fix.target_file == "prompts/support.md"
    old = (sim.repo / "prompts/support.md").read_text(encoding="utf-8")
    new = apply_unified_diff(old, fix.diff)
    assert markdown_headings(new) == markdown_headings(old)  # "## Plans and upgrades" stays
    assert "recommend upgrading" not in new and "do not explain workarounds" not in new
    added = added_lines(fix.diff)
    assert "bring up plans and upgrades only after that" in added and "`search_docs`" in added
    assert invented_facts(added, sim.repo) == []  # no number, duration, URL or e-mail of its own
    assert "coverage_gap" not in fixes  # no drafted section for the quota questions


def test_no_other_fixes(proposed: tuple[Simulated, dict[str, Fix]]) -> None:
    _, fixes = proposed
    assert set(fixes) == {"truncated_tool_output", "forced_language", "prompt_instruction"}


def merged(sim: Simulated, fixes: list[Fix], dst: Path) -> Path:
    repo = copy_repo(sim.repo, dst)
    for fix in fixes:
        path = repo / fix.target_file
        path.write_text(apply_unified_diff(path.read_text(encoding="utf-8"), fix.diff), encoding="utf-8")
    return repo


@pytest.mark.parametrize(("modes", "gone"), [
    (("truncated_tool_output",), ()),
    (("forced_language",), ("wrong_language",)),
    (("prompt_instruction",), ("upsold",)),
    (("truncated_tool_output", "forced_language", "prompt_instruction"),
     ("truncated_answer", "wrong_language", "upsold")),
])
def test_merged_fixes_remove_the_failures(proposed: tuple[Simulated, dict[str, Fix]], tmp_path: Path,
                                          modes: tuple[str, ...], gone: tuple[str, ...]) -> None:
    """A new cohort on the fixed repository (same developers, seed 6) against one on the
    unfixed one: each fix removes its defect's failures. The truncation fix alone still leaves
    the non-English developers on long pages failing (they get English first: defect c), so for
    it the count must fall, not vanish."""
    sim, fixes = proposed
    before = simulate_host(copy_repo(sim.repo, tmp_path / "before"), 150, seed=6)
    after = simulate_host(merged(sim, [fixes[m] for m in modes], tmp_path / "after"), 150, seed=6)
    for kind in gone:
        assert before.failures(kind) > 0 and after.failures(kind) == 0, kind
    if "truncated_tool_output" in modes:
        assert after.failures("truncated_answer") < before.failures("truncated_answer") / 2
    assert after.failures("sso_step_missing") == before.failures("sso_step_missing")  # not touched


# --- the cut setting, generically -------------------------------------------------------------------


def ctx_for(*files: str) -> EditContext:
    return EditContext(config=ProposeConfig(config_files=list(files)))


def write(repo: Path, name: str, text: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text, encoding="utf-8")


def test_cut_setting_matched_by_value_and_name(tmp_path: Path) -> None:
    write(tmp_path, "agent.yaml", "request_timeout_s: 300\nretries: 3\nmax_tool_output_chars: 300\n")
    assert find_cut_setting(ctx_for("agent.yaml"), tmp_path, None, 298)[2:] == ("max_tool_output_chars", 300)
    # A number equal to the cut without a size word (a timeout) is not the setting.
    write(tmp_path, "other.yaml", "request_timeout_s: 300\n")
    assert find_cut_setting(ctx_for("other.yaml"), tmp_path, None, 300) is None


def test_cut_setting_in_json_prefers_an_output_key(tmp_path: Path) -> None:
    write(tmp_path, "settings.json", json.dumps({"max_tokens": 4000, "observationMaxLength": 4000,
                                                 "name": "bot"}, indent=2))
    found = find_cut_setting(ctx_for("settings.json"), tmp_path, None, 3996)
    assert found is not None and found[2:] == ("observationMaxLength", 4000)


def test_cut_setting_in_toml_and_across_files(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", 'name = "x"\nmax_line_length = 100\n')
    write(tmp_path, "harness.toml", 'tool_result_limit = 2048\n[model]\nname = "m"\n')
    found = find_cut_setting(ctx_for("pyproject.toml", "harness.toml"), tmp_path, None, 2048, stated=True)
    assert found is not None and found[0] == "harness.toml" and found[2:] == ("tool_result_limit", 2048)
    # A stated limit must match exactly; without a match only a unique output-size key is taken.
    write(tmp_path, "two.toml", "tool_result_limit = 2048\nmax_output_lines = 50\n")
    assert find_cut_setting(ctx_for("two.toml"), tmp_path, None, 2040, stated=True) is None


def test_cut_setting_by_name_only_when_unique(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "tool_output_max_tokens: 512\n")
    assert find_cut_setting(ctx_for("a.yaml"), tmp_path, None, None)[2:] == ("tool_output_max_tokens", 512)
    write(tmp_path, "b.yaml", "tool_output_max_tokens: 512\nmax_result_lines: 40\n")
    assert find_cut_setting(ctx_for("b.yaml"), tmp_path, None, None) is None


def cut_diag(**details: Any) -> Diagnosis:
    return diag("truncated_tool_output", signal="tool_output_truncated",
                details={"tool": "fetch_page", "cut_length": 1000, **details})


def test_truncation_edit_raises_above_the_full_length(tmp_path: Path) -> None:
    write(tmp_path, "agent.yaml", "# harness\nmax_result_chars: 1000  # cut long pages\n")
    edit = truncated_tool_output_edit(cut_diag(full_length_max=5300), tmp_path, ctx_for("agent.yaml"))
    assert edit is not None and edit.kind == FixKind.CONFIG_CHANGE
    assert edit.new_text == "# harness\nmax_result_chars: 8000  # cut long pages\n"
    # Without full lengths: four times the old limit. Already "never cut" (0): nothing to do.
    edit = truncated_tool_output_edit(cut_diag(), tmp_path, ctx_for("agent.yaml"))
    assert edit is not None and "max_result_chars: 4000" in edit.new_text
    write(tmp_path, "zero.yaml", "max_result_chars: 0\n")
    assert truncated_tool_output_edit(cut_diag(cut_length=None), tmp_path, ctx_for("zero.yaml")) is None


# --- the prompt edits, generically ------------------------------------------------------------------

SHOP_PROMPT = """# Shop assistant

## How to answer
- Look the order up with `get_order` before answering.

## Loyalty club
- When a shopper asks about a return, tell them to join the loyalty club
  first; returns are easier for club members.
- The club is free.

## Tone
- Friendly. Always answer in French, even when the shopper writes
  in another language.
"""


def test_instruction_edit_on_another_prompt(tmp_path: Path) -> None:
    write(tmp_path, "prompts/support.md", SHOP_PROMPT)
    d = diag("prompt_instruction", details={"section": "Loyalty club",
                                            "echoed_stems": ["join", "loyalty", "club", "member"],
                                            "usual_tools": ["get_order", "unknown_tool"]})
    edit = prompt_instruction_edit(d, tmp_path, EditContext())
    assert edit is not None
    assert "join the loyalty club" not in edit.new_text and "- The club is free." in edit.new_text
    assert markdown_headings(edit.new_text) == markdown_headings(SHOP_PROMPT)
    assert ("- Answer the question itself first, the way you answer other questions (use `get_order`); "
            "bring up loyalty club only after that, and only if it helps.") in " ".join(edit.new_text.split())
    # Wrapped to the prompt's own width, continuation lines indented under the bullet.
    assert max(len(line) for line in edit.new_text.splitlines()) <= max(len(x) for x in SHOP_PROMPT.splitlines())
    assert "\n  (use `get_order`); bring up" in edit.new_text  # a tool the prompt names, not unknown_tool
    assert invented_facts(edit.new_text, tmp_path) == []
    # Already softened: nothing of the section is what the replies repeated any more.
    write(tmp_path, "prompts/support.md", edit.new_text)
    assert prompt_instruction_edit(d.model_copy(update={"details": {**d.details, "echoed_stems": ["join"]}}),
                                   tmp_path, EditContext()) is None


def test_language_edit_on_a_wrapped_line(tmp_path: Path) -> None:
    write(tmp_path, "prompts/support.md", SHOP_PROMPT)
    d = diag("forced_language", details={"language_code": "fr", "language": "French", "addressee": "shopper",
                                         "instruction": "Always answer in French, even when the shopper "
                                                        "writes in another language."})
    edit = forced_language_edit(d, tmp_path, EditContext())
    assert edit is not None and "- Friendly. Reply in the shopper's language.\n" in edit.new_text
    # The prompt moved on (the sentence was reworded): found again by language; then fixed: None.
    write(tmp_path, "prompts/support.md", SHOP_PROMPT.replace("Always answer", "Always reply only"))
    edit = forced_language_edit(d, tmp_path, EditContext())
    assert edit is not None and "Reply in the shopper's language." in edit.new_text
    write(tmp_path, "prompts/support.md", edit.new_text)
    assert forced_language_edit(d, tmp_path, EditContext()) is None


def test_replay_keeps_the_instruction_fix(proposed: tuple[Simulated, dict[str, Fix]]) -> None:
    """Replayed, the softened prompt makes the agent search the docs, and the harness cuts the
    page it gets (defect a): that cut is the harness' own signal, not the prompt fix making the
    agent worse, so the replay guard keeps the fix; the config fix is judged on the cut itself."""
    from examples.devplatform_agent import build_agent
    from loop_middleware.patch._replay import ReplayGuard

    sim, _ = proposed
    diagnoses = [d for d in diagnose(sim.threads, sim.signals, sim.intents, sim.assignments)
                 if d.failure_mode in ("prompt_instruction", "truncated_tool_output")]
    skipped: list[Any] = []
    fixes = propose_fixes(diagnoses, repo_dir=sim.repo, allowed=ALLOWED, threads=sim.threads,
                          config=ProposeConfig(config_files=["agent.yaml"]), skipped=skipped,
                          replay=ReplayGuard(build_agent, config_path=sim.repo / "agent.yaml", max_threads=8))
    assert not skipped and len(fixes) == 2
    replay = {f.details["failure_mode"]: f.details["replay"] for f in fixes}
    assert not replay["prompt_instruction"]["worse"]
    assert replay["truncated_tool_output"]["improved"]
    assert replay["truncated_tool_output"]["evidence_failing_after"] == 0


def test_merged_diagnosis_intents_reach_the_fix(tmp_path: Path) -> None:
    write(tmp_path, "prompts/support.md", SHOP_PROMPT)
    intents = [{"intent_id": "i-a", "intent_name": "returns", "sessions": 30, "rate": 0.9},
               {"intent_id": "i-b", "intent_name": "refunds", "sessions": 12, "rate": 0.8}]
    d = diag("forced_language", details={"language_code": "fr", "language": "French", "addressee": "shopper",
                                         "instruction": "Always answer in French, even when the shopper "
                                                        "writes in another language.",
                                         "intent_ids": ["i-a", "i-b"], "intents": intents})
    (fix,) = propose_fixes([d], repo_dir=tmp_path, allowed=ALLOWED)
    assert fix.details["intent_ids"] == ["i-a", "i-b"]
    assert "; in 2 intents: returns 30 (90.0%), refunds 12 (80.0%)" in fix.rationale
