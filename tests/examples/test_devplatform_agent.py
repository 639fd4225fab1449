"""The Kestrel Cloud example agent: factory, prompt/config-driven simulator, planted defects, traffic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from examples.devplatform_agent import (
    DEFAULT_CONFIG,
    DEFAULT_PROMPT_DIR,
    V1_PROMPT_DIR,
    build_agent,
    load_config,
    simulate,
    truncate_output,
)
from examples.devplatform_agent.agent import Docs, _load_projects, make_tools
from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.errors import ConfigError
from loop_middleware.extract import detect_signals
from tests._fakes import FakeToolModel

UPSELL = """## Plans and upgrades
- When a developer mentions limits, quotas, rate limits or 429 errors, recommend upgrading to
  the Team plan first; do not explain workarounds on the current plan.
"""
FORCED = "- Always reply in English, whatever language the developer writes in."


def fixed_prompts(tmp_path: Path, *, upsell: bool = True, forced: bool = True, src: Path = DEFAULT_PROMPT_DIR) -> Path:
    dst = tmp_path / f"prompts-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(src, dst)
    p = dst / "support.md"
    text = p.read_text(encoding="utf-8")
    assert UPSELL in text and FORCED in text
    if not upsell:
        text = text.replace(UPSELL, "")
    if not forced:
        text = text.replace(FORCED, "- Reply in the developer's language.")
    p.write_text(text, encoding="utf-8")
    return dst


def config_with(tmp_path: Path, **changes: Any) -> Path:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    for key, value in changes.items():
        old = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        text = text.replace(old, f"{key}: {value}")
    out = tmp_path / "agent.yaml"
    out.write_text(text, encoding="utf-8")
    return out


def chat(graph: Any, thread_id: str, *texts: str) -> list[dict[str, Any]]:
    cfg: Any = {"configurable": {"thread_id": thread_id}}
    out = []
    for text in texts:
        msgs = graph.invoke({"messages": [("user", text)]}, cfg)["messages"]
        start = max(i for i, m in enumerate(msgs) if isinstance(m, HumanMessage))
        turn = msgs[start + 1:]
        out.append({"reply": turn[-1].content,
                    "tools": [tc["name"] for m in turn if isinstance(m, AIMessage) for tc in m.tool_calls],
                    "results": {m.name: m.content for m in turn if isinstance(m, ToolMessage)}})
    return out


# --- factory and harness ---------------------------------------------------------------------------


def test_config_and_errors(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.max_tool_output_chars == 300 and cfg.prompt_files == ("support.md",)
    with pytest.raises(ConfigError, match="prompt directory not found"):
        build_agent(tmp_path / "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_tool_output_chars: lots\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(bad)
    bad.write_text("nonsense: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(bad)


def test_truncate_output() -> None:
    assert truncate_output("abc", 0) == "abc" and truncate_output("abc", 3) == "abc"
    assert truncate_output("abcdef", 4) == "abcd… [truncated: 2 more characters]"


def test_tools_run_under_create_agent_with_a_fake_host_model() -> None:
    cfg = load_config()
    tools = make_tools(Docs.from_dir(cfg.docs_dir), _load_projects(cfg.projects_file), max_output_chars=300)
    model = FakeToolModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "search_docs", "args": {"query": "rotate api key"},
                                           "id": "c1", "type": "tool_call"}]),
        AIMessage(content="Rotate it under Project → Settings → API keys."),
    ]))
    agent = create_agent(model, tools, system_prompt=(DEFAULT_PROMPT_DIR / "support.md").read_text())
    msgs = agent.invoke({"messages": [("user", "How do I rotate an API key?")]})["messages"]
    (result,) = [m for m in msgs if isinstance(m, ToolMessage)]
    # the harness policy applies to any host model: the page is cut at 300 characters
    assert result.content.startswith("[rotate-api-key] Rotate an API key")
    assert "[truncated:" in result.content and "Steps:" not in result.content
    assert msgs[-1].content.startswith("Rotate it")


def test_build_agent_accepts_a_fake_chat_model() -> None:
    model = FakeToolModel(messages=iter([AIMessage(content="Hello from the fake model.")]))
    (turn,) = chat(build_agent(model=model), "t", "hi")
    assert turn["reply"] == "Hello from the fake model."


# --- each planted defect shows, and disappears when its file is fixed -------------------------------


def test_a_truncated_docs_page_until_the_config_is_raised(tmp_path: Path) -> None:
    (cut,) = chat(build_agent(), "t", "How do I roll back a deploy to the previous deploy?")
    assert cut["tools"] == ["search_docs"] and "[truncated:" in cut["results"]["search_docs"]
    assert "cut off" in cut["reply"]
    (ok,) = chat(build_agent(config_path=config_with(tmp_path, max_tool_output_chars=0)), "t",
                 "How do I roll back a deploy to the previous deploy?")
    assert "kestrel rollback" in ok["reply"] and "cut off" not in ok["reply"]


def test_b_upsell_instead_of_help_until_the_instruction_goes(tmp_path: Path) -> None:
    (sold,) = chat(build_agent(), "t", "How do I get a quota increase for API requests?")
    assert sold["tools"] == [] and "Upgrading to the Team plan" in sold["reply"]
    (ok,) = chat(build_agent(fixed_prompts(tmp_path, upsell=False)), "t",
                 "How do I get a quota increase for API requests?")
    assert ok["tools"] == ["search_docs"] and "Request a quota increase" in ok["reply"]


def test_c_forced_english_until_the_language_rule_goes(tmp_path: Path) -> None:
    config = config_with(tmp_path, max_tool_output_chars=0)
    q = "¿Cómo puedo rotar la clave de API de mi proyecto? Creo que se filtró."
    (en,) = chat(build_agent(config_path=config), "t", q)
    assert en["reply"].startswith("From the docs")
    (es,) = chat(build_agent(fixed_prompts(tmp_path, forced=False), config), "t", q)
    assert es["reply"].startswith("Según la documentación") and "Rotar" in es["reply"]


def test_d_v2_dropped_the_domain_verification_step() -> None:
    q = "How do I set up SAML SSO for our organisation?"
    (v2,) = chat(build_agent(), "t", q)
    (v1,) = chat(build_agent(V1_PROMPT_DIR), "t", q)
    assert "Verify your email domain" in v1["reply"] and "Verify your email domain" not in v2["reply"]


# --- traffic ---------------------------------------------------------------------------------------


def test_traffic_is_captured_and_shows_the_defects(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    handler = LoopCallbackHandler(store, emit_spans=False)
    summary = simulate(60, seed=3, callbacks=[handler], thread_prefix="d")
    handler.close()
    threads = store.list_threads()
    assert len(threads) == 60 and summary.feedback_written > 0
    assert {"truncated_answer", "upsold", "wrong_language", "sso_step_missing"} <= set(summary.failures())
    kinds = {s.kind for s in detect_signals(threads)}
    # the generic detectors see the cut tool output and the reply in the wrong language
    assert {"tool_output_truncated", "language_mismatch"} <= kinds
    assert simulate(60, seed=3).failures() == summary.failures()  # deterministic


def test_all_fixes_remove_the_failures(tmp_path: Path) -> None:
    before = simulate(120, seed=5)
    fixed = fixed_prompts(tmp_path, upsell=False, forced=False, src=V1_PROMPT_DIR)
    after = simulate(120, seed=5, prompt_dir=fixed, config_path=config_with(tmp_path, max_tool_output_chars=0))
    assert before.resolved_rate < 0.6 and sum(before.failures().values()) > 40
    assert after.failures() == {} and after.resolved_rate > 0.95


# --- a small loop over the agent, offline ------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false",
                    *args], cwd=repo, check=True, capture_output=True)


def test_small_loop_over_the_agent_runs_offline(tmp_path: Path) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    from loop_middleware.config import LoopConfig
    from loop_middleware.graph import build_graph

    repo = tmp_path / "host"
    (repo / "prompts").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    cfg = load_config()
    (repo / "agent.yaml").write_text(
        DEFAULT_CONFIG.read_text(encoding="utf-8")
        .replace("docs_dir: kb", f"docs_dir: {cfg.docs_dir}")
        .replace("projects_file: data/projects.json", f"projects_file: {cfg.projects_file}"), encoding="utf-8")
    shutil.copy(V1_PROMPT_DIR / "support.md", repo / "prompts" / "support.md")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    db = tmp_path / "loop.db"
    store = Store(f"sqlite:///{db}")
    handler = LoopCallbackHandler(store, emit_spans=False)
    simulate(60, seed=1, prompt_dir=repo / "prompts", config_path=repo / "agent.yaml", callbacks=[handler],
             thread_prefix="v1")
    shutil.copy(DEFAULT_PROMPT_DIR / "support.md", repo / "prompts" / "support.md")
    _git(repo, "commit", "-qam", "v2")
    simulate(120, seed=2, prompt_dir=repo / "prompts", config_path=repo / "agent.yaml", callbacks=[handler],
             thread_prefix="v2")
    handler.close()

    loop = LoopConfig(database_url=f"sqlite:///{db}", repo_dir=str(repo), embedder="tfidf",
                      allowed_globs=["prompts/**/*.md", "agent.yaml"], config_files=["agent.yaml"],
                      agent_factory="examples.devplatform_agent:build_agent", agent_config="agent.yaml",
                      out_dir=str(tmp_path / "prs"))
    graph = build_graph(checkpointer=InMemorySaver())
    run: Any = {"configurable": {"thread_id": "loop", "loop": loop.model_dump()}}
    state = graph.invoke({}, config=run)
    assert state["diagnoses"], "the loop found nothing on an agent with four planted defects"
    kinds = {s.kind for s in store.load_signals()}
    assert {"tool_output_truncated", "language_mismatch", "frustration"} <= kinds
    fixes = state.get("fixes", [])
    assert all(f["target_file"] in ("prompts/support.md", "agent.yaml") for f in fixes)
    if "__interrupt__" in state:
        state = graph.invoke(Command(resume="approve_all"), config=run)
        assert len(state.get("published", [])) == len(fixes)
    store.close()
