"""Prompt versions: every LLM call is tied to the exact prompt text that produced it.

:func:`load_prompt` reads a prompt file, hashes it and registers it, so capture can recognise the
text later inside a system message, even when the host passes plain strings (or a template
filled with variables). A prompt that was never registered is still versioned by the hash of its
text (:func:`version_of`).
"""

from __future__ import annotations

import hashlib
import re
import string
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .types import PromptVersion

__all__ = [
    "PromptRegistry",
    "default_registry",
    "load_prompt",
    "prompt_template",
    "sha256_text",
    "template_metadata",
    "version_from_metadata",
    "version_of",
    "versions_in_messages",
]

# Template variables in the three spellings hosts use: `{name}` (f-string, LangChain's default),
# `{{ name }}` (mustache / jinja2) and, for files that mix both, either of them.
_MIXED_VAR = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}|\{[A-Za-z_]\w*\}")
_MUSTACHE_VAR = re.compile(r"\{\{\{?\s*[#^/]?\s*[A-Za-z_][\w.]*\s*\}?\}\}|\{%.*?%\}", re.S)

MIN_TEMPLATE_LITERAL = 20
"""A template is recognised by its text only when its fixed (non-variable) text has at least this
many non-blank characters: a template made mostly of variables matches almost anything, so it is
versioned only explicitly (by hash, :meth:`PromptVersion.as_template` or hub metadata)."""


