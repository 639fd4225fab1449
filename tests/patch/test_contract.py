"""The prompt contract and strict single-file diffs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loop_middleware.errors import ContractViolationError, PatchError
from loop_middleware.patch._contract import (
    apply_unified_diff,
    check_contract,
    check_file_contract,
    make_diff,
    markdown_headings,
    template_variables,
)
from tests.patch.conftest import SUPPORT_PROMPT


def test_template_variables_of_each_syntax() -> None:
    text = (
        "Hi {name}, {user.email!r} {items[0]:>4} {{literal}} {{ jinja_var }} {{{raw}}} "
        '{{#orders}}x{{/orders}} {% for o in history %}{% endfor %} {"json": 1}'
    )
    assert template_variables(text) == {
        "{name}",
        "{user.email}",
        "{items[0]}",
        "{{ literal }}",
        "{{ jinja_var }}",
        "{{ raw }}",
        "{{#orders}}",
        "{{/orders}}",
        "{{ history }}",
    }


def test_markdown_headings_skip_code_fences() -> None:
    text = "# Title\n\n```bash\n# not a heading\n```\n\nSetext\n======\n\n## Refunds ##\n"
    assert markdown_headings(text) == ["Title", "Setext", "Refunds"]


def test_contract_kept_is_ok() -> None:
    after = SUPPORT_PROMPT.replace("Refunds are possible.", "Refunds are possible within 30 days.")
    check_contract(SUPPORT_PROMPT, after)  # no error
    check_contract(SUPPORT_PROMPT, after.replace("## Refunds", "### refunds"))  # level and case


def test_lost_variables_and_sections_are_listed() -> None:
    after = SUPPORT_PROMPT.replace("The customer is {customer_name}.", "").replace("## Tone\n", "")
    with pytest.raises(ContractViolationError) as err:
        check_contract(SUPPORT_PROMPT, after)
    msg = str(err.value)
    assert "{customer_name}" in msg
    assert "'Tone'" in msg
    assert "{company}" not in msg  # kept, so not listed


def test_required_sections_restrict_the_check() -> None:
    after = SUPPORT_PROMPT.replace("## Tone\n", "")
    check_contract(SUPPORT_PROMPT, after, required_sections=["Refunds"])
    with pytest.raises(ContractViolationError, match="'Tone'"):
        check_contract(SUPPORT_PROMPT, after, required_sections=["refunds", "TONE"])


def test_introduced_variables_are_refused_unless_allowed() -> None:
    after = SUPPORT_PROMPT + "\nMention {order_id}.\n"
    with pytest.raises(ContractViolationError, match=r"introduced.*\{order_id\}"):
        check_contract(SUPPORT_PROMPT, after)
    check_contract(SUPPORT_PROMPT, after, allow_new_variables=True)


def test_jinja_variable_lost() -> None:
    with pytest.raises(ContractViolationError, match=r"\{\{ user \}\}"):
        check_contract("Hello {{ user }}!\n", "Hello there!\n")


def test_yaml_must_still_parse_and_comments_are_not_sections() -> None:
    before = "# model settings\nmodel: small\n"
    check_file_contract("agent.yaml", before, "model: large\n")  # comment dropped: fine in YAML
    with pytest.raises(ContractViolationError, match="invalid YAML"):
        check_file_contract("agent.yaml", before, "model: [unclosed\n")


def test_code_files_must_parse_and_skip_the_prompt_contract() -> None:
    before = "def f(x):\n    return {'k': x}\n"
    check_file_contract(
        "agent/tools.py", before, "def f(x):\n    return {x}\n"
    )  # braces changed: fine
    with pytest.raises(ContractViolationError, match="invalid Python"):
        check_file_contract("agent/tools.py", before, "def f(x):\n    return {\n")
    with pytest.raises(ContractViolationError, match="invalid TOML"):
        check_file_contract("agent.toml", "a = 1\n", "a = \n")
    with pytest.raises(ContractViolationError, match="invalid JSON"):
        check_file_contract("agent.json", "{}", "{")
    # Prompt YAML keeps its template variables.
    with pytest.raises(ContractViolationError, match=r"\{question\}"):
        check_file_contract("prompts/qa.yaml", "template: 'Q: {question}'\n", "template: 'Q'\n")


def test_apply_make_diff_round_trip() -> None:
    after = SUPPORT_PROMPT.replace(
        "Refunds are possible.\n", "Refunds are possible.\nState the 30-day window.\n"
    )
    diff = make_diff("prompts/support.md", SUPPORT_PROMPT, after)
    assert diff.startswith(
        "diff --git a/prompts/support.md b/prompts/support.md\n--- a/prompts/support.md\n+++ b/prompts/support.md\n@@"
    )
    assert apply_unified_diff(SUPPORT_PROMPT, diff) == after
    assert make_diff("p.md", "same\n", "same\n") == ""


def test_apply_is_strict() -> None:
    after = SUPPORT_PROMPT.replace("Be brief and kind.", "Be brief, kind and exact.")
    diff = make_diff("prompts/support.md", SUPPORT_PROMPT, after)
    drifted = SUPPORT_PROMPT.replace("Be brief and kind.", "Be short and kind.")
    with pytest.raises(PatchError, match="does not apply at line"):
        apply_unified_diff(drifted, diff)
    # No offset search: the same hunk one line lower does not apply either.
    with pytest.raises(PatchError, match="does not apply"):
        apply_unified_diff("extra first line\n" + SUPPORT_PROMPT, diff)
    with pytest.raises(PatchError, match="does not parse"):
        apply_unified_diff(SUPPORT_PROMPT, "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n")
    with pytest.raises(PatchError, match="exactly one file"):
        apply_unified_diff(SUPPORT_PROMPT, diff + make_diff("other.md", "a\n", "b\n"))


def test_no_newline_at_end_of_file_both_ways() -> None:
    for before, after in [
        ("a\nb", "a\nc"),
        ("a\nb\n", "a\nb"),
        ("a\nb", "a\nb\n"),
        ("", "x"),
        ("x", ""),
    ]:
        diff = make_diff("p.md", before, after)
        assert apply_unified_diff(before, diff) == after, (before, after, diff)


_lines = st.lists(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=12
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(_lines, _lines, st.booleans(), st.booleans())
def test_round_trip_property(a: list[str], b: list[str], a_nl: bool, b_nl: bool) -> None:
    before = "\n".join(a) + ("\n" if a and a_nl else "")
    after = "\n".join(b) + ("\n" if b and b_nl else "")
    if before == after:
        assert make_diff("p.md", before, after) == ""
        return
    assert apply_unified_diff(before, make_diff("p.md", before, after)) == after


def test_make_diff_output_is_accepted_by_git_apply(tmp_path: Path) -> None:
    before = "one\ntwo\nthree"
    after = "one\n2\nthree\nfour\n"
    (tmp_path / "p.md").write_text(before)
    (tmp_path / "fix.diff").write_text(make_diff("p.md", before, after))
    subprocess.run(["git", "apply", "fix.diff"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "p.md").read_text() == after
