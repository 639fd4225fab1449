"""Local git publishing in a real temporary repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loop_middleware.errors import ContractViolationError, PatchError, PathNotAllowedError
from loop_middleware.patch._body import FOOTER
from loop_middleware.patch._contract import make_diff
from loop_middleware.patch._git import LocalGitPublisher
from loop_middleware.patch._guard import AllowedPaths
from loop_middleware.patch._result import diagnosis_key
from loop_middleware.types import Fix, FixKind
from tests.patch.conftest import SUPPORT_PROMPT, git

ALLOWED = AllowedPaths(["prompts/**/*.md", "agent.yaml"])
AFTER = SUPPORT_PROMPT.replace(
    "Refunds are possible.\n", "Refunds are possible within 30 days of purchase.\n"
)


def make_fix(before: str = SUPPORT_PROMPT, after: str = AFTER, **kw: object) -> Fix:
    fields: dict[str, object] = dict(
        id="fix-1",
        diagnosis_id="diag-refund-window",
        kind=FixKind.PROMPT_EDIT,
        target_file="prompts/support.md",
        diff=make_diff("prompts/support.md", before, after),
        title="State the refund window",
        rationale="Refund threads end in escalation 3.1x more often (n=212, q=0.003).",
        metric="escalation rate in intent refund",
        sample_size_needed=150,
    )
    fields.update(kw)
    return Fix(**fields)  # type: ignore[arg-type]


def snapshot(repo: Path) -> dict[str, str]:
    """Everything of the host checkout a publish must not touch."""
    return {
        "HEAD": git(repo, "symbolic-ref", "HEAD"),
        "head_sha": git(repo, "rev-parse", "HEAD"),
        "main": git(repo, "rev-parse", "refs/heads/main"),
        "status": git(repo, "status", "--porcelain=v1", "--untracked-files=all"),
        "index": (repo / ".git" / "index").read_bytes().hex(),
        "cached": git(repo, "diff", "--cached"),
        "worktree": git(repo, "diff"),
        "file": (repo / "prompts" / "support.md").read_text(),
    }


def loop_branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/loop/").split()


def test_publish_creates_branch_commit_patch_and_body(host_repo: Path) -> None:
    before = snapshot(host_repo)
    result = LocalGitPublisher(host_repo, ALLOWED).publish(make_fix())

    assert result.created
    assert (
        result.branch == f"loop/fix-{diagnosis_key('diag-refund-window')}-state-the-refund-window"
    )
    assert loop_branches(host_repo) == [result.branch]
    assert git(host_repo, "rev-parse", result.branch).strip() == result.commit_sha
    assert git(host_repo, "rev-parse", f"{result.commit_sha}^").strip() == before["main"].strip()
    # The file changed on the branch only, and only that file changed.
    assert git(host_repo, "show", f"{result.branch}:prompts/support.md") == AFTER
    assert git(host_repo, "show", "main:prompts/support.md") == SUPPORT_PROMPT
    assert git(host_repo, "diff", "--name-only", "main", result.branch).split() == [
        "prompts/support.md"
    ]
    # The host checkout is untouched: HEAD, branch tip, index, working tree.
    assert snapshot(host_repo) == before
    # Commit message: title, rationale, trailers; identity falls back when none is configured.
    assert (
        git(host_repo, "log", "-1", "--format=%s", result.branch).strip()
        == "State the refund window"
    )
    assert "n=212" in git(host_repo, "log", "-1", "--format=%b", result.branch)
    trailers = git(host_repo, "log", "-1", "--format=%(trailers:only,unfold)", result.branch)
    assert "Loop-Diagnosis: diag-refund-window" in trailers and "Loop-Fix: fix-1" in trailers
    assert (
        git(host_repo, "log", "-1", "--format=%an <%ae>", result.branch).strip()
        == "loop-middleware <loop@localhost>"
    )
    # Patch and body files; by default inside the git dir, so the working tree stays clean.
    assert result.patch_path == host_repo / ".git" / "loop-middleware" / f"{result.branch}.patch"
    subprocess.run(
        ["git", "-C", str(host_repo), "apply", "--check", str(result.patch_path)],
        check=True,
        capture_output=True,
    )
    body = result.body_path.read_text()
    assert "## State the refund window" in body and FOOTER in body
    assert "+Refunds are possible within 30 days of purchase." in body


def test_second_publish_for_the_same_diagnosis_returns_the_existing_branch(
    host_repo: Path, tmp_path: Path
) -> None:
    publisher = LocalGitPublisher(host_repo, ALLOWED)
    first = publisher.publish(make_fix())
    other = make_fix(
        id="fix-2",
        title="Another title for the same diagnosis",
        after=SUPPORT_PROMPT.replace("Be brief and kind.", "Be brief."),
    )
    again = publisher.publish(other, out_dir=tmp_path / "out")
    assert not again.created
    assert (again.branch, again.commit_sha) == (first.branch, first.commit_sha)
    assert loop_branches(host_repo) == [first.branch]
    # The files describe what the branch holds, not the new fix's diff.
    assert again.patch_path.parent.parent == tmp_path / "out"
    assert "30 days of purchase" in again.body_path.read_text()
    # A fix for another diagnosis gets its own branch.
    third = publisher.publish(
        make_fix(
            id="fix-3", diagnosis_id="diag-tone", after=SUPPORT_PROMPT.replace("kind.", "warm.")
        )
    )
    assert third.created and sorted(loop_branches(host_repo)) == sorted(
        [first.branch, third.branch]
    )


def test_dirty_host_checkout_is_left_exactly_as_it_was(host_repo: Path) -> None:
    (host_repo / "prompts" / "support.md").write_text(SUPPORT_PROMPT + "\nWork in progress.\n")
    (host_repo / "app.py").write_text("print('staged')\n")
    git(host_repo, "add", "app.py")
    (host_repo / "notes.txt").write_text("untracked\n")
    before = snapshot(host_repo)
    result = LocalGitPublisher(host_repo, ALLOWED).publish(make_fix())
    assert snapshot(host_repo) == before
    # The fix was made against the committed base, not the work-in-progress file.
    assert "Work in progress" not in git(host_repo, "show", f"{result.branch}:prompts/support.md")
    assert git(host_repo, "show", f"{result.branch}:app.py") == "print('hi')\n"


def test_configured_identity_and_explicit_base_branch(host_repo: Path) -> None:
    git(host_repo, "config", "user.name", "Host Dev")
    git(host_repo, "config", "user.email", "dev@example.com")
    git(host_repo, "branch", "develop")
    develop = git(host_repo, "rev-parse", "develop").strip()
    result = LocalGitPublisher(host_repo, ALLOWED, base_branch="develop").publish(make_fix())
    assert result.base == "develop"
    assert git(host_repo, "rev-parse", f"{result.branch}^").strip() == develop
    assert git(host_repo, "rev-parse", "develop").strip() == develop  # base never moves
    assert (
        git(host_repo, "log", "-1", "--format=%an <%ae>", result.branch).strip()
        == "Host Dev <dev@example.com>"
    )


def test_not_a_git_repository(tmp_path: Path, isolated_git: None) -> None:
    with pytest.raises(PatchError, match="not inside a git work tree"):
        LocalGitPublisher(tmp_path, ALLOWED)
    with pytest.raises(PatchError, match="not a directory"):
        LocalGitPublisher(tmp_path / "missing", ALLOWED)


@pytest.mark.parametrize(
    ("fix_kw", "error", "match"),
    [
        (
            {"target_file": "app.py", "diff": make_diff("app.py", "print('hi')\n", "import os\n")},
            PathNotAllowedError,
            "allowed globs",
        ),
        (
            {"diff": make_diff(".github/workflows/ci.yml", "a\n", "b\n")},
            PathNotAllowedError,
            r"\.github/workflows",
        ),
        (
            {
                "diff": make_diff(
                    "prompts/support.md",
                    SUPPORT_PROMPT,
                    SUPPORT_PROMPT.replace("{customer_name}", "the customer"),
                )
            },
            ContractViolationError,
            "customer_name",
        ),
        (
            {
                "diff": make_diff(
                    "prompts/support.md",
                    SUPPORT_PROMPT.replace("## Tone", "## Voice"),
                    AFTER.replace("## Tone", "## Voice"),
                )
            },
            PatchError,
            "does not apply",
        ),
        ({"diff": ""}, PatchError, "empty diff"),
        ({"diagnosis_id": "two\nlines"}, PatchError, "single-line"),
    ],
)
def test_refused_fixes_write_nothing(
    host_repo: Path, fix_kw: dict[str, object], error: type[Exception], match: str
) -> None:
    before = snapshot(host_repo)
    with pytest.raises(error, match=match):
        LocalGitPublisher(host_repo, ALLOWED).publish(make_fix(**fix_kw))  # type: ignore[arg-type]
    assert loop_branches(host_repo) == []
    assert snapshot(host_repo) == before
    assert not (host_repo / ".git" / "loop-middleware").exists()


def test_symlinked_prompt_in_the_repository_is_refused(host_repo: Path) -> None:
    os.symlink("../app.py", host_repo / "prompts" / "link.md")
    git(host_repo, "add", "prompts/link.md")
    git(host_repo, "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q", "-m", "symlink")
    fix = make_fix(
        target_file="prompts/link.md", diff=make_diff("prompts/link.md", "print('hi')\n", "evil\n")
    )
    with pytest.raises(PathNotAllowedError, match="symlink"):
        LocalGitPublisher(host_repo, ALLOWED).publish(fix)
    # Even when the working tree no longer shows it, the base tree's mode 120000 is caught.
    (host_repo / "prompts" / "link.md").unlink()
    with pytest.raises(PathNotAllowedError, match="symlink"):
        LocalGitPublisher(host_repo, ALLOWED).publish(fix)
    assert loop_branches(host_repo) == []


def test_branch_name_taken_by_someone_else(host_repo: Path) -> None:
    fix = make_fix()
    from loop_middleware.patch._result import branch_name

    git(host_repo, "branch", branch_name(fix))
    with pytest.raises(PatchError, match="already exists and does not hold"):
        LocalGitPublisher(host_repo, ALLOWED).publish(fix)


def test_yaml_config_fix(host_repo: Path) -> None:
    before = (host_repo / "agent.yaml").read_text()
    fix = make_fix(
        kind=FixKind.CONFIG_CHANGE,
        target_file="agent.yaml",
        diff=make_diff("agent.yaml", before, before.replace("temperature: 0", "temperature: 0.2")),
        diagnosis_id="diag-temp",
    )
    result = LocalGitPublisher(host_repo, ALLOWED).publish(fix)
    assert "temperature: 0.2" in git(host_repo, "show", f"{result.branch}:agent.yaml")
    bad = make_fix(
        target_file="agent.yaml",
        diff=make_diff("agent.yaml", before, "model: [\n"),
        diagnosis_id="diag-bad",
    )
    with pytest.raises(ContractViolationError, match="invalid YAML"):
        LocalGitPublisher(host_repo, ALLOWED).publish(bad)
