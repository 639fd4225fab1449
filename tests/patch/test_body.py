"""PR body rendering: untrusted text stays inert."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from loop_middleware.patch._body import (
    FOOTER,
    code_fence,
    commit_message,
    escape_markdown,
    render_pr_body,
)
from loop_middleware.types import Fix, FixKind


def _fix(**kw: object) -> Fix:
    base: dict[str, object] = dict(
        id="fix-1",
        diagnosis_id="diag-7",
        kind=FixKind.PROMPT_EDIT,
        target_file="prompts/support.md",
        diff="--- a/prompts/support.md\n+++ b/prompts/support.md\n@@ -1 +1 @@\n-a\n+b\n",
        title="State the refund window",
        rationale="Refund threads fail 41% of the time (lift 3.2, q=0.002).",
        metric="coverage_gap rate in intent refund",
        expected_direction="decrease",
        sample_size_needed=180,
    )
    base.update(kw)
    return Fix(**base)  # type: ignore[arg-type]


def test_escape_neutralises_markdown_and_html() -> None:
    hostile = (
        "# Fake heading\n<img src=x onerror=alert(1)> <!-- hide --> & "
        "[click](https://evil.example) ![pix](https://evil.example/p.png) "
        "`code` ping @octocat and @acme/security, see #12 and GH-3 \\[x\\](y)"
    )
    out = escape_markdown(hostile)
    assert "<" not in out and ">" not in out
    assert "&amp;" in out and "&lt;img" in out
    assert out.startswith("\\# Fake heading")
    assert "\\[click\\](https://evil.example)" in out
    assert "\\!\\[pix\\]" in out
    assert "\\`code\\`" in out
    assert "@\u200boctocat" in out and "@\u200bacme/security" in out
    assert "#\u200b12" in out and "GH-\u200b3" in out
    # A pre-escaped bracket cannot cancel our escape: the backslash itself is escaped first.
    assert "\\\\\\[x\\\\\\]" in out
    # Unescaped link syntax, mentions and tags are all gone.
    assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", out)
    assert not re.search(r"(?<![\w\u200b])@[a-z]", out)


def test_email_addresses_stay_readable() -> None:
    assert escape_markdown("mail dev@example.com") == "mail dev@example.com"


@given(st.text(alphabet="`ab\n", max_size=60))
def test_fence_cannot_be_closed_by_its_content(content: str) -> None:
    fenced = code_fence(content, "diff")
    fence = fenced.split("diff\n", 1)[0]
    inner = fenced[len(fence) + len("diff\n") : -len(fence) - 1]
    assert inner.rstrip("\n") == content.rstrip("\n")
    assert fence not in inner  # no run inside is as long as the fence


def test_body_has_the_sections_and_footer() -> None:
    body = render_pr_body(_fix())
    assert body.startswith("## State the refund window\n")
    assert "lift 3.2" in body
    assert "**Metric:** coverage_gap rate in intent refund" in body
    assert "**Expected direction:** decrease" in body
    assert "**Sample size needed:** 180 threads" in body
    assert "```diff\n--- a/prompts/support.md" in body
    assert FOOTER in body
    assert "<!-- loop-middleware diagnosis=diag-7 fix=fix-1 -->" in body


def test_conversation_quotes_cannot_inject() -> None:
    fix = _fix(
        title="# <script>x</script> @admin",
        rationale="User said: ```\n## Approve me\n``` and <!-- -->",
        diff="--- a/p.md\n+++ b/p.md\n@@ -1 +1 @@\n-```\n+````` end\n",
        details={
            "evidence": [
                {"thread_id": "t-1 -->", "turn_index": 2, "quote": "[win](http://x) @everyone"}
            ]
        },
        diagnosis_id="d --> <b>",
    )
    body = render_pr_body(fix)
    assert "<script>" not in body and "<b>" not in body
    assert "@admin" not in body and "@everyone" not in body
    # Only our own heading lines start with '#'.
    assert [line for line in body.splitlines() if line.startswith("#")] == [
        "## \\# &lt;script&gt;x&lt;/script&gt; @\u200badmin",
        "### Why",
        "### Evidence",
        "### What to watch after merging",
        "### The change",
    ]
    # The diff's fence is longer than the 5-backtick run inside the diff.
    assert "``````diff\n" in body
    # Exactly one HTML comment, ours, with sanitised ids.
    assert body.count("<!--") == 1 and body.count("-->") == 1
    assert "thread t-1_--_, turn 2" in body


def test_commit_message_carries_trailers_last() -> None:
    msg = commit_message(_fix(title="Refund\nwindow"), "prompts/support.md")
    assert msg.splitlines()[0] == "Refund window"
    assert msg.rstrip("\n").splitlines()[-2:] == ["Loop-Fix: fix-1", "Loop-Diagnosis: diag-7"]


def test_pr_body_and_quotes_are_redacted() -> None:
    from loop_middleware.patch._edits import neutralise
    from loop_middleware.types import Fix, FixKind

    secret = "sk-proj-Q1w2E3r4T5y6U7i8O9p0AsDfGhJkLzXc"
    fix = Fix(id="f", diagnosis_id="d", kind=FixKind.PROMPT_EDIT, target_file="prompts/a.md",
              diff="--- a/prompts/a.md\n+++ b/prompts/a.md\n@@ -1 +1,2 @@\n x\n+y\n", title="t",
              rationale=f"user said: my key {secret}, mail ann@example.com", metric="m")
    body = render_pr_body(fix)
    assert secret not in body and "ann@example.com" not in body
    quote = neutralise(f"card 4111 1111 1111 1111 and key {secret}")
    assert "4111 1111 1111 1111" not in quote and secret not in quote
