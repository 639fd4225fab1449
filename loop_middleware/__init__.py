"""loop-middleware: a continuous improvement loop for LangChain/LangGraph agents.

Instrument every turn, capture whole threads, extract intents and failure signals, diagnose
root causes with numbers, ship fixes as reviewable pull requests, and measure the next cohort.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .capture import LoopCallbackHandler, LoopMiddleware
from .errors import (
    ConfigError,
    ContractViolationError,
    ExtractionError,
    GitHubError,
    IngestError,
    LLMError,
    LoopError,
    PatchError,
    PathNotAllowedError,
    StoreError,
)
from .prompts import PromptRegistry, load_prompt
from .store import Store
from .types import (
    Diagnosis,
    Evidence,
    Feedback,
    Fix,
    FixKind,
    Intent,
    LLMCall,
    Message,
    PromptVersion,
    Signal,
    Thread,
    ToolCall,
    Turn,
)

__all__ = [
    "ConfigError",
    "ContractViolationError",
    "Diagnosis",
    "Evidence",
    "ExtractionError",
    "Feedback",
    "Fix",
    "FixKind",
    "GitHubError",
    "IngestError",
    "Intent",
    "LLMCall",
    "LLMError",
    "LoopCallbackHandler",
    "LoopError",
    "LoopMiddleware",
    "Message",
    "PatchError",
    "PathNotAllowedError",
    "PromptRegistry",
    "PromptVersion",
    "Signal",
    "Store",
    "StoreError",
    "Thread",
    "ToolCall",
    "Turn",
    "__version__",
    "load_prompt",
]
