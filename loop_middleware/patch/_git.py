"""Ship a fix as a local git branch, without touching the host's checkout.

The fix commit is built with git plumbing on a temporary index (``GIT_INDEX_FILE``):
``cat-file`` the base blob → apply the diff in Python → ``hash-object -w`` → ``read-tree`` +
``update-index --cacheinfo`` on the temp index → ``write-tree`` → ``commit-tree`` →
``update-ref`` with an empty old value (create-only). The host's working tree, index and ``HEAD``
are never read for writing nor changed: a developer can keep typing while the loop opens fixes.

One diagnosis gets one branch: the commit carries a ``Loop-Diagnosis: <id>`` trailer, and a second
publish for the same diagnosis returns the existing branch instead of a duplicate.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loop_middleware.errors import PatchError, PathNotAllowedError
from loop_middleware.patch._body import commit_message, render_pr_body
from loop_middleware.patch._contract import apply_unified_diff, check_file_contract, make_diff
from loop_middleware.patch._guard import AllowedPaths, diff_paths
from loop_middleware.patch._result import BRANCH_PREFIX, TRAILER, PublishResult, branch_name
from loop_middleware.types import Fix

__all__ = ["LocalGitPublisher", "PreparedFix"]

logger = logging.getLogger("loop_middleware.patch")

_FALLBACK_NAME = "loop-middleware"
_FALLBACK_EMAIL = "loop@localhost"
_SINGLE_LINE = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class PreparedFix:
    """A fix validated against a base commit: the path, both texts and the normalised diff."""

    path: str
    mode: str
    before: str
    after: str
    diff: str
    base: str
    base_commit: str


class LocalGitPublisher:
    """Commit fixes to ``loop/fix-...`` branches of a local git repository.

    Args:
        repo_dir: The host repository (any directory inside its work tree).
        allowed: The allow-list every written path must pass.
        base_branch: The branch fixes are made on; default: the branch checked out now (or the
            ``HEAD`` commit when detached).
        out_dir: Where ``<branch>.patch`` and ``<branch>.md`` go; default
            ``<git dir>/loop-middleware/`` so the host's working tree stays clean.
        required_sections: Heading texts a Markdown prompt must keep (default: every heading).

    Raises:
        PatchError: When ``repo_dir`` is not inside a git work tree or git is missing.
    """

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        allowed: AllowedPaths,
        base_branch: str | None = None,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        required_sections: list[str] | None = None,
    ) -> None:
        self.allowed = allowed
        self.base_branch = base_branch
        self.required_sections = required_sections
        start = Path(repo_dir)
        if not start.is_dir():
            raise PatchError(f"{start} is not a directory, so not a git repository")
        try:
            top = subprocess.run(
                ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PatchError("git is not installed (the patch stage needs the git CLI)") from exc
        if top.returncode != 0 or not top.stdout.strip():
            raise PatchError(
                f"{start} is not inside a git work tree (git says: {top.stderr.strip()}); "
                "run `git init` there or point repo_dir at the agent's repository"
            )
        self.repo_root = Path(top.stdout.strip())
        self._identity = self._identity_flags()
        git_dir = Path(self._git("rev-parse", "--path-format=absolute", "--git-common-dir").strip())
        self.out_dir = Path(out_dir) if out_dir is not None else git_dir / "loop-middleware"

    def __repr__(self) -> str:
        return f"LocalGitPublisher(repo_root={str(self.repo_root)!r}, base_branch={self.base_branch!r})"

    # -- git plumbing ------------------------------------------------------------------------

    def _identity_flags(self) -> list[str]:
        # Only fill what is missing: never override a configured name or email.
        flags: list[str] = []
        for key, fallback, env in (
            ("user.name", _FALLBACK_NAME, "GIT_COMMITTER_NAME"),
            ("user.email", _FALLBACK_EMAIL, "GIT_COMMITTER_EMAIL"),
        ):
            got = subprocess.run(
                ["git", "-C", str(self.repo_root), "config", "--get", key],
                capture_output=True,
                text=True,
                check=False,
            )
            if got.returncode != 0 and not os.environ.get(env):
                flags += ["-c", f"{key}={fallback}"]
        return flags

    def _run(
        self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
    ) -> bytes:
        cmd = ["git", *self._identity, "-C", str(self.repo_root), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, check=False, env={**os.environ, **(env or {})}
        )
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip()
            raise PatchError(f"git {args[0]} failed (exit {proc.returncode}): {msg}")
        return proc.stdout

    def _git(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        data = None if input is None else input.encode("utf-8")
        return self._run(*args, input=data, env=env).decode("utf-8", "replace")

    def _resolve_base(self) -> tuple[str, str]:
        """The base's display name and commit sha."""
        name = self.base_branch
        if name is None:
            sym = subprocess.run(
                ["git", "-C", str(self.repo_root), "symbolic-ref", "--quiet", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            )
            name = sym.stdout.strip() or "HEAD"
        try:
            sha = self._git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
        except PatchError:
            sha = ""
        if not sha:
            raise PatchError(
                f"base {name!r} does not name a commit in {self.repo_root} "
                "(an empty repository, or a misspelt base_branch)"
            )
        if name.startswith(BRANCH_PREFIX) or name.startswith("refs/heads/" + BRANCH_PREFIX):
            logger.warning("base %r is itself a loop fix branch; fixes will stack on it", name)
        return name, sha

    def _tree_entry(self, commit: str, path: str) -> tuple[str, str, str] | None:
        out = self._git("ls-tree", "-z", commit, "--", path)
        for rec in out.split("\0"):
            if not rec:
                continue
            meta, _, name = rec.partition("\t")
            mode, kind, sha = meta.split()
            if name == path:
                return mode, kind, sha
        return None

    # -- idempotency -------------------------------------------------------------------------

    def find_existing(self, diagnosis_id: str) -> tuple[str, str] | None:
        """The ``(branch, commit)`` already holding a fix for ``diagnosis_id``, if any."""
        out = self._git(
            "for-each-ref",
            f"--format=%(refname:strip=2)%00%(objectname)%00%(trailers:key={TRAILER},valueonly)%01",
            "refs/heads/" + BRANCH_PREFIX.rsplit("/", 1)[0] + "/",
        )
        for rec in out.split("\x01"):
            rec = rec.strip("\n")
            if not rec:
                continue
            branch, sha, trailers = [*rec.split("\0"), "", ""][:3]
            values = {v.strip() for v in trailers.splitlines() if v.strip()}
            if diagnosis_id in values:
                return branch, sha
        return None

    # -- the fix -----------------------------------------------------------------------------

    def prepare(self, fix: Fix) -> PreparedFix:
        """Validate ``fix`` against the base commit and compute the new file text.

        Raises:
            PathNotAllowedError: The target or a diff header is outside the allow-list, or the
                file is a symlink / submodule in the base tree.
            ContractViolationError: The edit drops template variables or required sections.
            PatchError: The diff does not apply to the base version of the file.
        """
        if not _SINGLE_LINE.fullmatch(fix.diagnosis_id) or not _SINGLE_LINE.fullmatch(fix.id):
            raise PatchError("fix.id and fix.diagnosis_id must be non-empty single-line strings")
        path = self.allowed.check(fix.target_file, repo_root=self.repo_root)
        if not fix.diff.strip():
            raise PatchError(f"fix {fix.id} has an empty diff")
        self.allowed.check_diff(fix.diff, target_file=path)
        base, base_commit = self._resolve_base()
        # Every parent of the path must be a directory in the base tree (a symlinked directory
        # is a blob with mode 120000: the write would land wherever it points).
        parts = path.split("/")
        for i in range(1, len(parts)):
            entry = self._tree_entry(base_commit, "/".join(parts[:i]))
            if entry is not None and entry[1] != "tree":
                raise PathNotAllowedError(
                    f"refusing path {path!r}: {'/'.join(parts[:i])!r} is not a directory in {base}"
                )
        entry = self._tree_entry(base_commit, path)
        creates = diff_paths(fix.diff)[0][0] is None
        if entry is None:
            if not creates:
                raise PatchError(f"{path} does not exist in {base} ({base_commit[:12]})")
            mode, before = "100644", ""
        else:
            mode, kind, sha = entry
            if mode == "120000":
                raise PathNotAllowedError(f"refusing path {path!r}: it is a symlink in {base}")
            if kind != "blob":
                raise PathNotAllowedError(f"refusing path {path!r}: it is a {kind}, not a file")
            if creates:
                raise PatchError(f"the diff creates {path}, but it already exists in {base}")
            raw = self._run("cat-file", "blob", sha)
            try:
                before = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PatchError(f"{path} is not UTF-8 text; only text files are patched") from exc
        try:
            after = apply_unified_diff(before, fix.diff)
        except PatchError as exc:
            raise PatchError(
                f"fix {fix.id} does not apply to {path} at {base} ({base_commit[:12]}): {exc}"
            ) from exc
        if after == before:
            raise PatchError(f"fix {fix.id} changes nothing in {path}")
        check_file_contract(path, before, after, self.required_sections)
        return PreparedFix(
            path, mode, before, after, make_diff(path, before, after), base, base_commit
        )

    def publish(self, fix: Fix, out_dir: str | os.PathLike[str] | None = None) -> PublishResult:
        """Commit ``fix`` to its branch and write the ``.patch`` and ``.md`` files.

        Returns the existing branch (``created=False``) when one already holds a fix for the
        same diagnosis. Never merges, never moves the base branch, never pushes.
        """
        out = Path(out_dir) if out_dir is not None else self.out_dir
        existing = self.find_existing(fix.diagnosis_id)
        if existing is not None:
            return self._existing_result(fix, *existing, out)

        prep = self.prepare(fix)
        branch = branch_name(fix)
        self._git("check-ref-format", f"refs/heads/{branch}")
        if branch == prep.base:  # pragma: no cover - the prefix makes this impossible
            raise PatchError("refusing to commit a fix onto its own base branch")

        blob = self._git("hash-object", "-w", "--stdin", input=prep.after).strip()
        with tempfile.TemporaryDirectory(prefix="loop-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", prep.base_commit, env=env)
            self._git(
                "update-index", "--add", "--cacheinfo", f"{prep.mode},{blob},{prep.path}", env=env
            )
            tree = self._git("write-tree", env=env).strip()
        commit = self._git(
            "commit-tree",
            tree,
            "-p",
            prep.base_commit,
            "-F",
            "-",
            input=commit_message(fix, prep.path),
        ).strip()
        try:
            # Empty old value: create only. A concurrent publish of the same diagnosis loses here.
            self._git(
                "update-ref",
                "-m",
                f"loop-middleware: fix {fix.id}",
                f"refs/heads/{branch}",
                commit,
                "",
            )
        except PatchError:
            again = self.find_existing(fix.diagnosis_id)
            if again is not None:
                return self._existing_result(fix, *again, out)
            raise PatchError(
                f"branch {branch} already exists and does not hold a fix for diagnosis "
                f"{fix.diagnosis_id!r}; delete or rename it"
            ) from None
        logger.info(
            "committed fix %s for diagnosis %s on %s (%s)",
            fix.id,
            fix.diagnosis_id,
            branch,
            commit[:12],
        )
        patch_path, body_path = self._write_files(fix, branch, commit, prep.diff, out)
        return PublishResult(
            branch=branch,
            commit_sha=commit,
            base=prep.base,
            patch_path=patch_path,
            body_path=body_path,
            created=True,
        )

    def _write_files(
        self, fix: Fix, branch: str, commit: str, diff: str, out: Path
    ) -> tuple[Path, Path]:
        patch_path = out / f"{branch}.patch"
        body_path = out / f"{branch}.md"
        patch_path.parent.mkdir(parents=True, exist_ok=True)
        patch_path.write_bytes(self._run("format-patch", "-1", "--stdout", commit))
        body_path.write_text(render_pr_body(fix, diff=diff), encoding="utf-8")
        return patch_path, body_path

    def _existing_result(self, fix: Fix, branch: str, commit: str, out: Path) -> PublishResult:
        logger.info(
            "diagnosis %s already has branch %s; not creating another", fix.diagnosis_id, branch
        )
        base, _ = self._resolve_base()
        patch_path = out / f"{branch}.patch"
        body_path = out / f"{branch}.md"
        if not (patch_path.exists() and body_path.exists()):
            # Describe what the branch holds, not the (possibly different) new fix's diff.
            diff = self._git("diff", f"{commit}^", commit)
            patch_path, body_path = self._write_files(fix, branch, commit, diff, out)
        return PublishResult(
            branch=branch,
            commit_sha=commit,
            base=base,
            patch_path=patch_path,
            body_path=body_path,
            created=False,
        )
