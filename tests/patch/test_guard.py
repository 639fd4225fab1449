"""The allowed-path guard: globs, refusals, symlinks, diff headers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loop_middleware.errors import PatchError, PathNotAllowedError
from loop_middleware.patch._contract import make_diff
from loop_middleware.patch._guard import AllowedPaths

ALLOWED = AllowedPaths(["prompts/**/*.md", "agent.yaml"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("prompts/support.md", "prompts/support.md"),
        ("prompts/en/billing/refunds.md", "prompts/en/billing/refunds.md"),
        ("./prompts//support.md", "prompts/support.md"),
        ("prompts\\support.md", "prompts/support.md"),
        ("agent.yaml", "agent.yaml"),
    ],
)
def test_allowed_paths_are_normalised(given: str, expected: str) -> None:
    assert ALLOWED.check(given) == expected


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("app.py", "none of the allowed globs"),
        ("prompts/support.txt", "none of the allowed globs"),
        ("sub/agent.yaml", "none of the allowed globs"),  # globs are anchored at the root
        ("prompts.md", "none of the allowed globs"),
        ("/etc/passwd", "absolute"),
        ("/work/repo/prompts/support.md", "absolute"),
        ("C:/prompts/support.md", "absolute"),
        ("../other/prompts/support.md", "traversal"),
        ("prompts/../../etc/passwd.md", "traversal"),
        ("prompts/../app.py", "traversal"),
        ("", "empty"),
        ("prompts/evil\n.md", "control characters"),
    ],
)
def test_disallowed_paths_are_refused(given: str, why: str) -> None:
    with pytest.raises(PathNotAllowedError, match=why):
        ALLOWED.check(given)


@pytest.mark.parametrize(
    "given",
    [
        ".github/workflows/ci.yml",
        ".github/workflows/prompts/x.md",
        ".git/config",
        "prompts/.git/hooks/x.md",
    ],
)
def test_repository_metadata_and_ci_refused_even_when_globs_allow_everything(given: str) -> None:
    everything = AllowedPaths(["**"])
    assert everything.check("app.py") == "app.py"
    with pytest.raises(PathNotAllowedError):
        everything.check(given)


def test_negated_glob_excludes() -> None:
    allowed = AllowedPaths(["prompts/**/*.md", "!prompts/legal/**"])
    assert allowed.check("prompts/support.md") == "prompts/support.md"
    with pytest.raises(PathNotAllowedError):
        allowed.check("prompts/legal/terms.md")


def test_empty_allow_list_is_a_configuration_error() -> None:
    with pytest.raises(PatchError, match="at least one glob"):
        AllowedPaths([])


def test_symlink_escaping_the_repository_is_refused(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "prompts").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text("x")
    os.symlink(outside / "secret.md", repo / "prompts" / "leak.md")
    os.symlink(outside, repo / "prompts" / "linked")
    (repo / "prompts" / "ok.md").write_text("fine")
    assert ALLOWED.check("prompts/ok.md", repo_root=repo) == "prompts/ok.md"
    with pytest.raises(PathNotAllowedError, match="escapes the repository"):
        ALLOWED.check("prompts/leak.md", repo_root=repo)
    with pytest.raises(PathNotAllowedError, match="escapes the repository"):
        ALLOWED.check("prompts/linked/secret.md", repo_root=repo)
    # Without the filesystem the same name passes the glob: the root is what catches it.
    assert ALLOWED.check("prompts/leak.md") == "prompts/leak.md"


def test_symlink_inside_the_repository_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "app.md").write_text("x")
    os.symlink(tmp_path / "app.md", tmp_path / "prompts" / "alias.md")
    with pytest.raises(PathNotAllowedError, match="is a symlink"):
        ALLOWED.check("prompts/alias.md", repo_root=tmp_path)


def test_diff_headers_must_name_the_target() -> None:
    good = make_diff("prompts/support.md", "a\n", "b\n")
    assert ALLOWED.check_diff(good, target_file="prompts/support.md") == "prompts/support.md"
    elsewhere = make_diff(".github/workflows/ci.yml", "a\n", "b\n")
    with pytest.raises(PathNotAllowedError, match=r"\.github/workflows"):
        ALLOWED.check_diff(elsewhere, target_file="prompts/support.md")
    other_prompt = make_diff("prompts/billing.md", "a\n", "b\n")
    with pytest.raises(PathNotAllowedError, match=r"fix targets 'prompts/support\.md'"):
        ALLOWED.check_diff(other_prompt, target_file="prompts/support.md")


def test_diff_touching_a_second_file_is_refused() -> None:
    two = make_diff("prompts/support.md", "a\n", "b\n") + make_diff("app.py", "x\n", "y\n")
    with pytest.raises(PathNotAllowedError, match=r"names 'app\.py'"):
        ALLOWED.check_diff(two, target_file="prompts/support.md")
    both_allowed = make_diff("prompts/support.md", "a\n", "b\n") + make_diff(
        "agent.yaml", "x\n", "y\n"
    )
    with pytest.raises(PathNotAllowedError, match="exactly one file"):
        ALLOWED.check_diff(both_allowed)
    # Without `diff --git` headers the ---/+++ pair alone is checked.
    bare = "".join(
        line for line in two.splitlines(keepends=True) if not line.startswith("diff --git")
    )
    with pytest.raises(PathNotAllowedError, match="exactly one file"):
        ALLOWED.check_diff(bare, target_file="prompts/support.md")


def test_diff_with_mismatched_git_header_is_refused() -> None:
    smuggled = make_diff("prompts/support.md", "a\n", "b\n").replace(
        "diff --git a/prompts/support.md b/prompts/support.md", "diff --git a/app.py b/app.py"
    )
    with pytest.raises(PathNotAllowedError, match="diff --git"):
        ALLOWED.check_diff(smuggled, target_file="prompts/support.md")


def test_diff_renaming_or_deleting_is_refused() -> None:
    rename = "--- a/prompts/a.md\n+++ b/prompts/b.md\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(PathNotAllowedError, match="renames"):
        ALLOWED.check_diff(rename)
    delete = "--- a/prompts/a.md\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n"
    with pytest.raises(PathNotAllowedError, match="deletes"):
        ALLOWED.check_diff(delete)


def test_traversal_inside_diff_headers_is_refused() -> None:
    evil = "--- a/prompts/../../etc/passwd.md\n+++ b/prompts/../../etc/passwd.md\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(PathNotAllowedError, match="traversal"):
        ALLOWED.check_diff(evil)


def test_garbage_is_not_a_diff() -> None:
    with pytest.raises(PatchError):
        ALLOWED.check_diff("--- a/prompts/a.md\n+++ b/prompts/a.md\n@@ -1,3 +1,3 @@\n-a\n")
