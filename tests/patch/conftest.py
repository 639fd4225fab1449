"""Fixtures of the patch tests: a real temp git repo, GitHub's OpenAPI description, a fake GitHub."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.patch._fake_github import FakeGitHub
from tests.patch._openapi import INSTALL_HINT, MultiValidator, OpenAPIValidator, find_spec_files

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_FAKEtoken0123456789abcdefSECRET"

SUPPORT_PROMPT = """# Support agent

You are the support agent of {company}. The customer is {customer_name}.

## Refunds

Refunds are possible.

## Tone

Be brief and kind.
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No global/system git config: no identity, no signing, no hooks from the machine."""
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_INDEX_FILE",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def host_repo(tmp_path: Path, isolated_git: None) -> Path:
    """A host agent repository with one commit on ``main`` holding ``prompts/support.md``."""
    repo = tmp_path / "host"
    (repo / "prompts").mkdir(parents=True)
    (repo / "prompts" / "support.md").write_text(SUPPORT_PROMPT)
    (repo / "agent.yaml").write_text("model: small\ntemperature: 0\n")
    (repo / "app.py").write_text("print('hi')\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(
        repo,
        "-c",
        "user.name=Host Dev",
        "-c",
        "user.email=dev@example.com",
        "commit",
        "-q",
        "-m",
        "initial",
    )
    return repo


@pytest.fixture(scope="session")
def openapi() -> MultiValidator:
    """GitHub's REST description(s); fail in CI, skip locally, when not installed."""
    files = find_spec_files(REPO_ROOT)
    if not files:
        reason = f"GitHub's OpenAPI description (@octokit/openapi) is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return MultiValidator([OpenAPIValidator.from_file(f) for f in files])


@pytest.fixture
def fake_github(openapi: MultiValidator) -> Iterator[FakeGitHub]:
    """A running fake; fails the test if any request broke the spec and the test did not
    consume ``violations`` itself."""
    with FakeGitHub(openapi, TOKEN) as fake:
        fake.add_repo(
            "acme/agent", {"prompts/support.md": SUPPORT_PROMPT, "agent.yaml": "model: small\n"}
        )
        yield fake
    assert fake.violations == [], (
        f"requests that GitHub's OpenAPI description rejects: {fake.violations}"
    )
