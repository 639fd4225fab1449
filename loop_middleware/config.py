"""Settings of the improvement loop: where data lives, what may be changed, how to ship.

Read from ``LOOP_*`` environment variables (what ``langgraph dev`` and CI use), overridable per
run through LangGraph's ``config["configurable"]["loop"]`` or CLI flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .errors import ConfigError

__all__ = ["DEFAULT_ALLOWED_GLOBS", "LoopConfig"]

DEFAULT_ALLOWED_GLOBS = ["prompts/**/*.md", "**/prompts/**/*.md", "agent.yaml", "**/agent.yaml"]


class LoopConfig(BaseModel):
    """Everything the companion graph and the CLI need to know about the host."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = None
    """Store URL (SQLAlchemy) or SQLite path; None = ``$LOOP_DATABASE_URL`` or ``./loop.db``."""
    repo_dir: str = "."
    """The host agent's git repository: where its prompt and config files live."""
    allowed_globs: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_GLOBS))
    """The only files a fix may ever change (gitignore-style globs relative to ``repo_dir``),
    whatever a conversation says."""
    required_sections: list[str] = Field(default_factory=list)
    """Markdown headings every prompt must keep after a fix."""
    config_files: list[str] = Field(default_factory=list)
    """Harness/config files (YAML, JSON, TOML) that config fixes may edit."""
    base_branch: str | None = None
    """Branch fixes start from; None = the repository's current branch."""
    out_dir: str | None = None
    """Where ``.patch`` files and PR bodies go; None = inside the repository's git directory."""
    github_repo: str | None = None
    """``owner/name``; with a token, fixes are pushed and opened as draft pull requests."""
    github_token: SecretStr | None = None
    """GitHub token (never logged or stored)."""
    github_base_url: str = "https://api.github.com"
    """GitHub API URL; GitHub Enterprise: ``https://HOST/api/v3``."""
    agent_factory: str | None = None
    """``module:function`` building the host agent from a prompt directory, for the replay
    guardrail; None = no replay."""
    agent_config: str | None = None
    """The config file passed to the agent factory (relative to ``repo_dir``)."""
    embedder: Literal["default", "fast", "tfidf"] = "default"
    """Intent embedding: the local MiniLM model, its fast static distillation, or TF-IDF."""
    alpha: float = 0.05
    """False-discovery / error rate of diagnoses and keep/revert decisions."""
    min_group_size: int = 5
    """Aggregation privacy: intents and diagnoses covering fewer distinct threads are not shown
    in reports or PRs."""
    workers: int = Field(default=1, ge=1)
    """Worker processes (spawned) that run signal detection and intent assignment units; with
    ``ray_address``, the CPUs of a local Ray."""
    ray_address: str | None = None
    """Run those units on Ray: ``"local"`` or a cluster address (``ray://head:10001``); the
    store must be one every node reaches (PostgreSQL). Needs ``loop-middleware[ray]``."""
    diagnose_sample_size: int = Field(default=10_000, ge=1)
    """Threads diagnosis and fix proposal load (a deterministic uniform sample) for mechanisms
    and evidence; every diagnosis's numbers are still counted over all sessions by the
    database (see :func:`~loop_middleware.diagnose.diagnose_store`)."""
    llm_model: str | None = None
    """Optional LLM (``provider/model`` for instructor, e.g. ``openai/gpt-4o-mini``) that writes
    root-cause sentences; the offline path is used when None or when it fails."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LoopConfig:
        """Settings from ``LOOP_*`` variables (``GITHUB_TOKEN`` too), then ``overrides``."""
        e = os.environ if env is None else env
        values: dict[str, Any] = {}
        simple = {
            "database_url": "LOOP_DATABASE_URL", "repo_dir": "LOOP_REPO_DIR",
            "base_branch": "LOOP_BASE_BRANCH", "out_dir": "LOOP_OUT_DIR",
            "github_repo": "LOOP_GITHUB_REPO", "github_base_url": "LOOP_GITHUB_BASE_URL",
            "agent_factory": "LOOP_AGENT_FACTORY", "agent_config": "LOOP_AGENT_CONFIG",
            "embedder": "LOOP_EMBEDDER", "llm_model": "LOOP_LLM_MODEL",
            "ray_address": "LOOP_RAY_ADDRESS",
        }
        for field, var in simple.items():
            if e.get(var):
                values[field] = e[var]
        for field, var in (("allowed_globs", "LOOP_ALLOWED_GLOBS"),
                           ("required_sections", "LOOP_REQUIRED_SECTIONS"),
                           ("config_files", "LOOP_CONFIG_FILES")):
            if e.get(var):
                values[field] = [p.strip() for p in e[var].split(",") if p.strip()]
        for field, var, typ in (("alpha", "LOOP_ALPHA", float), ("min_group_size", "LOOP_MIN_GROUP_SIZE", int),
                                ("diagnose_sample_size", "LOOP_DIAGNOSE_SAMPLE_SIZE", int),
                                ("workers", "LOOP_WORKERS", int)):
            if e.get(var):
                try:
                    values[field] = typ(e[var])
                except ValueError:
                    raise ConfigError(f"{var}={e[var]!r} is not a valid {typ.__name__}") from None
        token = e.get("LOOP_GITHUB_TOKEN") or e.get("GITHUB_TOKEN")
        if token:
            values["github_token"] = token
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
            raise ConfigError(f"invalid loop settings: {exc}") from None

    @classmethod
    def resolve(cls, config: Mapping[str, Any] | None) -> LoopConfig:
        """The settings of a graph run: environment, then ``configurable["loop"]`` overrides."""
        conf = (config or {}).get("configurable") or {}
        loop = conf.get("loop") or {}
        if isinstance(loop, LoopConfig):
            return loop
        if not isinstance(loop, Mapping):
            raise ConfigError("configurable['loop'] must be a mapping of LoopConfig fields")
        return cls.from_env(**dict(loop))
