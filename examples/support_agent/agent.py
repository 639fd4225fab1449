"""The Acme Pay customer-support agent: a LangGraph ``StateGraph`` built from files.

``build_agent(prompt_dir, config_path)`` is the *agent factory*. Everything the agent does comes
from the prompt files in ``prompt_dir`` (loaded with :func:`loop_middleware.load_prompt`, so every
LLM call is tied to its prompt version) and from the harness settings in ``agent.yaml``; nothing
is cached between two calls, so the loop can build the same agent on a *candidate* prompt
directory and replay conversations against it.

The graph is the classic tool loop: ``agent`` (the chat model with the tools bound) →
``tools_condition`` → ``tools`` (a ``ToolNode``) → ``agent`` ..., compiled with a checkpointer so
a conversation continues over several ``invoke`` calls on the same ``thread_id``.

Two harness behaviours matter for the planted defects (see ``DEFECTS.md``):

* only the last ``context_window_turns`` turns are sent to the model (older ones are cut, not
  summarised), so details given early in a long thread are lost;
* after ``max_tool_retries`` failed retries of tools in one turn, the model is told to stop
  calling tools (it apologises instead).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, TypedDict

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from loop_middleware import load_prompt
from loop_middleware.errors import ConfigError
from loop_middleware.types import PromptVersion

from ._tools import KnowledgeBase, OrderBook, make_tools
from .simulator import HARNESS_RETRIES_EXHAUSTED, MODEL_NAME, SupportSimulatorModel

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PROMPT_DIR",
    "AgentConfig",
    "AgentState",
    "build_agent",
    "load_config",
    "load_system_prompt",
    "trim_to_last_turns",
]

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROMPT_DIR = PACKAGE_DIR / "prompts"
"""The current prompts (``support.md`` v2)."""
DEFAULT_CONFIG = PACKAGE_DIR / "agent.yaml"
V1_PROMPT_DIR = PACKAGE_DIR / "prompt_history" / "v1"
"""The previous prompt version (v1, with the Escalation section), usable as a ``prompt_dir``."""


@dataclass(frozen=True)
class AgentConfig:
    """The harness settings of ``agent.yaml``."""

    name: str = "acme-support"
    model: str = MODEL_NAME
    seed: int = 0
    prompt_files: tuple[str, ...] = ("support.md",)
    context_window_turns: int = 8
    """Turns (user message and what followed) sent to the model; 0 or less keeps them all."""
    max_tool_retries: int = 2
    kb_min_score: float = 3.0
    kb_dir: Path = field(default=PACKAGE_DIR / "kb")
    orders_file: Path = field(default=PACKAGE_DIR / "data" / "orders.json")
    source: Path | None = None
    """The file the settings were read from."""


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    here = base / p
    # A candidate config copied alone to a scratch folder still finds the example's data.
    return here if here.exists() else PACKAGE_DIR / p


def load_config(config_path: Path | str | None = None) -> AgentConfig:
    """Read ``agent.yaml`` (the package's own when ``config_path`` is None).

    Raises:
        ConfigError: The file is missing, is not a YAML mapping, has an unknown key or a value
            of the wrong type.
    """
    path = Path(config_path) if config_path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"agent config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"agent config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"agent config {path} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(AgentConfig)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"agent config {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    base = path.resolve().parent
    values: dict[str, Any] = {"source": path}
    try:
        for key, value in raw.items():
            if key in ("kb_dir", "orders_file"):
                values[key] = _resolve(base, str(value))
            elif key == "prompt_files":
                if isinstance(value, str):
                    value = [value]
                values[key] = tuple(str(v) for v in value)
            elif key in ("context_window_turns", "max_tool_retries", "seed"):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{key} must be an integer, got {value!r}")
                values[key] = value
            elif key == "kb_min_score":
                values[key] = float(value)
            else:
                values[key] = str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"agent config {path}: {exc}") from None
    if not values.get("prompt_files", AgentConfig.prompt_files):
        raise ConfigError(f"agent config {path}: prompt_files is empty")
    return AgentConfig(**values)


def load_system_prompt(prompt_dir: Path | str, config: AgentConfig) -> tuple[str, list[PromptVersion]]:
    """The system prompt text (the configured prompt files joined) and their versions."""
    d = Path(prompt_dir)
    if not d.is_dir():
        raise ConfigError(f"prompt directory not found: {d}")
    versions = [load_prompt(d / name) for name in config.prompt_files]
    # Texts joined unchanged, so capture finds each registered prompt version inside the system
    # message (a single file is matched exactly by its hash).
    return "\n\n".join(v.text for v in versions), versions


def trim_to_last_turns(messages: Sequence[AnyMessage], turns: int) -> list[AnyMessage]:
    """The messages from the start of the ``turns``-th last user turn on (all when ``turns`` <= 0).

    Cutting at a user message never separates a tool call from its result.
    """
    msgs = list(messages)
    if turns <= 0:
        return msgs
    starts = [i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)]
    if len(starts) <= turns:
        return msgs
    return msgs[starts[-turns] :]


def _failed_tools_this_turn(messages: Sequence[AnyMessage]) -> int:
    n = 0
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            break
        if isinstance(m, ToolMessage) and m.status == "error":
            n += 1
    return n


class AgentState(TypedDict):
    """The graph state: the conversation."""

    messages: Annotated[list[AnyMessage], add_messages]


def _default_model(config: AgentConfig) -> BaseChatModel:
    """The offline simulator, unless a real model is explicitly asked for.

    A real model needs all of: ``ACME_SUPPORT_REAL_LLM=1``, a ``model`` other than the simulator's
    in ``agent.yaml`` (a ``provider:model`` string for ``init_chat_model``), the provider's
    LangChain package and its API key. Tests and benchmarks never set the flag, so an API key
    lying around in the environment cannot make a run non-deterministic.
    """
    if config.model != MODEL_NAME and os.environ.get("ACME_SUPPORT_REAL_LLM") == "1":
        try:
            from langchain.chat_models import init_chat_model

            return init_chat_model(config.model, temperature=0)
        except Exception as exc:  # noqa: BLE001 - missing package or key: stay offline
            logger.warning("cannot use %s (%s); falling back to the offline simulator", config.model, exc)
    return SupportSimulatorModel(seed=config.seed)


def build_agent(
    prompt_dir: Path | str = DEFAULT_PROMPT_DIR,
    config_path: Path | str | None = None,
    *,
    model: BaseChatModel | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the Acme Pay support agent from a prompt directory and a harness config.

    Args:
        prompt_dir: A directory holding the prompt files named in the config (``support.md``).
            Pass a candidate directory to get the agent that prompt would make.
        config_path: The harness settings (``agent.yaml``); the package's own when None.
        model: The chat model; the offline :class:`SupportSimulatorModel` by default.
        checkpointer: Where threads are kept between turns; a fresh ``InMemorySaver`` by default.

    Returns:
        The compiled graph. Invoke it with ``{"messages": [("user", text)]}`` and
        ``config={"configurable": {"thread_id": ...}, "callbacks": [...]}``.

    Raises:
        ConfigError: A prompt file, the config, the knowledge base or the order table is missing
            or invalid.
    """
    settings = load_config(config_path)
    system_text, _versions = load_system_prompt(prompt_dir, settings)
    tools = make_tools(
        KnowledgeBase.from_dir(settings.kb_dir, min_score=settings.kb_min_score),
        OrderBook.from_json(settings.orders_file),
    )
    llm = (model if model is not None else _default_model(settings)).bind_tools(tools)
    window = settings.context_window_turns
    max_retries = settings.max_tool_retries

    # LangGraph passes the run's config to a parameter named ``config``: forwarding it keeps the
    # callbacks (capture) attached to the model call.
    def agent(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        history = state["messages"]
        system = system_text
        if _failed_tools_this_turn(history) > max_retries:
            system = f"{system}\n\n{HARNESS_RETRIES_EXHAUSTED}"
        # The harness's context policy: the model sees only the latest turns (defect c).
        sent = [SystemMessage(system), *trim_to_last_turns(history, window)]
        return {"messages": [llm.invoke(sent, config)]}

    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(
        checkpointer=checkpointer if checkpointer is not None else InMemorySaver(),
        name=settings.name,
    )
