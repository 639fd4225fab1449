"""Facts a drafted fix may state: only those found in the host's own repository.

A drafted prompt section that says "refunds within 30 days" tells real customers a policy. If
the company never had that policy, a reviewer who merges the draft ships a promise nobody made.
So the loop never writes a business fact of its own: a section is built from sentences found in
the host repository (other prompt files, knowledge-base and docs files, tool docstrings and
schemas, earlier prompt versions), each cited, and where no source exists it holds explicit
``<placeholders>`` the reviewer must fill in.

Two pieces:

* :func:`find_facts`: sentences of the repository's text files that mention the topic (by word
  stem) and state something concrete (a number, a duration, a URL, an e-mail, or a rule with
  "must/can/within/only/never ..."), ranked by how many topic words they hit, with their source
  (``path:line``).
* :func:`invented_facts`: the concrete tokens (numbers, durations, URLs, e-mails) of a text that
  appear nowhere in the repository: what every drafted section is checked with (an LLM draft
  that states one is discarded for the offline one) and what the tests assert is empty.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["SOURCE_COMMENT", "Fact", "fact_tokens", "find_facts", "invented_facts", "repo_text", "stem"]

# Text files worth reading for facts. Code files are read for docstrings and comments too:
# tool docstrings are where an agent's tools say what they do.
_TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".yaml", ".yml", ".json", ".toml",
                            ".py", ".ts", ".js", ".html", ".csv"})
_MAX_FILE_BYTES = 400_000
_MAX_FILES = 5_000
_SKIP_DIRS = frozenset({".git", "node_modules", ".venv", "venv", "__pycache__", ".tox", "dist",
                        "build", ".mypy_cache", ".ruff_cache", ".pytest_cache"})

_URL = r"https?://[^\s)>\]\"'`]+"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_NUMBER = r"(?<![\w.])\d+(?:[.,]\d+)*(?:\s?%)?(?![\w])"
_FACT = re.compile(f"{_URL}|{_EMAIL}|{_NUMBER}", re.IGNORECASE)
_RULE = re.compile(r"\b(?:must|can|cannot|can't|may|only|never|always|within|after|before|"
                   r"up to|at least|at most|require[sd]?|eligible|not eligible|allowed|free|"
                   r"charge[sd]?|takes?|days?|hours?|weeks?|minutes?)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")
_WORD = re.compile(r"[^\W\d_][\w'-]*")
SOURCE_COMMENT = re.compile(r"<!--\s*source:[^>]*-->")
"""The citation a quoted fact carries in a drafted section."""


@dataclass(frozen=True)
class Fact:
    """A sentence of the host repository that a drafted section may state."""

    text: str
    """The sentence as written (one line, whitespace collapsed)."""
    source: str
    """Where it is: ``path:line`` relative to the repository root."""
    score: int
    """How many distinct topic stems it mentions."""


def stem(word: str) -> str:
    """A crude, language-agnostic-enough stem for matching topic words ("refunds", "refunded",
    "refunding" -> "refund"); good enough to find a sentence, never used to change text."""
    w = word.lower().strip("'-")
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ied", "ed", "es", "s"):
        if len(w) - len(suffix) >= 4 and w.endswith(suffix):
            w = w[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
            break
    return w


def _files(repo_dir: Path) -> list[Path]:
    """The repository's text files: git's tracked and untracked-not-ignored ones when it is a
    git checkout, else a walk; bounded in count and size."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=repo_dir, capture_output=True, check=True, timeout=30).stdout
        names = [n for n in out.decode("utf-8", "replace").split("\0") if n]
        paths = [repo_dir / n for n in names]
    except (OSError, subprocess.SubprocessError):
        paths = [p for p in repo_dir.rglob("*")
                 if not any(part in _SKIP_DIRS for part in p.relative_to(repo_dir).parts)]
    keep = []
    for p in sorted(paths):
        if p.suffix.lower() not in _TEXT_SUFFIXES or any(part in _SKIP_DIRS for part in p.parts):
            continue
        try:
            if not p.is_file() or p.stat().st_size > _MAX_FILE_BYTES:
                continue
        except OSError:
            continue
        keep.append(p)
        if len(keep) >= _MAX_FILES:
            break
    return keep


