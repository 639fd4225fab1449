"""Ship one fix: always a local branch + patch first, then a GitHub PR when configured."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from loop_middleware.errors import GitHubError
from loop_middleware.patch._git import LocalGitPublisher
from loop_middleware.patch._github import GitHubPublisher
from loop_middleware.patch._guard import AllowedPaths
from loop_middleware.patch._result import PublishResult
from loop_middleware.types import Fix

__all__ = ["publish_fix"]

logger = logging.getLogger("loop_middleware.patch")


def publish_fix(
    fix: Fix,
    *,
    repo_dir: str | os.PathLike[str],
    allowed: AllowedPaths,
    out_dir: str | os.PathLike[str] | None = None,
    github: GitHubPublisher | None = None,
    base_branch: str | None = None,
    required_sections: list[str] | None = None,
    raise_github_errors: bool = False,
) -> PublishResult:
    """Commit ``fix`` to a local ``loop/fix-...`` branch, write its patch and PR body, and open
    a GitHub PR from the same branch name when ``github`` is given.

    The local step runs first and its result is kept whatever GitHub does: when GitHub fails,
    the result carries ``github_error``/``github_status`` (and a warning is logged) so the fix can
    still be reviewed from the ``.patch`` file or pushed by hand.

    Args:
        fix: The fix to ship.
        repo_dir: The host agent's git repository.
        allowed: The allow-list of files a fix may touch.
        out_dir: Where ``<branch>.patch`` / ``<branch>.md`` go (default: inside the git dir).
        github: A configured :class:`GitHubPublisher`, or ``None`` for offline use.
        base_branch: The local base branch (default: the current branch).
        required_sections: Headings a Markdown prompt must keep (default: every heading).
        raise_github_errors: Raise :class:`GitHubError` instead of recording it.

    Raises:
        PathNotAllowedError, ContractViolationError, PatchError: The fix was refused; nothing
            was written.
        GitHubError: Only with ``raise_github_errors=True``.
    """
    local = LocalGitPublisher(
        repo_dir, allowed, base_branch, out_dir=out_dir, required_sections=required_sections
    )
    result = local.publish(fix)
    if github is None:
        return result
    try:
        pr = github.publish(fix, branch=result.branch)
    except GitHubError as exc:
        if raise_github_errors:
            raise
        logger.warning(
            "GitHub step failed for fix %s; local branch %s and %s are kept: %s",
            fix.id,
            result.branch,
            result.patch_path,
            exc,
        )
        return replace(result, github_error=str(exc), github_status=exc.status)
    return result.with_pr(pr.url, pr.number, pr.created)