def sha256_text(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8 (undecodable surrogates replaced)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _git_info(path: Path) -> tuple[str | None, bool]:
    """(last commit touching ``path``, dirty?) or (None, False) outside a git work tree."""
    try:
        cwd = path.parent
        commit = subprocess.run(
            ["git", "log", "-n", "1", "--format=%H", "--", path.name],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=False,
        )
        if commit.returncode != 0 or not commit.stdout.strip():
            return None, False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", path.name],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=False,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        # git missing or hung: the version is still identified by its hash.
        return None, False


def _fstring_literals(text: str) -> list[str] | None:
    """The literal parts of ``text`` read as an f-string template (``{{`` is a literal brace),
    or None when it is not one (unbalanced braces, or no variable at all)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return None
    if not any(field is not None for _, field, _, _ in parsed):
        return None
    literals = [""]
    for literal, field, _, _ in parsed:
        literals[-1] += literal
        if field is not None:
            literals.append("")
    return literals


def _template_forms(text: str) -> list[list[str]]:
    """Every way of reading ``text`` as a template: lists of literal parts between variables."""
    forms: list[list[str]] = []
    fstring = _fstring_literals(text)
    if fstring is not None:
        forms.append(fstring)
    for rx in (_MUSTACHE_VAR, _MIXED_VAR):
        if rx.search(text):
            parts = rx.split(text)
            if parts not in forms:
                forms.append(parts)
    return forms


@dataclass(frozen=True)
class _Match:
    version: PromptVersion
    start: int
    end: int
    literal: int
    """How many characters of the prompt's fixed text matched: the strength of the match."""


class _Entry:
    __slots__ = ("patterns", "version")

    def __init__(self, version: PromptVersion) -> None:
        self.version = version
        # A template is recognised after the host fills its variables: its literal parts must
        # match exactly, in order, each variable matching anything. One pattern per reading.
        self.patterns: list[tuple[re.Pattern[str], int]] = []
        for parts in _template_forms(version.text):
            literal = sum(len(p.strip()) for p in parts)
            if literal < MIN_TEMPLATE_LITERAL:
                continue
            body = "(.*?)".join(re.escape(p) for p in parts)
            self.patterns.append((re.compile("(?s)" + body), sum(len(p) for p in parts)))

    def find(self, text: str) -> _Match | None:
        v = self.version
        best: _Match | None = None
        if v.text:
            at = text.find(v.text)
            if at >= 0:
                best = _Match(v, at, at + len(v.text), len(v.text))
        for pattern, literal in self.patterns:
            if best is not None and best.literal >= literal:
                continue
            m = pattern.search(text)
            if m is not None:
                best = _Match(v, m.start(), m.end(), literal)
        return best


def _resolve(matches: list[_Match], rendered: set[str]) -> list[PromptVersion] | None:
    """The prompts a system message is made of, from every registered prompt found in it.

    Longest match wins: a prompt whose match lies inside a stronger match (more fixed text) is
    a neighbour, not what was sent. Two equally strong overlapping matches are a tie, resolved by
    the template the host actually rendered (``rendered``: hashes of template texts seen on the
    prompt runs); an unresolved tie returns None, so the caller falls back to the hash of the
    exact text (never a guess).
    """
    chosen: list[_Match] = []
    for m in sorted(matches, key=lambda m: (-m.literal, m.start)):
        rivals = [c for c in chosen if m.start < c.end and c.start < m.end]
        if not rivals:
            chosen.append(m)
            continue
        for c in rivals:
            if c.literal == m.literal and c.version.sha256 != m.version.sha256:
                # A tie between two different prompts over the same text.
                picks = [x for x in (c, m) if x.version.sha256 in rendered]
                if len(picks) != 1:
                    return None
                if picks[0] is m:
                    chosen[chosen.index(c)] = m
    return [c.version for c in sorted(chosen, key=lambda c: c.start)]


class PromptRegistry:
    """The prompts known to this process, looked up by hash or by their text.

    Thread-safe; lookups are cheap (a dict hit for exact text, a cached scan of the registered
    prompts otherwise).
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, frozenset[str]], list[PromptVersion]] = {}

    def register(self, version: PromptVersion) -> PromptVersion:
        """Register ``version`` so capture recognises its text."""
        entry = _Entry(version)
        with self._lock:
            self._by_hash[version.sha256] = entry
            self._cache.clear()
        return version

    def get(self, sha256: str) -> PromptVersion | None:
        """The registered version with this hash, if any."""
        with self._lock:
            entry = self._by_hash.get(sha256)
        return entry.version if entry is not None else None

    def versions(self) -> list[PromptVersion]:
        """All registered versions."""
        with self._lock:
            return [e.version for e in self._by_hash.values()]

    def clear(self) -> None:
        """Forget every registered prompt (for tests)."""
        with self._lock:
            self._by_hash.clear()
            self._cache.clear()

    def match(self, text: str, *, rendered: Iterable[str] = ()) -> list[PromptVersion]:
        """The registered prompts a system message's ``text`` is made of, else its own version.

        Exact text → that version. Otherwise the registered prompts (plain text, or templates
        whose fixed text matches once the variables are filled) found in ``text``, longest
        match first among overlapping ones; ties are resolved by ``rendered`` (hashes of the
        template texts the host rendered for this call). When nothing matches with certainty,
        an unregistered version hashed from ``text`` itself, so every call has a version and
        never a neighbour's.
        """
        digest = sha256_text(text)
        hint = frozenset(rendered)
        key = (digest, hint)
        with self._lock:
            exact = self._by_hash.get(digest)
            if exact is not None:
                return [exact.version]
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            entries = list(self._by_hash.values())
        found = [m for e in entries if (m := e.find(text)) is not None]
        result = _resolve(found, set(hint)) if found else None
        if not result:
            result = [PromptVersion(sha256=digest, text=text)]
        with self._lock:
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = result
        return result


default_registry = PromptRegistry()
"""The process-wide registry :func:`load_prompt` writes to and capture reads from."""


def load_prompt(
    path: str | Path,
    *,
    name: str | None = None,
    registry: PromptRegistry | None = None,
    encoding: str = "utf-8",
) -> PromptVersion:
    """Read a prompt file, version it and register it for capture.

    Args:
        path: The prompt file (Markdown, text, a template...).
        name: A short name; defaults to the file stem.
        registry: Where to register it; defaults to :data:`default_registry`.
        encoding: The file's encoding.

    Returns:
        The :class:`~loop_middleware.types.PromptVersion`: path, SHA-256 of the content, git
        commit when the file is in a git work tree, and the text (use ``.text`` as the prompt).

    Raises:
        ConfigError: The file is missing or is not valid text in ``encoding``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding=encoding)
    except FileNotFoundError:
        raise ConfigError(f"prompt file not found: {p}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {p} is not valid {encoding}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {p}: {exc}") from None
    commit, dirty = _git_info(p.resolve())
    version = PromptVersion(
        sha256=sha256_text(text),
        text=text,
        name=name or p.stem,
        path=str(p),
        git_commit=commit,
        git_dirty=dirty,
    )
    return (registry or default_registry).register(version)


def version_of(text: str, *, registry: PromptRegistry | None = None) -> list[PromptVersion]:
    """The prompt version(s) behind a system message's text (see :meth:`PromptRegistry.match`)."""
    return (registry or default_registry).match(text)


def register_texts(texts: Iterable[tuple[str, str]], *, registry: PromptRegistry | None = None) -> None:
    """Register in-memory prompts given as ``(name, text)`` pairs."""
    reg = registry or default_registry
    for n, t in texts:
        reg.register(PromptVersion(sha256=sha256_text(t), text=t, name=n))


