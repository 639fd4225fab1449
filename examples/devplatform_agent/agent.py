"""The Kestrel Cloud developer-support agent: a LangGraph ``StateGraph`` built from files.

``build_agent(prompt_dir, config_path)`` is the *agent factory*: everything the agent does comes
from the prompt files in ``prompt_dir`` (loaded with :func:`loop_middleware.load_prompt`, so every
LLM call is tied to its prompt version) and from the harness settings in ``agent.yaml``. Nothing
is cached between two calls, so the loop can build the agent on a *candidate* prompt directory or
config and replay conversations against it.

The graph is the classic tool loop (``agent`` → ``tools_condition`` → ``tools`` → ``agent``),
compiled with a checkpointer so a conversation continues over several ``invoke`` calls.

One harness behaviour matters for the planted defects (see ``DEFECTS.md``): every tool result
longer than ``max_tool_output_chars`` is cut to that length, with a marker, *inside the tool*,
before the model (and capture) see it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, TypedDict

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from loop_middleware import load_prompt
from loop_middleware.errors import ConfigError

from .simulator import MODEL_NAME, DevSupportSimulatorModel

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PROMPT_DIR",
    "NO_RESULTS",
    "V1_PROMPT_DIR",
    "AgentConfig",
    "Docs",
    "Page",
    "build_agent",
    "load_config",
    "make_tools",
    "truncate_output",
]

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROMPT_DIR = PACKAGE_DIR / "prompts"
"""The current prompts (``support.md`` v2)."""
DEFAULT_CONFIG = PACKAGE_DIR / "agent.yaml"
V1_PROMPT_DIR = PACKAGE_DIR / "prompt_history" / "v1"
"""The previous prompt version (v1, with the domain-verification step of the SSO setup)."""
NO_RESULTS = "No results"
"""What ``search_docs`` returns when no page scores at least ``docs_min_score``."""


@dataclass(frozen=True)
class AgentConfig:
    """The harness settings of ``agent.yaml``."""

    name: str = "kestrel-devsupport"
    model: str = MODEL_NAME
    seed: int = 0
    prompt_files: tuple[str, ...] = ("support.md",)
    context_window_turns: int = 0
    """Turns sent to the model; 0 or less keeps them all."""
    max_tool_output_chars: int = 0
    """Tool results are cut to this many characters (with a marker); 0 or less: never cut."""
    docs_min_score: float = 2.0
    docs_dir: Path = field(default=PACKAGE_DIR / "kb")
    projects_file: Path = field(default=PACKAGE_DIR / "data" / "projects.json")
    source: Path | None = None


_INT_KEYS = ("seed", "context_window_turns", "max_tool_output_chars")


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
        ConfigError: The file is missing, not a YAML mapping, or has an unknown key or a value of
            the wrong type.
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
            if key in ("docs_dir", "projects_file"):
                values[key] = _resolve(base, str(value))
            elif key == "prompt_files":
                values[key] = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
            elif key in _INT_KEYS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{key} must be an integer, got {value!r}")
                values[key] = value
            elif key == "docs_min_score":
                values[key] = float(value)
            else:
                values[key] = str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"agent config {path}: {exc}") from None
    if not values.get("prompt_files", AgentConfig.prompt_files):
        raise ConfigError(f"agent config {path}: prompt_files is empty")
    return AgentConfig(**values)


# --- the tools' backends ----------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP_TEXT = """a an and are as at be can do does for from get how i in is it its me my of on or our
    the to we what when where why with you your kestrel please hi hello need want help"""
_STOP = frozenset(_STOP_TEXT.split())


def _terms(text: str) -> set[str]:
    return {w[:-1] if len(w) > 4 and w.endswith("s") else w
            for w in _WORD.findall(text.lower().replace("-", " ")) if w not in _STOP and len(w) > 1}


@dataclass(frozen=True)
class Page:
    """One documentation page (``# Title``, a ``keywords:`` line, the body)."""

    slug: str
    title: str
    keywords: tuple[str, ...]
    body: str


class Docs:
    """Markdown documentation pages searched by keyword overlap (title and keywords count double)."""

    def __init__(self, pages: Sequence[Page], *, min_score: float = 2.0) -> None:
        self.pages = list(pages)
        self.min_score = min_score
        self._head = [_terms(p.title + " " + " ".join(p.keywords)) for p in self.pages]
        self._body = [_terms(p.body) for p in self.pages]

    @classmethod
    def from_dir(cls, directory: Path, *, min_score: float = 2.0) -> Docs:
        """Load every ``*.md`` page of ``directory``."""
        if not directory.is_dir():
            raise ConfigError(f"docs directory not found: {directory}")
        pages = []
        for path in sorted(directory.glob("*.md")):
            title, body = path.stem, []
            keywords: tuple[str, ...] = ()
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.startswith("# ") and title == path.stem:
                    title = line[2:].strip()
                elif line.lower().startswith("keywords:") and not keywords:
                    keywords = tuple(k.strip() for k in line.split(":", 1)[1].split(",") if k.strip())
                else:
                    body.append(line)
            pages.append(Page(path.stem, title, keywords, "\n".join(body).strip()))
        return cls(pages, min_score=min_score)

    def search(self, query: str) -> Page | None:
        """The best page scoring at least ``min_score``, or None."""
        q = _terms(query)
        best_score, found = 0.0, None
        for page, head, body in zip(self.pages, self._head, self._body, strict=True):
            s = 2.0 * len(q & head) + 1.0 * len(q & (body - head))
            if s >= self.min_score and s > best_score:  # ties: the first page (by file name)
                best_score, found = s, page
        return found


def _load_projects(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"project table not found: {path}") from None
    except ValueError as exc:
        raise ConfigError(f"project table {path} is not valid JSON: {exc}") from None
    return {p["project_id"].lower(): p for p in raw["projects"]}


def truncate_output(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a marker saying how much was dropped
    (unchanged when ``limit`` <= 0 or the text fits): the harness' tool-output policy."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated: {len(text) - limit} more characters]"


def make_tools(docs: Docs, projects: Mapping[str, Mapping[str, Any]], *,
               max_output_chars: int = 0) -> list[BaseTool]:
    """The agent's two tools, bound to these docs and projects; outputs cut by the harness policy."""

    def search_docs(query: str) -> str:
        """Search the Kestrel Cloud documentation; returns the best page or 'No results'."""
        page = docs.search(query)
        return NO_RESULTS if page is None else f"[{page.slug}] {page.title}\n{page.body}"

    def get_project(project_id: str) -> str:
        """A project's plan, last deploy and current API usage by its id (e.g. prj-1234)."""
        p = projects.get(project_id.strip().lower())
        if p is None:
            return f"Project {project_id} not found."
        d = p["last_deploy"]
        return (f"Project {p['project_id']} ({p['name']}): plan {p['plan']}, last deploy {d['id']} "
                f"{d['status']} at {d['at']}, {p['requests_this_minute']} API requests this minute.")

    def limited(fn: Callable[..., str]) -> Callable[..., str]:
        def run(**kwargs: Any) -> str:
            return truncate_output(fn(**kwargs), max_output_chars)
        return run

    return [StructuredTool.from_function(limited(fn), name=fn.__name__, description=fn.__doc__ or "",
                                         args_schema=StructuredTool.from_function(fn).args_schema)
            for fn in (search_docs, get_project)]


# --- the graph ------------------------------------------------------------------------------------


class AgentState(TypedDict):
    """The graph state: the conversation."""

    messages: Annotated[list[AnyMessage], add_messages]


def _last_turns(messages: Sequence[AnyMessage], turns: int) -> list[AnyMessage]:
    msgs = list(messages)
    starts = [i for i, m in enumerate(msgs) if isinstance(m, HumanMessage)]
    if turns <= 0 or len(starts) <= turns:
        return msgs
    return msgs[starts[-turns]:]


def _default_model(config: AgentConfig) -> BaseChatModel:
    """The offline simulator, unless ``KESTREL_SUPPORT_REAL_LLM=1`` and ``model`` names another."""
    if config.model != MODEL_NAME and os.environ.get("KESTREL_SUPPORT_REAL_LLM") == "1":
        try:
            from langchain.chat_models import init_chat_model

            return init_chat_model(config.model, temperature=0)
        except Exception as exc:  # noqa: BLE001 - missing package or key: stay offline
            logger.warning("cannot use %s (%s); falling back to the offline simulator", config.model, exc)
    return DevSupportSimulatorModel(seed=config.seed)


def build_agent(
    prompt_dir: Path | str = DEFAULT_PROMPT_DIR,
    config_path: Path | str | None = None,
    *,
    model: BaseChatModel | None = None,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the Kestrel Cloud support agent from a prompt directory and a harness config.

    Args:
        prompt_dir: A directory holding the prompt files named in the config (``support.md``).
        config_path: The harness settings (``agent.yaml``); the package's own when None.
        model: The chat model; the offline :class:`DevSupportSimulatorModel` by default.
        checkpointer: Where threads are kept between turns; a fresh ``InMemorySaver`` by default.

    Raises:
        ConfigError: A prompt file, the config, the docs or the project table is missing or invalid.
    """
    settings = load_config(config_path)
    d = Path(prompt_dir)
    if not d.is_dir():
        raise ConfigError(f"prompt directory not found: {d}")
    system_text = "\n\n".join(load_prompt(d / name).text for name in settings.prompt_files)
    tools = make_tools(Docs.from_dir(settings.docs_dir, min_score=settings.docs_min_score),
                       _load_projects(settings.projects_file),
                       max_output_chars=settings.max_tool_output_chars)
    llm = (model if model is not None else _default_model(settings)).bind_tools(tools)
    window = settings.context_window_turns

    def agent(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        sent = [SystemMessage(system_text), *_last_turns(state["messages"], window)]
        return {"messages": [llm.invoke(sent, config)]}

    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver(),
                         name=settings.name)
