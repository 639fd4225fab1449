"""The pull-request body: what a reviewer reads before merging a fix by hand.

Everything that comes from a fix (title, rationale, evidence quotes) ultimately comes from
conversations, i.e. from strangers. Rendered raw into a PR body it could ping people (``@org/team``),
embed tracking images, hide text in HTML comments, fake headings or links, or close our code fence
and inject Markdown after it. :func:`escape_markdown` neutralises those constructs while keeping
ordinary prose (lists, emphasis) readable, and :func:`code_fence` picks a fence the content cannot
close.
"""

from __future__ import annotations

import re
from typing import Any

from loop_middleware.patch._result import TRAILER
from loop_middleware.types import Fix

__all__ = ["FOOTER", "code_fence", "commit_message", "escape_markdown", "render_pr_body"]

FOOTER = "Opened by loop-middleware. Review and merge by hand; this PR is never auto-merged."
_ZWSP = "\u200b"
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.:\-]")


def escape_markdown(text: str) -> str:
    """Make untrusted text inert in GitHub-flavoured Markdown, keeping prose readable.

    - backslashes are doubled first, so no escape below can be undone by the text;
    - ``&``, ``<``, ``>`` become entities: no raw HTML, comments, autolinks, blockquotes;
    - backticks are backslash-escaped: no code spans or fences;
    - ``[``, ``]`` and ``!`` are backslash-escaped: no links, images, footnotes, reference
      definitions;
    - ``@name`` and ``#123`` / ``GH-123`` get a zero-width space after the sigil: no mentions
      and no cross-references (GitHub notifies people on both);
    - a ``#`` at the start of a line is escaped: no fake headings.

    Lists and emphasis are left alone: they are harmless. Bare URLs stay as text (GitHub still
    autolinks them; they are visible to the reviewer, unlike a link's target).
    """
    out = text.replace("\\", "\\\\")
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace("`", "\\`")
    out = out.replace("[", "\\[").replace("]", "\\]")
    out = out.replace("!", "\\!")
    # mentions: @user, @org/team; GitHub also links emails, which we leave readable.
    out = re.sub(r"(?<![\w.+-])@(?=[A-Za-z0-9])", "@" + _ZWSP, out)
    # cross references: #123, GH-123, owner/repo#123
    out = re.sub(r"#(?=\d)", "#" + _ZWSP, out)
    out = re.sub(r"\bGH-(?=\d)", "GH-" + _ZWSP, out)
    # headings: a line starting with (up to 3 spaces and) '#'
    out = re.sub(r"(?m)^( {0,3})#", r"\1\\#", out)
    return out


def code_fence(content: str, lang: str = "") -> str:
    """Wrap ``content`` in a backtick fence longer than any backtick run inside it."""
    runs = [len(m.group(0)) for m in re.finditer(r"`+", content)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    body = content if content.endswith("\n") else content + "\n"
    return f"{fence}{lang}\n{body}{fence}\n"


def _safe_id(value: str) -> str:
    return _SAFE_ID.sub("_", value)[:80]


def _evidence_lines(details: dict[str, Any]) -> list[str]:
    evidence = details.get("evidence")
    if not isinstance(evidence, list):
        return []
    lines: list[str] = []
    for item in evidence[:10]:
        if not isinstance(item, dict):
            continue
        quote = str(item.get("quote", "")).strip()
        where = _safe_id(str(item.get("thread_id", "?")))
        turn = item.get("turn_index")
        ref = f"thread {where}" + (f", turn {int(turn)}" if isinstance(turn, int) else "")
        if quote:
            quoted = escape_markdown(" ".join(quote.split())[:500])
            lines.append(f"- {ref}: “{quoted}”")
        else:
            lines.append(f"- {ref}")
    return lines


def render_pr_body(fix: Fix, *, diff: str | None = None) -> str:
    """Render the Markdown body of the pull request for ``fix``.

    Args:
        fix: The fix. Its title, rationale and evidence quotes are escaped.
        diff: The diff to show (defaults to ``fix.diff``), in a fence it cannot close.

    Returns:
        The body, ending with the never-auto-merged footer and a hidden marker naming the
        diagnosis and fix ids (sanitised), which lets tools find the PR for a diagnosis.
    """
    shown = fix.diff if diff is None else diff
    direction = "down" if fix.expected_direction == "decrease" else "up"
    parts = [
        f"## {escape_markdown(fix.title)}",
        "",
        f"**Diagnosis** `{_safe_id(fix.diagnosis_id)}` · **fix** `{_safe_id(fix.id)}` · "
        f"**kind** `{fix.kind.value}` · **file** `{_safe_id_path(fix.target_file)}`",
        "",
        "### Why",
        "",
        escape_markdown(_redact(fix.rationale.strip())) or "_(no rationale given)_",
        "",
    ]
    if fix.placeholders:
        parts += [
            "### Before merging: the reviewer must write the policy",
            "",
            "The repository states no policy for this, and the loop never invents one. Replace "
            "each placeholder in the new section with your real policy (or delete its line):",
            "",
            *[f"- [ ] `{escape_markdown(p)}`" for p in fix.placeholders],
            "",
        ]
    sources = [str(s) for s in fix.details.get("sources") or []]
    if sources:
        parts += ["### Sources", "",
                  "Every fact the new text states is quoted from the host repository:", "",
                  *[f"- `{_safe_id_path(s)}`" for s in sources], ""]
    evidence = _evidence_lines(fix.details)
    if evidence:
        parts += ["### Evidence", "", *evidence, ""]
    parts += [
        "### What to watch after merging",
        "",
        f"- **Metric:** {escape_markdown(fix.metric)}",
        f"- **Expected direction:** {fix.expected_direction} (the rate should go {direction})",
        f"- **Sample size needed:** {fix.sample_size_needed} threads per cohort in the intent "
        "before the effect can be confirmed",
        "",
        "### The change",
        "",
        code_fence(shown, "diff"),
        "---",
        "",
        FOOTER,
        "",
        f"<!-- loop-middleware diagnosis={_safe_id(fix.diagnosis_id)} fix={_safe_id(fix.id)} -->",
        "",
    ]
    return "\n".join(parts)


def _safe_id_path(path: str) -> str:
    # Inside a code span only a backtick can break out; paths come from the guard anyway.
    return path.replace("`", "'")


def commit_message(fix: Fix, path: str) -> str:
    """The commit message of a fix: title, rationale, metric, and the ``Loop-Fix`` /
    ``Loop-Diagnosis`` trailers (the last paragraph, so ``git interpret-trailers`` finds them)."""
    title = " ".join(fix.title.split()) or f"Fix {path}"
    lines = [title, ""]
    rationale = fix.rationale.strip()
    if rationale:
        lines += [rationale, ""]
    lines += [
        f"Metric to watch: {' '.join(fix.metric.split())} "
        f"(expected to {fix.expected_direction}; {fix.sample_size_needed} threads per cohort).",
        "",
        f"Loop-Fix: {fix.id}",
        f"{TRAILER}: {fix.diagnosis_id}",
        "",
    ]
    return "\n".join(lines)


def _redact(text: str) -> str:
    """PR bodies are public within the host's repository: redact private data again (the
    rationale quotes conversations), whatever was redacted upstream."""
    from ..privacy import Redactor

    return Redactor().redact(text)
