"""Acme Pay: the example customer-support agent the improvement loop is demonstrated on.

* :func:`build_agent` — the agent factory: a LangGraph ``StateGraph`` built from a prompt
  directory and ``agent.yaml``;
* :class:`SupportSimulatorModel` — the offline scripted simulator of its LLM (not an LLM) that
  follows the prompt text it is given;
* :func:`simulate` — simulated production traffic seeded with real BANKING77 customer questions.

The agent has planted defects for the loop to find: see ``DEFECTS.md``.
Run ``python -m examples.support_agent --help``.
"""

from __future__ import annotations

from .agent import (
    DEFAULT_CONFIG,
    DEFAULT_PROMPT_DIR,
    V1_PROMPT_DIR,
    AgentConfig,
    build_agent,
    load_config,
    trim_to_last_turns,
)
from .simulator import SupportSimulatorModel
from .traffic import INTENT_MIX, SimulatedThread, TrafficSummary, banking77_path, simulate

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PROMPT_DIR",
    "INTENT_MIX",
    "V1_PROMPT_DIR",
    "AgentConfig",
    "SimulatedThread",
    "SupportSimulatorModel",
    "TrafficSummary",
    "banking77_path",
    "build_agent",
    "load_config",
    "simulate",
    "trim_to_last_turns",
]
