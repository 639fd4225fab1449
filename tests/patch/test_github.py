"""The GitHub path, against a loopback GitHub Enterprise whose every request is checked against
GitHub's official OpenAPI description."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from github import GithubException

from loop_middleware.errors import GitHubError, PatchError, PathNotAllowedError
from loop_middleware.patch._body import FOOTER
from loop_middleware.patch._contract import make_diff
from loop_middleware.patch._github import NEEDS_POLICY_LABEL, GitHubPublisher
from loop_middleware.patch._guard import AllowedPaths
from loop_middleware.patch._publish import publish_fix
from loop_middleware.patch._result import branch_name
from loop_middleware.types import Fix, FixKind
from tests.patch._fake_github import FakeGitHub
from tests.patch._openapi import MultiValidator, SpecViolation
from tests.patch.conftest import SUPPORT_PROMPT, TOKEN, git

ALLOWED = AllowedPaths(["prompts/**/*.md", "agent.yaml"])
AFTER = SUPPORT_PROMPT.replace("Refunds are possible.\n", "Refunds are possible within 30 days.\n")
FLOW = [
    "repos/get",
    "pulls/list",
    "pulls/list",
    "repos/get-branch",
    "repos/get-content",
    "git/create-ref",
    "repos/create-or-update-file-contents",
    "pulls/create",
    "issues/get",
    "issues/update",
]


def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture everything, PyGithub's request log included (its "github" logger is at INFO)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github")


def make_fix(**kw: object) -> Fix:
    fields: dict[str, object] = dict(
        id="fix-1",
        diagnosis_id="diag-refund",
        kind=FixKind.PROMPT_EDIT,
        target_file="prompts/support.md",
        diff=make_diff("prompts/support.md", SUPPORT_PROMPT, AFTER),
        title="State the refund window",
        rationale="Refund threads escalate 3x more (n=212). A user wrote: <b>@support-team</b> help",
        metric="escalation rate in intent refund",
        sample_size_needed=150,
    )
    fields.update(kw)
    return Fix(**fields)  # type: ignore[arg-type]


def publisher(
    fake: FakeGitHub, token: str = TOKEN, repo: str = "acme/agent", **kw: object
) -> GitHubPublisher:
    return GitHubPublisher(repo, token, allowed=ALLOWED, base_url=fake.api_url, **kw)  # type: ignore[arg-type]


def test_opens_a_draft_pr_with_title_body_labels(
    fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    debug_logs(caplog)
    repo = fake_github.repos["acme/agent"]
    main_before = repo.branches["main"]
    pr = publisher(fake_github).publish(make_fix())

    assert pr.created and pr.number == 1
    assert pr.url == f"{fake_github.root}/acme/agent/pull/1"
    assert fake_github.ops() == FLOW
    stored = repo.pulls[0]
    assert stored["title"] == "State the refund window"
    assert stored["draft"] is True
    assert stored["labels"] == ["loop-middleware"]
    assert stored["head"] == branch_name(make_fix()) and stored["base"] == "main"
    assert FOOTER in stored["body"]
    assert "&lt;b&gt;@\u200bsupport-team" in stored["body"]
    assert "+Refunds are possible within 30 days." in stored["body"]
    # The base branch never moved; the fix branch holds the new text.
    assert repo.branches["main"] == main_before
    assert repo.commits[repo.branches[stored["head"]]]["prompts/support.md"] == AFTER
    assert repo.commits[main_before]["prompts/support.md"] == SUPPORT_PROMPT
    # The token went over the wire, and nowhere else.
    assert set(fake_github.auth_headers) == {f"token {TOKEN}"}
    assert "github.Requester" in {r.name for r in caplog.records}  # PyGithub did log requests
    assert TOKEN not in caplog.text


def test_a_fix_waiting_for_policy_text_is_a_labelled_draft_whatever_the_setting(
    fake_github: FakeGitHub,
) -> None:
    hole = "<refund window: how many days customers have>"
    after = SUPPORT_PROMPT + f"\n## Refund policy\n- {hole}\n"
    fix = make_fix(diff=make_diff("prompts/support.md", SUPPORT_PROMPT, after), placeholders=[hole])
    publisher(fake_github, draft=False).publish(fix)
    stored = fake_github.repos["acme/agent"].pulls[0]
    assert stored["draft"] is True
    assert stored["labels"] == ["loop-middleware", NEEDS_POLICY_LABEL]
    assert "the reviewer must write the policy" in stored["body"] and hole in stored["body"]
    assert fake_github.violations == []


def test_a_finished_fix_follows_the_draft_setting(fake_github: FakeGitHub) -> None:
    publisher(fake_github, draft=False).publish(make_fix())
    stored = fake_github.repos["acme/agent"].pulls[0]
    assert stored["draft"] is False and stored["labels"] == ["loop-middleware"]


def test_duplicate_pr_for_the_same_diagnosis_is_skipped(fake_github: FakeGitHub) -> None:
    gh = publisher(fake_github)
    first = gh.publish(make_fix())
    n_requests = len(fake_github.requests)
    again = gh.publish(make_fix(id="fix-1b"))
    assert (again.number, again.created) == (first.number, False)
    assert fake_github.ops()[n_requests:] == ["repos/get", "pulls/list"]  # found by exact head
    # Another fix for the same diagnosis, with another title (so another branch slug).
    other = gh.publish(make_fix(id="fix-2", title="Completely different words"))
    assert (other.number, other.created, other.branch) == (first.number, False, first.branch)
    assert len(fake_github.repos["acme/agent"].pulls) == 1
    assert "pulls/create" not in fake_github.ops()[n_requests:]


def test_a_half_done_publish_is_resumed_without_duplicates(fake_github: FakeGitHub) -> None:
    fake_github.fail("POST", r"/pulls$", 502, {"message": "Server Error"})
    gh = publisher(fake_github)
    with pytest.raises(GitHubError) as err:
        gh.publish(make_fix())
    assert err.value.status == 502
    repo = fake_github.repos["acme/agent"]
    assert repo.pulls == [] and branch_name(make_fix()) in repo.branches
    n_requests = len(fake_github.requests)
    pr = gh.publish(make_fix())
    assert pr.created and len(repo.pulls) == 1
    ops = fake_github.ops()[n_requests:]
    assert "git/create-ref" in ops  # answered 422 "Reference already exists": branch reused
    assert "repos/create-or-update-file-contents" not in ops  # content already there


def test_refused_fix_sends_nothing(fake_github: FakeGitHub) -> None:
    fix = make_fix(diff=make_diff(".github/workflows/ci.yml", "a\n", "b\n"))
    with pytest.raises(PathNotAllowedError):
        publisher(fake_github).publish(fix)
    assert fake_github.requests == []
    main_before = fake_github.repos["acme/agent"].branches["main"]
    for branch in ("main", "feature/x"):
        with pytest.raises(PatchError, match="refusing to write to branch"):
            publisher(fake_github).publish(make_fix(), branch=branch)
    assert fake_github.requests == []
    assert fake_github.repos["acme/agent"].branches["main"] == main_before


def test_validator_rejects_wrong_bodies_params_and_paths(openapi: MultiValidator) -> None:
    ok = {"title": "t", "head": "loop/fix-1", "base": "main", "body": "b", "draft": True}
    assert (
        openapi.validate("POST", "/repos/acme/agent/pulls", {}, json.dumps(ok).encode())
        == "pulls/create"
    )
    with pytest.raises(SpecViolation, match=r"body at draft: 'yes' is not of type 'boolean'"):
        openapi.validate(
            "POST", "/repos/acme/agent/pulls", {}, json.dumps({**ok, "draft": "yes"}).encode()
        )
    with pytest.raises(SpecViolation, match="'head' is a required property"):
        openapi.validate(
            "POST", "/repos/acme/agent/pulls", {}, json.dumps({"base": "main"}).encode()
        )
    with pytest.raises(SpecViolation, match="requires a JSON body"):
        openapi.validate("POST", "/repos/acme/agent/git/refs", {}, b"")
    with pytest.raises(SpecViolation, match="'content' is a required property"):
        openapi.validate(
            "PUT",
            "/repos/acme/agent/contents/prompts/support.md",
            {},
            json.dumps({"message": "m"}).encode(),
        )
    with pytest.raises(SpecViolation, match="state='opened'"):
        openapi.validate("GET", "/repos/acme/agent/pulls", {"state": ["opened"]}, None)
    with pytest.raises(SpecViolation, match="undeclared query parameter 'labels'"):
        openapi.validate("GET", "/repos/acme/agent/pulls", {"labels": ["x"]}, None)
    with pytest.raises(SpecViolation, match="no operation"):
        openapi.validate("POST", "/repos/acme/agent/pulls/1/automerge", {}, b"{}")
    with pytest.raises(SpecViolation, match="is not an integer"):
        openapi.validate("PATCH", "/repos/acme/agent/issues/one", {}, b'{"labels": ["x"]}')


def test_validator_catches_pygithubs_bare_array_labels(fake_github: FakeGitHub) -> None:
    """Why the publisher labels through PATCH issues: PyGithub's add_to_labels sends a bare array,
    which GitHub's description of POST .../labels does not allow."""
    publisher(fake_github).publish(make_fix())
    gh = GitHubPublisher("acme/agent", TOKEN, allowed=ALLOWED, base_url=fake_github.api_url)
    issue = gh._gh.get_repo("acme/agent").get_issue(1)
    with pytest.raises(GithubException) as err:
        issue.add_to_labels("extra")
    assert err.value.status == 400
    assert len(fake_github.violations) == 1 and "issues/add-labels" in fake_github.violations[0]
    assert "['extra'] is not valid under any of the given schemas" in fake_github.violations[0]
    fake_github.violations.clear()
    # The object form the description allows is accepted by the same validator and fake.
    resp = requests.post(
        f"{fake_github.api_url}/repos/acme/agent/issues/1/labels",
        json={"labels": ["extra"]},
        headers={"Authorization": f"token {TOKEN}"},
        timeout=5,
    )
    assert resp.status_code == 200 and fake_github.violations == []
    assert fake_github.repos["acme/agent"].pulls[0]["labels"] == ["loop-middleware", "extra"]


