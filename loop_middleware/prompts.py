"""Prompt versions: every LLM call is tied to the exact prompt text that produced it.

:func:`load_prompt` reads a prompt file, hashes it and registers it, so capture can recognise the
text later inside a system message, even when the host passes plain strings (or a template
filled with variables). A prompt that was never registered is still versioned by the hash of its
text (:func:`version_of`).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError
from .types import PromptVersion

__all__ = [
    "PromptRegistry",
    "default_registry",
    "load_prompt",
    "sha256_text",
    "version_of",
    "versions_in_messages",
]

# `{name}` (f-string / LangChain) and `{{ name }}` (jinja2 / mustache) template variables.
_TEMPLATE_VAR = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}|\{[A-Za-z_]\w*\}")


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


class _Entry:
    __slots__ = ("pattern", "version")

    def __init__(self, version: PromptVersion) -> None:
        self.version = version
        self.pattern: re.Pattern[str] | None = None
        if _TEMPLATE_VAR.search(version.text):
            # A template is recognised after the host fills its variables: literal parts must
            # match exactly, each variable matches anything.
            parts = _TEMPLATE_VAR.split(version.text)
            literal = [re.escape(p) for p in parts]
            self.pattern = re.compile("(?s)" + "(.*?)".join(literal))


class PromptRegistry:
    """The prompts known to this process, looked up by hash or by containment.

    Thread-safe; lookups are cheap (a dict hit for exact text, a substring/regex scan of the
    registered prompts otherwise).
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def register(self, version: PromptVersion) -> PromptVersion:
        """Register ``version`` so capture recognises its text."""
        with self._lock:
            self._by_hash[version.sha256] = _Entry(version)
        return version

    def versions(self) -> list[PromptVersion]:
        """All registered versions."""
        with self._lock:
            return [e.version for e in self._by_hash.values()]

    def clear(self) -> None:
        """Forget every registered prompt (for tests)."""
        with self._lock:
            self._by_hash.clear()

    def match(self, text: str) -> list[PromptVersion]:
        """The registered prompts found in ``text`` (a system message), else its own version.

        Exact text → that version. Otherwise every registered prompt whose text (or filled
        template) is contained in ``text``. Otherwise an unregistered version hashed from
        ``text`` itself, so no call is ever left without a version.
        """
        digest = sha256_text(text)
        with self._lock:
            entries = list(self._by_hash.values())
            exact = self._by_hash.get(digest)
        if exact is not None:
            return [exact.version]
        found = [
            e.version
            for e in entries
            if (e.version.text and e.version.text in text)
            or (e.pattern is not None and e.pattern.search(text))
        ]
        return found or [PromptVersion(sha256=digest, text=text)]


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
    messages: Iterable[dict[str, object]], *, registry: PromptRegistry | None = None
) -> list[PromptVersion]:
    """Distinct prompt versions behind the system messages of an LLM call's input."""
    reg = registry or default_registry
    found: dict[str, PromptVersion] = {}
    for m in messages:
        content = m.get("content")
        if m.get("role") == "system" and isinstance(content, str) and content:
            for v in reg.match(content):
                found.setdefault(v.sha256, v)
    return list(found.values())
