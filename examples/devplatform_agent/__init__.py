"""Kestrel Cloud: the second example agent, a developer-platform support agent.

* :func:`build_agent`: the agent factory (a LangGraph ``StateGraph`` from a prompt directory and
  ``agent.yaml``);
* :class:`DevSupportSimulatorModel`: the offline scripted simulator of its LLM (not an LLM) that
  follows the prompt text and the tool output it is given;
* :func:`simulate`: simulated developer traffic.

The agent has planted defects for the loop to find: see ``DEFECTS.md``.
Run ``python -m examples.devplatform_agent --help``.
"""

from __future__ import annotations

from .agent import (
    DEFAULT_CONFIG,
    DEFAULT_PROMPT_DIR,
    NO_RESULTS,
    V1_PROMPT_DIR,
    AgentConfig,
    build_agent,
    load_config,
    truncate_output,
)
from .simulator import DevSupportSimulatorModel
from .traffic import INTENT_MIX, SimulatedThread, TrafficSummary, simulate

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PROMPT_DIR",
    "INTENT_MIX",
    "NO_RESULTS",
    "V1_PROMPT_DIR",
    "AgentConfig",
    "DevSupportSimulatorModel",
    "SimulatedThread",
    "TrafficSummary",
    "build_agent",
    "load_config",
    "simulate",
    "truncate_output",
]