def _assert_secret_safe(err: GitHubError, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for s in secrets:
        assert s not in str(err) and s not in repr(err) and s not in caplog.text


@pytest.mark.parametrize(
    ("setup", "status", "phrases"),
    [
        (
            lambda f: f.fail(
                "POST", r"/git/refs$", 403, {"message": "Resource not accessible by integration"}
            ),
            403,
            ["Resource not accessible", "contents: write", "creating branch"],
        ),
        (
            lambda f: f.fail("GET", r"/branches/main$", 404, {"message": "Branch not found"}),
            404,
            ["Branch not found", "base_branch 'main'"],
        ),
        (
            lambda f: f.fail(
                "POST",
                r"/pulls$",
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": "Draft pull requests are not supported in this repository.",
                        }
                    ],
                },
            ),
            422,
            [
                "Validation Failed",
                "Draft pull requests are not supported",
                "opening the pull request",
            ],
        ),
        (
            lambda f: f.fail(
                "GET",
                r"^/repos/acme/agent$",
                403,
                {"message": "API rate limit exceeded for user ID 1."},
                {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 120)},
            ),
            403,
            ["rate limit exceeded", "resets at 20", "Publish again after the reset"],
        ),
        (
            lambda f: f.fail(
                "GET",
                r"/pulls$",
                429,
                {"message": "You have exceeded a secondary rate limit."},
                {"Retry-After": "30"},
            ),
            429,
            ["rate limit", "retry after 30 s"],
        ),
    ],
    ids=["403", "404", "422", "rate-limit", "secondary-rate-limit"],
)
def test_github_errors_are_mapped(
    fake_github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[FakeGitHub], None],
    status: int,
    phrases: list[str],
) -> None:
    debug_logs(caplog)
    setup(fake_github)
    with pytest.raises(GitHubError) as err:
        publisher(fake_github).publish(make_fix())
    assert err.value.status == status
    for phrase in phrases:
        assert phrase in str(err.value)
    _assert_secret_safe(err.value, caplog, TOKEN)


