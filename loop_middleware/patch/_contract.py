"""The prompt contract, and strict single-file unified diffs.

A prompt file is code the host agent formats at run time: ``prompt.format(customer=...)`` or a
LangChain ``PromptTemplate`` with ``{customer}``, or a Jinja/mustache template with
``{{ customer }}``. A fix that drops a variable silently stops passing data to the model; one that
drops a section (``## Refund policy``) silently drops behaviour. :func:`check_contract` refuses
both, and (because a stray ``{name}`` makes ``str.format`` raise ``KeyError`` in production) also
refuses variables a fix introduces unless the caller allows it.

Diffs are parsed with :mod:`unidiff` and applied here with no fuzz and no offset: a fix that was
made against another version of the file must fail loudly rather than land in the wrong place.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import tomllib
from pathlib import PurePosixPath

from unidiff.constants import (
    LINE_TYPE_ADDED,
    LINE_TYPE_CONTEXT,
    LINE_TYPE_NO_NEWLINE,
    LINE_TYPE_REMOVED,
)
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchedFile, PatchSet

from loop_middleware.errors import ContractViolationError, PatchError

__all__ = [
    "apply_unified_diff",
    "check_contract",
    "check_file_contract",
    "make_diff",
    "markdown_headings",
    "template_variables",
]

# Jinja / mustache: {{ name }}, {{ user.name | upper }}, {{{ raw }}}, {{#section}} {{/section}}.
_JINJA_VAR = re.compile(r"\{\{\{?\s*([#^/&>]?)\s*([A-Za-z_][\w.]*)\s*(?:\|[^{}]*)?\}\}\}?")
# Python str.format / LangChain f-string: {name}, {name!r}, {name:>10}, {user.name}, {items[0]}.
# ``{{`` and ``}}`` are escaped braces, consumed first so ``{{name}}`` is not read as ``{name}``.
_PY_FIELD = re.compile(
    r"\{\{|\}\}|\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]{}]*\])*)(?:![rsa])?(?::[^{}]*)?\}"
)
# Jinja statements also bind names ({% for x in items %}): keep the iterated/tested names.
_JINJA_STMT = re.compile(r"\{%-?\s*(?:if|elif|for\s+\w+\s+in|with)\s+([A-Za-z_][\w.]*)")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")

_MARKDOWN_SUFFIXES = frozenset(
    {".md", ".markdown", ".mdx", ".txt", ".prompt", ".j2", ".jinja", ".jinja2", ".mustache"}
)

# Source code: no prompt contract (braces are code), only "still parses" where we can tell.
_CODE_SUFFIXES = frozenset(
    {".py", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java", ".rb", ".sh"}
)


def template_variables(text: str) -> set[str]:
    """The template variables a prompt uses, as ``{name}`` and ``{{ name }}`` forms.

    Returns strings like ``"{customer}"`` and ``"{{ customer }}"`` so a report shows which syntax
    was lost. Jinja ``{% for x in items %}`` / ``{% if flag %}`` names count as ``{{ items }}``.
    """
    found: set[str] = set()
    for m in _JINJA_VAR.finditer(text):
        sigil, name = m.group(1), m.group(2)
        found.add(f"{{{{{sigil}{name}}}}}" if sigil else f"{{{{ {name} }}}}")
    for m in _JINJA_STMT.finditer(text):
        found.add(f"{{{{ {m.group(1)} }}}}")
    # Remove the jinja spans before reading python fields, so ``{{ x }}`` is not also ``{x}``.
    rest = _JINJA_VAR.sub(" ", text)
    rest = re.sub(r"\{%.*?%\}", " ", rest, flags=re.DOTALL)
    for m in _PY_FIELD.finditer(rest):
        if m.group(1):
            found.add(f"{{{m.group(1)}}}")
    return found


def _norm_heading(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("#").strip()).casefold()


def markdown_headings(text: str) -> list[str]:
    """ATX (``## Title``) and setext (``Title`` over ``====``) headings outside code fences."""
    out: list[str] = []
    fence: str | None = None
    prev = ""
    for line in text.splitlines():
        fm = _FENCE.match(line)
        if fence is not None:
            if (
                fm
                and fm.group(1)[0] == fence[0]
                and len(fm.group(1)) >= len(fence)
                and not line.strip()[len(fm.group(1)) :].strip()
            ):
                fence = None
            prev = ""
            continue
        if fm:
            fence = fm.group(1)
            prev = ""
            continue
        m = _ATX.match(line)
        if m and (m.group(2) or "").strip():
            out.append(m.group(2).strip())
        elif _SETEXT.match(line) and prev.strip() and not _ATX.match(prev):
            out.append(prev.strip())
        prev = line
    return out


def check_contract(
    before: str,
    after: str,
    required_sections: list[str] | None = None,
    *,
    check_sections: bool = True,
    allow_new_variables: bool = False,
) -> None:
    """Refuse an edit that breaks the prompt's contract.

    Args:
        before: The prompt text now.
        after: The prompt text with the fix applied.
        required_sections: Heading texts that must survive (compared case-insensitively, heading
            level ignored), when present before. ``None`` means every heading present before.
        check_sections: ``False`` for files where ``#`` is not a heading (YAML, code).
        allow_new_variables: Allow the fix to introduce template variables (off by default: the
            host does not pass them, and ``str.format`` raises ``KeyError`` on unknown fields).

    Raises:
        ContractViolationError: Listing every variable and section that was lost (or added).
    """
    problems: list[str] = []
    vars_before, vars_after = template_variables(before), template_variables(after)
    lost_vars = sorted(vars_before - vars_after)
    if lost_vars:
        problems.append("template variables removed: " + ", ".join(lost_vars))
    new_vars = sorted(vars_after - vars_before)
    if new_vars and not allow_new_variables:
        problems.append(
            "template variables introduced (the host does not fill them): " + ", ".join(new_vars)
        )
    if check_sections:
        had = {_norm_heading(h): h for h in markdown_headings(before)}
        has = {_norm_heading(h) for h in markdown_headings(after)}
        wanted = (
            list(had)
            if required_sections is None
            else [_norm_heading(s) for s in required_sections]
        )
        lost_sections = [had[k] for k in wanted if k in had and k not in has]
        if lost_sections:
            problems.append(
                "required sections removed: " + ", ".join(repr(s) for s in lost_sections)
            )
    if problems:
        raise ContractViolationError(
            "the fix would break the prompt contract: " + "; ".join(problems)
        )


def check_file_contract(
    path: str, before: str, after: str, required_sections: list[str] | None = None
) -> None:
    """:func:`check_contract` with the checks that make sense for ``path``'s file type.

    - Markdown / text / template files: template variables and sections.
    - YAML, JSON, TOML: the file must still parse (a broken ``agent.yaml`` takes the agent
      down); template variables are checked (prompt YAML holds templates), ``#`` comments are
      not headings.
    - Python: the file must still parse. Source code gets no template-variable check: braces
      in code are dicts, sets and f-strings, not a prompt's contract.
    """
    suffix = PurePosixPath(path).suffix.lower()
    kind = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML", ".py": "Python"}.get(
        suffix
    )
    try:
        if kind == "YAML":
            import yaml  # PyYAML ships with langchain-core

            yaml.safe_load(after)
        elif kind == "JSON":
            json.loads(after)
        elif kind == "TOML":
            tomllib.loads(after)
        elif kind == "Python":
            ast.parse(after, filename=path)
    except Exception as exc:  # each parser has its own error type; all mean "broken file"
        raise ContractViolationError(f"the fix would make {path} invalid {kind}: {exc}") from exc
    if suffix in _CODE_SUFFIXES:
        return
    check_contract(
        before,
        after,
        required_sections,
        check_sections=suffix in _MARKDOWN_SUFFIXES or suffix == "",
    )


