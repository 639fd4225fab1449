"""Open a fix as a draft pull request on GitHub (or GitHub Enterprise) with PyGithub.

The flow uses the contents API so one fix is one commit on one new branch, and nothing ever
touches the base branch:

1. an open PR whose head is this diagnosis's branch already exists → return it (no duplicate);
2. ``GET branches/{base}`` → ``POST git/refs`` (the fix branch, from the base tip);
3. ``GET contents/{path}?ref=base`` → apply the diff here, check the contract →
   ``PUT contents/{path}`` on the fix branch;
4. ``POST pulls`` (draft) → ``PATCH issues/{n}`` with the labels.

Labels go through ``Issue.edit(labels=...)`` rather than ``add_to_labels``: PyGithub's
``add_to_labels`` sends a bare JSON array, which GitHub's own OpenAPI description of
``POST .../labels`` does not allow (it describes ``{"labels": [...]}`` only); ``PATCH`` with
``{"labels": [...]}`` is described and equivalent on a PR we just opened.

The token is held by PyGithub's ``Auth.Token`` only: it is never logged, never formatted into an
error message or a ``repr`` (messages from GitHub are scrubbed of it too, in case a proxy echoes
headers).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from github import Auth, Github, GithubException, RateLimitExceededException
from github.ContentFile import ContentFile
from github.PullRequest import PullRequest
from github.Repository import Repository

from loop_middleware.errors import ConfigError, GitHubError, PatchError, PathNotAllowedError
from loop_middleware.patch._body import commit_message, render_pr_body
from loop_middleware.patch._contract import apply_unified_diff, check_file_contract, make_diff
from loop_middleware.patch._guard import AllowedPaths, diff_paths
from loop_middleware.patch._result import BRANCH_PREFIX, branch_name, diagnosis_key
from loop_middleware.types import Fix

__all__ = ["NEEDS_POLICY_LABEL", "GitHubPR", "GitHubPublisher"]

logger = logging.getLogger("loop_middleware.patch")

NEEDS_POLICY_LABEL = "needs-policy-text"
"""Label of a PR whose new text holds placeholders the reviewer must fill in (always a draft)."""
_SINGLE_LINE = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class GitHubPR:
    """The pull request holding a fix."""

    url: str
    number: int
    branch: str
    created: bool
    """``False`` when an open PR for the diagnosis already existed and was returned."""


def _header(headers: dict[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return str(value)
    return None


class GitHubPublisher:
    """Open fixes as (draft) pull requests on one GitHub repository.

    Args:
        repo_full_name: ``owner/name``.
        token: A token with ``contents: write`` and ``pull_requests: write`` (fine-grained), or
            the ``repo`` scope (classic). Never logged nor shown.
        allowed: The allow-list every written path must pass (the same guard as local git).
        base_url: ``https://api.github.com``, or ``https://HOST/api/v3`` for GitHub Enterprise.
        base_branch: The branch PRs target. It is never written to.
        labels: Labels put on each new PR (created by GitHub if missing).
        draft: Open PRs as drafts.
        required_sections: Heading texts a Markdown prompt must keep (default: every heading).
        timeout: Seconds per HTTP request.
    """

    def __init__(
        self,
        repo_full_name: str,
        token: str,
        *,
        allowed: AllowedPaths,
        base_url: str = "https://api.github.com",
        base_branch: str = "main",
        labels: Iterable[str] = ("loop-middleware",),
        draft: bool = True,
        required_sections: list[str] | None = None,
        timeout: int = 15,
    ) -> None:
        if repo_full_name.count("/") != 1 or not all(repo_full_name.split("/")):
            raise ConfigError(f"repo_full_name must be 'owner/name', got {repo_full_name!r}")
        if not token:
            raise ConfigError("a GitHub token is required (set it from the environment, not code)")
        self.repo_full_name = repo_full_name
        self.owner = repo_full_name.split("/")[0]
        self.allowed = allowed
        self.base_url = base_url.rstrip("/")
        self.base_branch = base_branch
        self.labels = [label for label in labels if label]
        self.draft = draft
        self.required_sections = required_sections
        self._secret = token
        # The defaults sleep 0.25 s / 1 s between requests / writes and retry with backoff: we do
        # a handful of calls per fix and surface failures at once (the local branch is kept).
        self._gh = Github(
            auth=Auth.Token(token),
            base_url=self.base_url,
            timeout=timeout,
            seconds_between_requests=0,
            seconds_between_writes=0,
            retry=None,
            per_page=100,
        )

    def __repr__(self) -> str:
        return (
            f"GitHubPublisher(repo_full_name={self.repo_full_name!r}, base_url={self.base_url!r}, "
            f"base_branch={self.base_branch!r}, draft={self.draft!r})"
        )

    def close(self) -> None:
        """Close the HTTP session."""
        self._gh.close()

    # -- errors ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _error(self, exc: Exception, action: str) -> GitHubError:
        """Map a PyGithub / transport exception to a GitHubError that says what to do."""
        where = f"{self.repo_full_name} at {self.base_url}"
        if not isinstance(exc, GithubException):
            return GitHubError(
                self._scrub(
                    f"could not reach GitHub ({where}) while {action}: {type(exc).__name__}: {exc}"
                )
            )
        status = exc.status
        data = exc.data if isinstance(exc.data, dict) else {}
        gh_msg = str(data.get("message") or exc.message or "").strip()
        details = [
            str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e)
            for e in (data.get("errors") or [])
        ]
        said = gh_msg + (f" ({'; '.join(details)})" if details else "")
        remaining = _header(exc.headers, "x-ratelimit-remaining")
        if (
            isinstance(exc, RateLimitExceededException)
            or status == 429
            or (status == 403 and remaining == "0")
        ):
            reset = _header(exc.headers, "x-ratelimit-reset")
            retry_after = _header(exc.headers, "retry-after")
            when = ""
            if reset and reset.isdigit():
                at = datetime.fromtimestamp(int(reset), tz=UTC)
                wait = max(0, int(reset) - int(time.time()))
                when = f"; the limit resets at {at.isoformat()} (in {wait} s)"
            elif retry_after and retry_after.isdigit():
                when = f"; retry after {retry_after} s"
            msg = (
                f"GitHub rate limit exceeded ({status}) while {action} on {where}{when}. "
                f"GitHub said: {said or 'rate limited'}. Publish again after the reset; the local branch and patch are kept."
            )
        elif status == 401:
            msg = (
                f"GitHub rejected the token (401 {said or 'Bad credentials'}) while {action} on {where}: "
                "check that the token is valid, not expired, and meant for this host."
            )
        elif status == 403:
            msg = (
                f"GitHub refused {action} on {where} (403 {said or 'Forbidden'}): the token needs "
                "'contents: write' and 'pull requests: write' (classic token: 'repo' scope), and "
                "branch rules or SSO may also block it."
            )
        elif status == 404:
            msg = (
                f"GitHub found nothing while {action} on {where} (404 {said or 'Not Found'}): check "
                f"repo_full_name, base_branch {self.base_branch!r}, base_url (Enterprise: "
                "https://HOST/api/v3), and that the token can see the repository (private "
                "repositories answer 404 without access)."
            )
        elif status == 422:
            msg = (
                f"GitHub could not process {action} on {where} (422 {said or 'Unprocessable Entity'}): "
                "the request was well-formed but refused (existing branch or PR, draft PRs not "
                "available on this plan, invalid label...)."
            )
        else:
            msg = f"GitHub answered {status} while {action} on {where}: {said or 'no message'}."
        return GitHubError(self._scrub(msg), status=status)

    # -- flow --------------------------------------------------------------------------------

    def find_open_pr(self, repo: Repository, branch: str, diagnosis_id: str) -> PullRequest | None:
        """An open PR for this diagnosis: head ``branch`` exactly, else any ``loop/fix-<key>-*``
        head in this repository (the title slug of a later fix may differ)."""
        for pr in repo.get_pulls(state="open", head=f"{self.owner}:{branch}"):
            return pr
        prefix = f"{BRANCH_PREFIX}{diagnosis_key(diagnosis_id)}-"
        for pr in repo.get_pulls(state="open", base=self.base_branch):
            if pr.head.ref.startswith(prefix) and pr.head.label == f"{self.owner}:{pr.head.ref}":
                return pr
        return None

    def publish(self, fix: Fix, *, branch: str | None = None) -> GitHubPR:
        """Open ``fix`` as a pull request (or return the open one for its diagnosis).

        Args:
            fix: The fix; its target and diff headers must pass the allow-list.
            branch: The head branch name (default :func:`branch_name`), e.g. the local branch.

        Raises:
            PathNotAllowedError / ContractViolationError / PatchError: The fix is refused before
                anything is written.
            GitHubError: GitHub refused a request (``status`` set), or could not be reached.
        """
        path = self.allowed.check(fix.target_file)
        self.allowed.check_diff(fix.diff, target_file=path)
        creates = diff_paths(fix.diff)[0][0] is None
        if not _SINGLE_LINE.fullmatch(fix.diagnosis_id) or not _SINGLE_LINE.fullmatch(fix.id):
            raise PatchError("fix.id and fix.diagnosis_id must be non-empty single-line strings")
        head = branch or branch_name(fix)
        # The one write that could land on the base branch is update_file(branch=head): refuse
        # anything but our own branch namespace.
        if not head.startswith(BRANCH_PREFIX) or head == self.base_branch:
            raise PatchError(
                f"refusing to write to branch {head!r}: fixes go to {BRANCH_PREFIX}* branches only"
            )
        step = "reading the repository"
        try:
            repo = self._gh.get_repo(self.repo_full_name)
            step = "looking for an open PR for this diagnosis"
            existing = self.find_open_pr(repo, head, fix.diagnosis_id)
            if existing is not None:
                logger.info(
                    "diagnosis %s already has PR #%d; not opening another",
                    fix.diagnosis_id,
                    existing.number,
                )
                return GitHubPR(
                    existing.html_url, existing.number, existing.head.ref, created=False
                )

            step = f"reading base branch {self.base_branch!r}"
            base_sha = repo.get_branch(self.base_branch).commit.sha
            step = f"reading {path} on {self.base_branch!r}"
            before, base_blob = self._read(repo, path, self.base_branch, missing_ok=creates)
            try:
                after = apply_unified_diff(before, fix.diff)
            except PatchError as exc:
                raise PatchError(
                    f"fix {fix.id} does not apply to {path} on {self.base_branch}: {exc}"
                ) from exc
            if after == before:
                raise PatchError(f"fix {fix.id} changes nothing in {path}")
            check_file_contract(path, before, after, self.required_sections)

            step = f"creating branch {head!r}"
            try:
                repo.create_git_ref(f"refs/heads/{head}", base_sha)
                current_text, current_sha = before, base_blob
            except GithubException as exc:
                if exc.status != 422:
                    raise
                # A previous run created the branch and then failed: reuse it.
                logger.info("branch %s already exists on GitHub; reusing it", head)
                current_text, current_sha = self._read(repo, path, head, missing_ok=True)

            if current_text != after or current_sha is None:
                step = f"committing {path} to {head!r}"
                message = commit_message(fix, path)
                if current_sha is None:
                    repo.create_file(path, message, after, branch=head)
                else:
                    repo.update_file(path, message, after, current_sha, branch=head)

            step = "opening the pull request"
            body = render_pr_body(fix, diff=make_diff(path, before, after))
            pr = repo.create_pull(
                base=self.base_branch,
                head=head,
                title=" ".join(fix.title.split()),
                body=body,
                draft=self.draft or bool(fix.placeholders),  # unfinished text: never ready
            )
            wanted = self.labels + ([NEEDS_POLICY_LABEL] if fix.placeholders else [])
            if wanted:
                step = f"labelling PR #{pr.number}"
                names = [label.name for label in pr.labels]
                pr.as_issue().edit(labels=names + [label for label in wanted if label not in names])
        except GithubException as exc:
            raise self._error(exc, step) from None
        except OSError as exc:  # requests' exceptions (connection, timeout) subclass OSError
            raise self._error(exc, step) from None
        logger.info("opened PR #%d for fix %s (%s)", pr.number, fix.id, pr.html_url)
        return GitHubPR(pr.html_url, pr.number, head, created=True)

    def _read(
        self, repo: Repository, path: str, ref: str, *, missing_ok: bool = False
    ) -> tuple[str, str | None]:
        """The text and blob sha of ``path`` at ``ref`` (``("", None)`` when missing and allowed)."""
        try:
            got = repo.get_contents(path, ref=ref)
        except GithubException as exc:
            if exc.status == 404 and missing_ok:
                return "", None
            raise
        if isinstance(got, list) or not isinstance(got, ContentFile) or got.type != "file":
            kind = "directory" if isinstance(got, list) else getattr(got, "type", "?")
            raise PathNotAllowedError(
                f"refusing path {path!r}: it is a {kind} on {ref}, not a file"
            )
        try:
            return got.decoded_content.decode("utf-8"), got.sha
        except UnicodeDecodeError as exc:
            raise PatchError(
                f"{path} on {ref} is not UTF-8 text; only text files are patched"
            ) from exc