def test_bad_token_and_unknown_repository(
    fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    debug_logs(caplog)
    wrong = "ghp_WRONGtoken_should_never_show_up"
    gh = publisher(fake_github, token=wrong)
    assert wrong not in repr(gh)
    with pytest.raises(GitHubError) as err:
        gh.publish(make_fix())
    assert err.value.status == 401 and "rejected the token" in str(err.value)
    _assert_secret_safe(err.value, caplog, wrong, TOKEN)
    with pytest.raises(GitHubError) as err404:
        publisher(fake_github, repo="acme/missing").publish(make_fix())
    assert err404.value.status == 404 and "repo_full_name" in str(err404.value)
    _assert_secret_safe(err404.value, caplog, TOKEN)


def test_unreachable_github(isolated_git: None) -> None:
    gh = GitHubPublisher(
        "acme/agent", TOKEN, allowed=ALLOWED, base_url="http://127.0.0.1:9/api/v3", timeout=2
    )
    with pytest.raises(GitHubError) as err:
        gh.publish(make_fix())
    assert err.value.status is None and "could not reach GitHub" in str(err.value)
    assert TOKEN not in str(err.value)


def test_publish_fix_local_then_github(host_repo: Path, fake_github: FakeGitHub) -> None:
    result = publish_fix(
        make_fix(), repo_dir=host_repo, allowed=ALLOWED, github=publisher(fake_github)
    )
    assert result.created and result.pr_created and result.pr_number == 1
    assert result.pr_url == f"{fake_github.root}/acme/agent/pull/1"
    assert fake_github.repos["acme/agent"].pulls[0]["head"] == result.branch
    assert git(host_repo, "show", f"{result.branch}:prompts/support.md") == AFTER
    updated = result.apply_to(make_fix())
    assert (updated.status, updated.branch, updated.pr_url) == (
        "opened",
        result.branch,
        result.pr_url,
    )
    again = publish_fix(
        make_fix(id="fix-9"), repo_dir=host_repo, allowed=ALLOWED, github=publisher(fake_github)
    )
    assert (again.created, again.pr_created, again.pr_number) == (False, False, 1)


def test_github_failure_keeps_the_local_branch(
    host_repo: Path, fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    debug_logs(caplog)
    fake_github.fail(
        "POST", r"/pulls$", 403, {"message": "Resource not accessible by integration"}, times=2
    )
    result = publish_fix(
        make_fix(), repo_dir=host_repo, allowed=ALLOWED, github=publisher(fake_github)
    )
    assert result.pr_url is None and result.github_status == 403
    assert result.github_error is not None and "Resource not accessible" in result.github_error
    assert git(host_repo, "rev-parse", result.branch).strip() == result.commit_sha
    assert result.patch_path.is_file() and result.body_path.is_file()
    assert any(
        r.levelno == logging.WARNING and result.branch in r.getMessage() for r in caplog.records
    )
    # the local branch + patch + body stand as the reviewable proposal; the GitHub error is kept
    assert result.apply_to(make_fix()).status == "opened"
    with pytest.raises(GitHubError):
        publish_fix(
            make_fix(),
            repo_dir=host_repo,
            allowed=ALLOWED,
            github=publisher(fake_github),
            raise_github_errors=True,
        )
    assert git(host_repo, "rev-parse", result.branch).strip() == result.commit_sha
    assert TOKEN not in caplog.text
