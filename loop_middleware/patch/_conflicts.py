"""Edits for causes the host wrote itself: a harness setting or a prompt instruction that fails.

=========================  ===================================================================
failure mode               edit
=========================  ===================================================================
``truncated_tool_output``  raise the harness setting that cuts tool results, found generically:
                           a top-level numeric key of an allowed config file whose name says
                           "size of output" (``max_tool_output_chars``, ``tool_result_limit``,
                           ``observation_max_length`` ...) and whose value is the cut length
                           the conversations show (the longest content kept before a marker,
                           or the limit the marker states); raised above the longest full
                           result the markers report
``forced_language``        replace the prompt sentence that orders one reply language with
                           "Reply in the <user>'s language." (the prompt's own word for the
                           person it talks to)
``prompt_instruction``     soften the section whose instruction the failing replies followed:
                           its echoed items are replaced by "answer the question first, the way
                           you answer other questions; bring up <section> only after that";
                           the heading stays (the prompt contract keeps every section)
=========================  ===================================================================

None of them states a fact: the config value comes from the observed lengths, the prompt text
names only what the prompt already names (its section heading, its word for the user, a tool it
lists), so :func:`~loop_middleware.patch._facts.invented_facts` finds nothing to flag.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from loop_middleware.diagnose._hypotheses import _content_stems, language_instruction
from loop_middleware.diagnose._stats import DEFAULT_STOPWORDS
from loop_middleware.patch._edits import (
    EditContext,
    ProposedEdit,
    _config_candidates,
    _load_config,
    _newline,
    _prompt_rel_or_none,
    _safe_identifier,
    _sections,
    read_text,
    resolve_prompt_path,
    set_config_value,
)
from loop_middleware.types import Diagnosis, FixKind

__all__ = ["find_cut_setting", "forced_language_edit", "prompt_instruction_edit",
           "truncated_tool_output_edit"]

# --- the harness setting that cuts tool output ---------------------------------------------------

_OUTPUT_WORDS = frozenset({"output", "outputs", "result", "results", "response", "responses",
                           "observation", "observations", "tool", "tools", "content", "text",
                           "message", "messages", "return", "payload"})
"""Words of a config key that say *what* is limited: what a tool gives back."""
_SIZE_WORDS = frozenset({"char", "chars", "characters", "length", "len", "size", "limit", "max",
                         "maximum", "truncate", "truncation", "cut", "bytes", "tokens", "lines"})
"""Words of a config key that say it is a size limit."""


def _key_words(key: str) -> set[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}


def _matches_cut(value: int, cut: int, stated: bool) -> bool:
    """A setting of ``value`` explains results cut to ``cut``: equal when the marker stated the
    limit; else the kept content is at most the limit and a cut that ends on a space or an
    ellipsis keeps a few characters less (2% or 3 characters of slack)."""
    if stated:
        return value == cut
    return cut <= value <= cut + max(3, math.ceil(0.02 * cut))


def find_cut_setting(ctx: EditContext, repo_dir: Path, near: str | None, cut: int | None,
                     stated: bool = False) -> tuple[str, str, str, int] | None:
    """``(file, text, key, value)`` of the harness setting that cuts tool output, or None.

    Candidates are the allowed config files (:func:`~loop_middleware.patch._edits.find_config_file`'s
    order) and their top-level integer keys. A key whose value matches the observed ``cut``
    (:func:`_matches_cut`) and whose name has a size word (``chars``, ``limit``, ``max`` ...)
    wins, one that also names output (``output``, ``result``, ``tool`` ...) first; without a
    value match (the cut length is unknown) only a key naming both is taken, and only when it is
    the only one.
    """
    by_value: list[tuple[int, str, str, str, int]] = []
    by_name: list[tuple[str, str, str, int]] = []
    for rel in _config_candidates(ctx, repo_dir, near):
        text = read_text(repo_dir, rel)
        data = _load_config(rel, text) if text is not None else None
        if text is None or data is None:
            continue
        for key, value in data.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
                continue
            words = _key_words(key)
            sized, output = bool(words & _SIZE_WORDS), bool(words & _OUTPUT_WORDS)
            if cut is not None and sized and _matches_cut(value, cut, stated):
                by_value.append((0 if output else 1, rel, text, key, value))
            elif sized and output and value > 0:
                by_name.append((rel, text, key, value))
    if by_value:
        # min() keeps the first of equals: the candidates' order decides between files.
        _, rel, text, key, value = min(by_value, key=lambda x: x[0])
        return rel, text, key, value
    if len(by_name) == 1:
        return by_name[0]
    return None


def _nice_ceiling(x: float) -> int:
    """``x`` rounded up to one significant digit (1,839 -> 2,000; 450 -> 500)."""
    if x <= 10:
        return max(1, math.ceil(x))
    step = 10 ** math.floor(math.log10(x))
    return int(math.ceil(x / step) * step)


def truncated_tool_output_edit(d: Diagnosis, repo_dir: Path, ctx: EditContext) -> ProposedEdit | None:
    """Raise the setting that cuts tool results above the longest full result seen."""
    cut = d.details.get("cut_length")
    cut = cut if isinstance(cut, int) and not isinstance(cut, bool) else None
    found = find_cut_setting(ctx, repo_dir, _prompt_rel_or_none(d, repo_dir), cut,
                             bool(d.details.get("limit_stated")))
    if found is None:
        return None
    rel, text, key, current = found
    if current <= 0:
        return None  # 0 / negative already means "never cut" in most harnesses
    full = d.details.get("full_length_max")
    full = full if isinstance(full, int) and not isinstance(full, bool) else None
    # Room for the longest result seen with half as much again (pages grow), and never less
    # than four times the old limit when the markers did not say how long the results were.
    target = _nice_ceiling(max(1.5 * full, 2 * current) if full else 4 * current)
    tool = _safe_identifier(d.details.get("tool")) or "tool"
    new = set_config_value(rel, text, key, target,
                           f"loop-middleware: raised from {current} ({tool} results were cut)")
    if new is None or new == text:
        return None
    seen = f"; the longest cut result had {full} characters" if full else ""
    return ProposedEdit(
        target_file=rel, old_text=text, new_text=new, kind=FixKind.CONFIG_CHANGE,
        title=f"Stop cutting {tool} results: {key} = {target} in {rel}",
        description=(f"raises {key} from {current} to {target} in {rel}: `{tool}` results reached "
                     f"the model cut at about {cut if cut is not None else current} characters{seen}"),
        dedupe_key=f"config:{rel}:{key}",
    )


# --- the prompt line that forces a reply language -------------------------------------------------


def _flexible(sentence: str) -> re.Pattern[str]:
    """``sentence`` as a pattern that also matches it wrapped over lines (any whitespace)."""
    return re.compile(r"\s+".join(re.escape(w) for w in sentence.split()))


def forced_language_edit(d: Diagnosis, repo_dir: Path, ctx: EditContext) -> ProposedEdit | None:
    """Replace the instruction to reply in one language with "Reply in the <user>'s language."."""
    rel = resolve_prompt_path(d.prompt_path, repo_dir, d.prompt_sha256)
    text = read_text(repo_dir, rel)
    if text is None:
        return None
    code = str(d.details.get("language_code") or "")
    sentence = str(d.details.get("instruction") or "")
    m = _flexible(sentence).search(text) if sentence.strip() else None
    if m is None and code:
        again = language_instruction(text, code)  # the prompt moved on since the diagnosis
        if again is not None:
            sentence = again[0]
            m = _flexible(sentence).search(text)
    if m is None:
        return None
    who = str(d.details.get("addressee") or "user")
    who = who if re.fullmatch(r"[a-z]{2,20}", who) else "user"
    new_sentence = f"Reply in the {who}'s language."
    new = text[: m.start()] + new_sentence + text[m.end():]
    if new == text:
        return None
    language = str(d.details.get("language") or code or "one language")
    return ProposedEdit(
        target_file=rel, old_text=text, new_text=new, kind=FixKind.PROMPT_EDIT,
        title=f"Reply in the {who}'s language, not always in {language} ({rel})",
        description=(f"replaces the instruction \"{' '.join(sentence.split())}\" in {rel} with "
                     f"\"{new_sentence}\""),
        dedupe_key=f"language:{rel}:{code}",
    )


# --- a section whose instruction the failing replies followed -------------------------------------

_ITEM_RX = re.compile(r"^(?P<indent>\s{0,3})(?P<marker>[-*+]|\d+[.)])\s+")


def _items(lines: Sequence[str], start: int, end: int) -> list[tuple[int, int]]:
    """The body of a section as items ``[i, j)``: list items with their continuation lines, or
    paragraphs; blank lines separate and belong to none."""
    out: list[tuple[int, int]] = []
    i = start
    while i < end:
        if not lines[i].strip():
            i += 1
            continue
        j = i + 1
        if _ITEM_RX.match(lines[i]):  # continuation lines are indented
            while j < end and lines[j].strip() and lines[j][:1].isspace() and not _ITEM_RX.match(lines[j]):
                j += 1
        else:
            while j < end and lines[j].strip() and not _ITEM_RX.match(lines[j]):
                j += 1
        out.append((i, j))
        i = j
    return out


def prompt_instruction_edit(d: Diagnosis, repo_dir: Path, ctx: EditContext) -> ProposedEdit | None:
    """Soften the section whose instruction the failing replies followed (heading kept)."""
    rel = resolve_prompt_path(d.prompt_path, repo_dir, d.prompt_sha256)
    text = read_text(repo_dir, rel)
    heading = str(d.details.get("section") or "").strip()
    if text is None or not heading:
        return None
    lines = text.splitlines(keepends=True)
    heads = _sections(lines)
    at = next((n for n, (_, title, _) in enumerate(heads) if title.casefold() == heading.casefold()), None)
    if at is None:
        return None
    idx, title, level = heads[at]
    end = next((j for j, _, lv in heads[at + 1:] if lv <= level), len(lines))
    items = _items(lines, idx + 1, end)
    echoed = {str(s) for s in d.details.get("echoed_stems") or []}
    scored = [(len(set(_content_stems("".join(lines[i:j]), DEFAULT_STOPWORDS)) & echoed), i, j)
              for i, j in items]
    best = max((s for s, _, _ in scored), default=0)
    if best == 0:
        return None  # nothing of the section is what the replies repeated: already changed
    # The items the replies followed: the best one, and any other repeating half as much.
    drop = [(i, j) for s, i, j in scored if s >= max(1, best / 2)]
    first = lines[drop[0][0]]
    m = _ITEM_RX.match(first)
    prefix = f"{m.group('indent')}{m.group('marker')} " if m else ""
    usual = [t for t in (_safe_identifier(x) for x in d.details.get("usual_tools") or []) if t]
    named = [t for t in usual if t in text][:1]  # only a tool the prompt itself names
    how = f" (use `{named[0]}`)" if named else ""
    soft = (f"Answer the question itself first, the way you answer other questions{how}; "
            f"bring up {title[:1].lower() + title[1:]} only after that, and only if it helps.")
    nl = _newline(text)
    width = max(60, max((len(x.rstrip()) for x in lines), default=0))
    soft = nl.join(textwrap.wrap(soft, width=width, initial_indent=prefix,
                                 subsequent_indent=" " * len(prefix), break_on_hyphens=False,
                                 break_long_words=False))
    out: list[str] = []
    k = 0
    for n, (i, j) in enumerate(drop):
        out += lines[k:i]
        if n == 0:
            out.append(soft + nl)
        k = j
    out += lines[k:]
    new = "".join(out)
    if new == text:
        return None
    removed = " ".join(" ".join("".join(lines[i:j]).split()) for i, j in drop)
    return ProposedEdit(
        target_file=rel, old_text=text, new_text=new, kind=FixKind.PROMPT_EDIT,
        title=f"Answer first: soften the '{title}' instruction in {rel}",
        description=(f"softens the '{title}' section of {rel}: the instruction the failing replies "
                     f"followed (\"{removed[:300]}\") becomes: answer the question first, bring up "
                     f"{title.lower()} only after that"),
        dedupe_key=f"instruction:{rel}:{title.casefold()}",
    )

