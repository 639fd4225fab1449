"""Stage 5: ship a fix as a reviewable change to the host's own files.

Offline, a fix becomes a local git branch + ``.patch`` file + PR body (Markdown); with a token it
is also pushed and opened as a draft pull request through PyGithub (GitHub Enterprise via
``base_url``). Only files matching the host's allowed globs can ever be touched, and nothing is
ever merged.
"""

from ._body import FOOTER, code_fence, commit_message, escape_markdown, render_pr_body
from ._contract import (
    apply_unified_diff,
    check_contract,
    check_file_contract,
    make_diff,
    markdown_headings,
    template_variables,
)
from ._git import LocalGitPublisher
from ._github import GitHubPR, GitHubPublisher
from ._guard import AllowedPaths, diff_paths
from ._publish import publish_fix
from ._result import PublishResult, branch_name

__all__ = [
    "FOOTER",
    "AllowedPaths",
    "GitHubPR",
    "GitHubPublisher",
    "LocalGitPublisher",
    "PublishResult",
    "apply_unified_diff",
    "branch_name",
    "check_contract",
    "check_file_contract",
    "code_fence",
    "commit_message",
    "diff_paths",
    "escape_markdown",
    "make_diff",
    "markdown_headings",
    "publish_fix",
    "render_pr_body",
    "template_variables",
]
