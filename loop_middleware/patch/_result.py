"""What shipping a fix produced, and how its branch is named."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

from loop_middleware.types import Fix

__all__ = ["BRANCH_PREFIX", "TRAILER", "PublishResult", "branch_name", "diagnosis_key"]

BRANCH_PREFIX = "loop/fix-"
TRAILER = "Loop-Diagnosis"
"""The commit trailer naming the diagnosis a fix commit is for (one branch per diagnosis)."""


def diagnosis_key(diagnosis_id: str) -> str:
    """A short, stable, ref-safe key for a diagnosis id (8 hex digits of its SHA-256).

    Branch names carry it, so one diagnosis maps to one branch (and so one PR) whatever the fix's
    own id or title: that is what makes publishing idempotent locally and on GitHub.
    """
    return hashlib.sha256(diagnosis_id.encode("utf-8")).hexdigest()[:8]


def _slug(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:limit].rstrip("-")
    return slug or "prompt-fix"


def branch_name(fix: Fix) -> str:
    """``loop/fix-<diagnosis key>-<slug of the title>``, always a valid git ref name."""
    return f"{BRANCH_PREFIX}{diagnosis_key(fix.diagnosis_id)}-{_slug(fix.title)}"


@dataclass(frozen=True)
class PublishResult:
    """The outcome of publishing one fix.

    Attributes:
        branch: The local branch holding the fix commit (``loop/fix-...``).
        commit_sha: The fix commit on that branch.
        base: The base branch name (or commit, for a detached checkout) the fix was made on.
        patch_path: ``git format-patch`` output of the commit, for mailing or ``git am``.
        body_path: The PR body (Markdown).
        created: ``False`` when the branch for this diagnosis already existed and was returned.
        pr_url: The GitHub pull request, when GitHub was configured and succeeded.
        pr_number: Its number.
        pr_created: ``False`` when an open PR for the diagnosis already existed.
        github_error: Why the GitHub step failed (the local branch and patch are kept).
        github_status: The HTTP status of that failure, when there was one.
    """

    branch: str
    commit_sha: str
    base: str
    patch_path: Path
    body_path: Path
    created: bool = True
    pr_url: str | None = None
    pr_number: int | None = None
    pr_created: bool | None = None
    github_error: str | None = None
    github_status: int | None = None

    def with_pr(self, url: str, number: int, created: bool) -> PublishResult:
        """A copy with the pull request filled in."""
        return replace(self, pr_url=url, pr_number=number, pr_created=created)

    def apply_to(self, fix: Fix) -> Fix:
        """A copy of ``fix`` with ``branch``, ``pr_url`` and ``status`` updated.

        ``status`` becomes ``"opened"``: offline, the branch with its ``.patch`` file and PR
        body is the reviewable proposal; with GitHub, ``pr_url`` points at the draft PR.
        """
        update: dict[str, object] = {"branch": self.branch, "status": "opened"}
        if self.pr_url:
            update["pr_url"] = self.pr_url
        return fix.model_copy(update=update)
