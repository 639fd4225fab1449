"""A host: the example agent's files in a real git repository, and a store of its traffic."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from loop_middleware import Store
from loop_middleware.config import LoopConfig
from loop_middleware.demo import _host_repo, _ship_v2, _simulate, find_example


@dataclass
class Host:
    repo: Path
    db_url: str
    example: Path

    def config(self, **over: object) -> LoopConfig:
        base = dict(
            database_url=self.db_url, repo_dir=str(self.repo), embedder="default",
            allowed_globs=["prompts/**/*.md", "agent.yaml"], config_files=["agent.yaml"],
            out_dir=str(self.repo.parent / "prs"),
        )
        base.update(over)
        return LoopConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def _host_template(tmp_path_factory: pytest.TempPathFactory) -> Host:
    base = tmp_path_factory.mktemp("host")
    example = find_example(Path(__file__).resolve().parent)
    repo = base / "repo"
    _host_repo(example, repo)
    store = Store(f"sqlite:///{base / 'loop.db'}")
    _simulate(example, repo, store, 150, 11, "v1")
    _ship_v2(example, repo)
    _simulate(example, repo, store, 300, 12, "v2")
    store.close()
    return Host(repo=repo, db_url=f"sqlite:///{base / 'loop.db'}", example=example)


@pytest.fixture
def host(_host_template: Host, tmp_path: Path) -> Host:
    """A fresh copy of the host (repo + store) for one test."""
    repo = tmp_path / "repo"
    shutil.copytree(_host_template.repo, repo, symlinks=True)
    db = tmp_path / "loop.db"
    shutil.copy(_host_template.db_url.removeprefix("sqlite:///"), db)
    return Host(repo=repo, db_url=f"sqlite:///{db}", example=_host_template.example)