def _split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only, keeping the ends (``str.splitlines`` also splits on ``\\r``,
    ``\\x0c``, U+2028..., which diff tools do not)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def single_file_patch(diff: str) -> PatchedFile:
    """The one file a unified diff changes, parsed.

    Raises:
        PatchError: ``diff`` does not parse or names more than one file.
    """
    try:
        patch = PatchSet(diff)
    except UnidiffParseError as exc:
        raise PatchError(f"the diff does not parse: {exc}") from exc
    if len(patch) != 1:
        raise PatchError(f"expected a diff of exactly one file, got {len(patch)}")
    return patch[0]


def apply_unified_diff(original: str, diff: str) -> str:
    """Apply a single-file unified diff to ``original``, strictly.

    Every context and removed line must match the original at exactly the line number the hunk
    header gives: no fuzz, no offset search. ``\\ No newline at end of file`` markers are honoured.

    Raises:
        PatchError: When the diff does not parse, names more than one file, or a hunk does not
            match (the message gives the hunk and the first mismatching line).
    """
    pf = single_file_patch(diff)
    src = _split_lines(original)
    out: list[str] = []
    pos = 0
    for n, hunk in enumerate(pf, 1):
        start = hunk.source_start - 1 if hunk.source_length > 0 else hunk.source_start
        if start < pos or start > len(src):
            raise PatchError(
                f"hunk {n} (@@ -{hunk.source_start},{hunk.source_length} @@) starts outside the "
                f"file or overlaps the previous hunk (file has {len(src)} lines)"
            )
        out.extend(src[pos:start])
        i = start
        last_kind: str | None = None
        for line in hunk:
            kind = line.line_type
            if kind == LINE_TYPE_NO_NEWLINE:
                # The marker applies to the line just before it: strip its newline on the side(s)
                # that line belongs to.
                if (
                    last_kind in (LINE_TYPE_CONTEXT, LINE_TYPE_ADDED)
                    and out
                    and out[-1].endswith("\n")
                ):
                    out[-1] = out[-1][:-1]
                continue
            if kind in (LINE_TYPE_CONTEXT, LINE_TYPE_REMOVED):
                expected = line.value
                if i >= len(src):
                    raise PatchError(
                        f"hunk {n} does not apply: it expects {expected.rstrip(chr(10))!r} at line "
                        f"{i + 1}, past the end of the file"
                    )
                got = src[i]
                # The source line may lack its newline (last line); the marker then follows.
                if got != expected and got != expected.rstrip("\n"):
                    raise PatchError(
                        f"hunk {n} does not apply at line {i + 1}: expected "
                        f"{expected.rstrip(chr(10))!r}, found {got.rstrip(chr(10))!r}"
                    )
                if kind == LINE_TYPE_CONTEXT:
                    out.append(line.value)
                i += 1
            elif kind == LINE_TYPE_ADDED:
                out.append(line.value)
            last_kind = kind
        pos = i
    out.extend(src[pos:])
    # A context line copied from the diff carries '\n'; when the original's last line had none
    # and the diff's marker said so it was stripped above. Otherwise keep the original's ending.
    return "".join(out)


def make_diff(path: str, before: str, after: str) -> str:
    """A git-style unified diff of one file (``diff --git a/p b/p``, ``--- a/p``, ``+++ b/p``).

    Lines without a trailing newline get the ``\\ No newline at end of file`` marker, which
    :mod:`difflib` does not emit, so the diff round-trips through :func:`apply_unified_diff` and
    ``git apply``. Returns ``""`` when nothing changed.
    """
    if before == after:
        return ""
    body: list[str] = []
    for line in difflib.unified_diff(
        _split_lines(before), _split_lines(after), fromfile=f"a/{path}", tofile=f"b/{path}", n=3
    ):
        if line.startswith(("---", "+++", "@@")):
            body.append(line if line.endswith("\n") else line + "\n")
        elif line.endswith("\n"):
            body.append(line)
        else:
            body.append(line + "\n\\ No newline at end of file\n")
    return f"diff --git a/{path} b/{path}\n" + "".join(body)