def versions_in_messages(
    messages: Iterable[Mapping[str, object]],
    *,
    registry: PromptRegistry | None = None,
    explicit: Mapping[str, PromptVersion] | None = None,
    rendered: Iterable[str] = (),
) -> list[PromptVersion]:
    """Distinct prompt versions behind the system messages of an LLM call's input.

    Args:
        messages: The call's input messages (dicts with ``role`` and ``content``).
        registry: Where registered prompts are looked up.
        explicit: Versions known without matching: hash of a rendered system text -> the
            version of the template that rendered it (from :meth:`PromptVersion.as_template`
            metadata or LangChain hub metadata on the prompt run).
        rendered: Hashes of the template texts the host rendered for this call; they resolve
            ties between registered prompts with the same fixed text.
    """
    reg = registry or default_registry
    hint = tuple(rendered)
    found: dict[str, PromptVersion] = {}
    for m in messages:
        content = m.get("content")
        if m.get("role") != "system" or not isinstance(content, str) or not content:
            continue
        known = explicit.get(sha256_text(content)) if explicit else None
        for v in [known] if known is not None else reg.match(content, rendered=hint):
            found.setdefault(v.sha256, v)
    return list(found.values())


# --- explicit versions: prompt templates that carry their version ------------------------------

META_SHA = "loop_prompt_sha256"
"""Metadata key :meth:`PromptVersion.as_template` sets on the template (read back by capture)."""
_META_FIELDS = {"loop_prompt_name": "name", "loop_prompt_path": "path",
                "loop_prompt_git_commit": "git_commit"}
_HUB_KEYS = ("lc_hub_owner", "lc_hub_repo", "lc_hub_commit_hash")


def template_metadata(version: PromptVersion) -> dict[str, Any]:
    """The metadata that ties a prompt template's runs to ``version``."""
    meta: dict[str, Any] = {META_SHA: version.sha256}
    for key, attr in _META_FIELDS.items():
        if getattr(version, attr):
            meta[key] = getattr(version, attr)
    return meta


def prompt_template(
    version: PromptVersion,
    *messages: Any,
    template_format: str = "f-string",
    history: str | None = "messages",
) -> Any:
    """A ``ChatPromptTemplate`` whose system message is ``version``'s text, carrying the version
    in its metadata so capture records it without matching any text.

    Args:
        version: The prompt (e.g. from :func:`load_prompt`), used as the system template.
        *messages: More message templates after the system one (``("human", "{question}")``).
        template_format: ``f-string`` (LangChain's default), ``mustache`` or ``jinja2``.
        history: Name of a ``MessagesPlaceholder`` for the conversation, or None for none.
    """
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    parts: list[Any] = [("system", version.text)]
    if history:
        parts.append(MessagesPlaceholder(history, optional=True))
    parts.extend(messages)
    return ChatPromptTemplate(parts, template_format=template_format,  # type: ignore[arg-type]
                              metadata=template_metadata(version))


def version_from_metadata(
    metadata: Mapping[str, Any] | None, template_text: str | None,
    *, registry: PromptRegistry | None = None,
) -> PromptVersion | None:
    """The version a prompt run declares in its metadata: ours (:func:`template_metadata`), or
    LangChain hub's (``lc_hub_owner``/``lc_hub_repo``/``lc_hub_commit_hash``); None otherwise.

    A declared sha that is registered gives the registered version; an unregistered one is
    rebuilt from the metadata and ``template_text`` (the system template as serialised on the
    run). A hub prompt is named ``owner/repo`` and keeps the hub commit as its commit.
    """
    if not metadata:
        return None
    reg = registry or default_registry
    sha = metadata.get(META_SHA)
    if isinstance(sha, str) and sha:
        known = reg.get(sha)
        if known is not None:
            return known
        fields = {attr: str(metadata[key]) for key, attr in _META_FIELDS.items()
                  if isinstance(metadata.get(key), str)}
        return PromptVersion(sha256=sha, text=template_text or "", name=fields.get("name"),
                             path=fields.get("path"), git_commit=fields.get("git_commit"))
    owner, repo, commit = (metadata.get(k) for k in _HUB_KEYS)
    if isinstance(repo, str) and repo and template_text:
        name = f"{owner}/{repo}" if isinstance(owner, str) and owner and owner != "-" else repo
        sha = sha256_text(template_text)
        known = reg.get(sha)
        if known is not None:
            return known
        return PromptVersion(sha256=sha, text=template_text, name=name,
                             git_commit=commit if isinstance(commit, str) else None)
    return None