@lru_cache(maxsize=16)
def _read_repo(repo_dir: str, stamp: tuple[tuple[str, float], ...]) -> tuple[tuple[str, str], ...]:
    del stamp  # part of the cache key only: a changed file reads again
    root = Path(repo_dir)
    out = []
    for p in _files(root):
        try:
            text = p.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        out.append((p.relative_to(root).as_posix(), text))
    return tuple(out)


def repo_text(repo_dir: Path, *, exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(relative path, text)`` of the repository's text files, ``exclude`` left out."""
    root = repo_dir.resolve()
    files = _files(root)
    stamp = tuple((p.as_posix(), p.stat().st_mtime) for p in files)
    skip = {e.replace("\\", "/") for e in exclude}
    return [(rel, text) for rel, text in _read_repo(str(root), stamp) if rel not in skip]


def fact_tokens(text: str) -> list[str]:
    """The concrete tokens of ``text`` a reader would take as facts: numbers (with %),
    durations are numbers followed by a unit, URLs and e-mail addresses. Normalised (lower case,
    no thousands separators) so "1,000" and "1000" compare equal."""
    out = []
    for m in _FACT.finditer(text):
        tok = m.group(0).rstrip(".,;:").lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:[.,]\d+)*%?", tok):
            tok = tok.replace(",", "")
        out.append(tok)
    return out


def invented_facts(text: str, repo_dir: Path, *, also_known: Iterable[str] = ()) -> list[str]:
    """The fact tokens of ``text`` (see :func:`fact_tokens`) found in no file of the repository
    (nor in ``also_known``, e.g. earlier prompt versions): each is a fact the loop would invent.
    Citations (``<!-- source: path:line -->``) are left out: their line numbers state nothing."""
    known: set[str] = set()
    for _rel, body in repo_text(repo_dir):
        known.update(fact_tokens(body))
    for extra in also_known:
        known.update(fact_tokens(extra))
    seen: list[str] = []
    cited = SOURCE_COMMENT.sub("", text)  # a citation's line number states nothing
    for tok in fact_tokens(cited):
        if tok not in known and tok not in seen:
            seen.append(tok)
    return seen


def _units(text: str) -> Iterable[tuple[int, str]]:
    """``(line number, sentence)`` of a file: bullets and table rows are their own units,
    paragraphs are split into sentences."""
    para: list[str] = []
    start = 0

    def flush() -> Iterable[tuple[int, str]]:
        if para:
            joined = " ".join(s.strip() for s in para)
            for sentence in _SENTENCE.split(joined):
                yield start, sentence.strip()
        para.clear()

    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "```", "<!--", "---")):
            yield from flush()
            continue
        if re.match(r"^(?:[-*+•]|\d+[.)])\s+", line) or line.startswith("|"):
            yield from flush()
            yield i, re.sub(r"^(?:[-*+•]|\d+[.)])\s+", "", line).strip("| ")
            continue
        if not para:
            start = i
        para.append(line)
    yield from flush()


def find_facts(repo_dir: Path, topic_words: Sequence[str], *, exclude: Iterable[str] = (),
               limit: int = 6, min_score: int = 1) -> list[Fact]:
    """Sentences of the repository about the topic that state something concrete.

    Args:
        repo_dir: The host repository.
        topic_words: Words naming the topic (e.g. ``["refund"]``); matched by :func:`stem`.
        exclude: Paths (relative) not to read, e.g. the prompt being edited.
        limit: At most this many facts, best first (most topic stems, then those with a fact
            token), then in document order (path, line).
        min_score: Topic stems a sentence must mention.
    """
    stems = {stem(w) for w in topic_words if len(w) >= 3}
    if not stems:
        return []
    found: list[tuple[tuple[int, int, str, int], Fact]] = []
    seen: set[str] = set()
    for rel, body in repo_text(repo_dir, exclude=exclude):
        for line, sentence in _units(body):
            if not (20 <= len(sentence) <= 400):
                continue
            words = {stem(w) for w in _WORD.findall(sentence)}
            score = len(stems & words)
            if score < min_score:
                continue
            has_fact = bool(_FACT.search(sentence))
            if not has_fact and not _RULE.search(sentence):
                continue
            key = re.sub(r"\W+", " ", sentence.casefold()).strip()
            if key in seen:
                continue
            seen.add(key)
            text = re.sub(r"\s+", " ", sentence)
            found.append(((-score, -int(has_fact), rel, line),
                          Fact(text=text, source=f"{rel}:{line}", score=score)))
    found.sort(key=lambda x: x[0])
    return [f for _, f in found[:limit]]
