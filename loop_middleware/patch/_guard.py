"""The allowed-path guard: the single choke point every write of the patch stage goes through.

A fix is derived from conversation text, which is untrusted: a user can talk an LLM into
proposing a diff against ``.github/workflows/deploy.yml`` or ``../../etc/passwd``. So every path the
patch stage writes (the fix's ``target_file`` *and* the paths named inside its diff) must pass
:meth:`AllowedPaths.check`, which accepts only repository-relative paths matching the host's
allow-list globs, and refuses a small set of paths whatever the globs say.
"""

from __future__ import annotations

import os
import posixpath
import re
import warnings
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import pathspec
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from loop_middleware.errors import PatchError, PathNotAllowedError

__all__ = ["AllowedPaths", "diff_paths"]

# Paths refused even when a glob matches them: the repository's own metadata and CI definitions
# (a workflow edit is code execution with the repository's secrets).
_DENIED_PREFIXES: tuple[tuple[str, ...], ...] = (
    (".github", "workflows"),
    (".github", "actions"),
)
_DENIED_COMPONENTS = frozenset({".git"})
_DENIED_NAMES = frozenset({".gitmodules", ".gitattributes"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GIT_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)[ \t]*$", re.MULTILINE)


def _compile(globs: list[str]) -> pathspec.PathSpec[Any]:
    """Compile gitignore-style globs, anchored at the repository root.

    pathspec 1.x renamed the ``gitwildmatch`` pattern to ``gitignore`` and deprecates the old name
    (a DeprecationWarning, an error under our test settings); older releases only know the old one.
    A glob without a slash would match at any depth in gitignore semantics (``agent.yaml`` would
    allow ``vendored/agent.yaml``); for an allow-list that is a surprise, so we anchor it: write
    ``**/agent.yaml`` to mean any depth.
    """
    lines: list[str] = []
    for raw in globs:
        g = raw.strip()
        if not g or g.startswith("#"):
            continue
        neg = g.startswith("!")
        body = g[1:] if neg else g
        if not body.startswith(("/", "**/")):
            body = "/" + body
        lines.append(("!" if neg else "") + body)
    try:
        return pathspec.PathSpec.from_lines("gitignore", lines)
    except (KeyError, LookupError):  # pragma: no cover - pathspec < 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return pathspec.PathSpec.from_lines("gitwildmatch", lines)


class AllowedPaths:
    """An allow-list of repository files a fix may change.

    Args:
        globs: gitignore-style globs relative to the repository root, e.g.
            ``["prompts/**/*.md", "agent.yaml"]``. ``**`` matches any number of directories,
            ``*`` does not cross ``/``, a leading ``!`` excludes. Globs are anchored at the root.

    Whatever the globs say, these are refused: absolute paths, ``..`` components, anything inside
    ``.git/``, ``.github/workflows/`` and ``.github/actions/``, ``.gitmodules``/``.gitattributes``,
    control characters, and (when a ``repo_root`` is given to :meth:`check`) paths that resolve
    through a symlink to somewhere outside the repository.
    """

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs: list[str] = [g for g in globs if g.strip()]
        if not self.globs:
            # An empty allow-list would refuse everything: almost certainly a configuration slip.
            raise PatchError("AllowedPaths needs at least one glob, e.g. ['prompts/**/*.md']")
        self._spec = _compile(self.globs)

    def __repr__(self) -> str:
        return f"AllowedPaths({self.globs!r})"

    def normalise(self, path: str | os.PathLike[str]) -> str:
        """Return ``path`` as a clean relative POSIX path, or raise :class:`PathNotAllowedError`.

        Only the shape is checked here (no glob, no filesystem).
        """
        raw = os.fspath(path)
        if not raw or _CONTROL.search(raw):
            raise PathNotAllowedError(
                f"refusing path {raw!r}: empty or contains control characters"
            )
        text = raw.replace("\\", "/")
        if (
            text.startswith("/")
            or re.match(r"^[A-Za-z]:", text)
            or PurePosixPath(text).is_absolute()
        ):
            raise PathNotAllowedError(
                f"refusing absolute path {raw!r}: paths must be relative to the repository root"
            )
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PathNotAllowedError(f"refusing path {raw!r}: '..' traversal is not allowed")
        if not parts:
            raise PathNotAllowedError(f"refusing path {raw!r}: it names the repository root")
        if any(p in _DENIED_COMPONENTS for p in parts):
            raise PathNotAllowedError(
                f"refusing path {raw!r}: files inside .git/ are never patched"
            )
        for prefix in _DENIED_PREFIXES:
            if tuple(parts[: len(prefix)]) == prefix:
                raise PathNotAllowedError(
                    f"refusing path {raw!r}: {'/'.join(prefix)}/ is never patched (CI definitions)"
                )
        if parts[-1] in _DENIED_NAMES and len(parts) == 1:
            raise PathNotAllowedError(
                f"refusing path {raw!r}: repository metadata is never patched"
            )
        return posixpath.join(*parts)

    def matches(self, rel: str) -> bool:
        """True when the normalised relative path ``rel`` matches the globs."""
        return bool(self._spec.match_file(rel))

    def check(
        self, path: str | os.PathLike[str], repo_root: str | os.PathLike[str] | None = None
    ) -> str:
        """Validate one path a fix wants to write.

        Args:
            path: The path, relative to the repository root.
            repo_root: When given, also refuse a path that resolves (through symlinks in the
                working tree) to a file outside the repository, or to another file than the one
                named (a symlinked prompt would let the glob be satisfied by one name while the
                write lands elsewhere).

        Returns:
            The normalised relative POSIX path (``prompts/support.md``).

        Raises:
            PathNotAllowedError: For anything not allowed; the message says why.
        """
        rel = self.normalise(path)
        if not self.matches(rel):
            raise PathNotAllowedError(
                f"refusing path {rel!r}: it matches none of the allowed globs {self.globs!r}"
            )
        if repo_root is not None:
            root = Path(repo_root).resolve()
            candidate = root.joinpath(*rel.split("/"))
            # Walk each prefix: a symlinked directory is as dangerous as a symlinked file.
            cur = root
            for part in rel.split("/"):
                cur = cur / part
                if cur.is_symlink():
                    target = cur.resolve()
                    if not target.is_relative_to(root):
                        raise PathNotAllowedError(
                            f"refusing path {rel!r}: {cur.relative_to(root).as_posix()!r} is a "
                            "symlink that escapes the repository"
                        )
                    raise PathNotAllowedError(
                        f"refusing path {rel!r}: {cur.relative_to(root).as_posix()!r} is a symlink; "
                        "patch the file it points to instead"
                    )
            if not candidate.resolve().is_relative_to(root):  # pragma: no cover - defence in depth
                raise PathNotAllowedError(
                    f"refusing path {rel!r}: it resolves outside the repository"
                )
        return rel

    def check_diff(self, diff: str, target_file: str | None = None) -> str:
        """Validate the file headers of a single-file unified diff.

        Both the ``---`` and ``+++`` paths (``a/``/``b/`` prefixes stripped) must pass
        :meth:`check`, and when ``target_file`` is given they must name that very file. Diffs that
        touch several files, rename, delete, or carry binary patches are refused.

        Returns:
            The normalised path the diff changes.
        """
        want = self.check(target_file) if target_file is not None else None
        # `diff --git` headers first: a header naming another file than the ---/+++ lines is a
        # way to smuggle a second file past a lenient parser (git apply trusts the header).
        for m in _GIT_HEADER.finditer(diff):
            for named in m.groups():
                norm = self.normalise(named)
                if want is not None and norm != want:
                    raise PathNotAllowedError(
                        f"refusing diff: its 'diff --git' header names {named!r}, the fix targets {want!r}"
                    )
                self.check(norm)
        paths = diff_paths(diff)
        if len(paths) != 1:
            raise PathNotAllowedError(
                f"a fix diff must change exactly one file, this one touches {len(paths)}: "
                f"{sorted({p for pair in paths for p in pair if p})!r}"
            )
        source, target = paths[0]
        if target is None:
            raise PathNotAllowedError(f"refusing diff: it deletes {source!r}")
        checked = self.check(target)
        if source is not None and self.check(source) != checked:
            raise PathNotAllowedError(f"refusing diff: it renames {source!r} to {target!r}")
        if want is not None and checked != want:
            raise PathNotAllowedError(
                f"refusing diff: its headers name {checked!r} but the fix targets {want!r}"
            )
        return checked


def _strip_prefix(name: str) -> str | None:
    name = name.strip()
    if name == "/dev/null":
        return None
    if name.startswith(("a/", "b/")):
        return name[2:]
    return name


def diff_paths(diff: str) -> list[tuple[str | None, str | None]]:
    """The (source, target) paths of each file in a unified diff, ``a/``/``b/`` stripped.

    ``None`` stands for ``/dev/null`` (file added or deleted).

    Raises:
        PatchError: When the text is not a parseable unified diff, or has a binary patch.
    """
    try:
        patch = PatchSet(diff)
    except UnidiffParseError as exc:
        raise PatchError(f"the fix's diff is not a valid unified diff: {exc}") from exc
    out: list[tuple[str | None, str | None]] = []
    for pf in patch:
        if pf.is_binary_file:
            raise PathNotAllowedError(f"refusing diff: binary patch for {pf.path!r}")
        out.append((_strip_prefix(pf.source_file), _strip_prefix(pf.target_file)))
    # A `diff --git` header whose paths differ from ---/+++ (or a header with no hunks) is also a
    # way to smuggle a second file past a naive parser: compare them.
    for m in _GIT_HEADER.finditer(diff):
        pair = (m.group(1), m.group(2))
        known = {p for s_t in out for p in s_t if p}
        if not set(pair) <= known:
            raise PathNotAllowedError(
                f"refusing diff: its 'diff --git' header names {pair!r}, not the files in its hunks"
            )
    return out
