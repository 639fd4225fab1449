"""Stage 3: failure signals and product intents from captured threads, offline, no hand labels.

- :func:`extract` runs everything over a store, incrementally, and persists the results.
- :func:`detect_signals` runs the deterministic failure-signal detectors on threads; add your
  own with :func:`register_detector`.
- :func:`discover_intents` clusters texts into intents without being told how many.
"""

from ._categories import DEFAULT_CATEGORIES, map_categories
from ._cluster import discover_intents
from ._embed import (
    EXPECTED_NMI,
    Embedder,
    EmbedderStatus,
    LangChainEmbedder,
    MiniLMEmbedder,
    StaticEmbedder,
    TfidfEmbedder,
    default_embedder,
    describe_embedder,
    embedder_status,
)
from ._extract import (
    ExtractionResult,
    assign_intents,
    extract,
    extract_signals,
    opening_text,
    opening_texts,
)
from ._llm import (
    ExtractionLLM,
    IntentChoice,
    IntentName,
    StoreCache,
    ThreadSummary,
    improve_intents,
)
from ._model import IntentModel, build_intent_model
from ._naming import name_clusters
from ._signals import (
    BUILTIN_DETECTORS,
    DetectionContext,
    Detector,
    DetectorRegistry,
    detect_language,
    detect_signals,
    detect_thread,
    register_detector,
)
from ._signals import default_registry as default_detectors

__all__ = [
    "BUILTIN_DETECTORS",
    "DEFAULT_CATEGORIES",
    "EXPECTED_NMI",
    "DetectionContext",
    "Detector",
    "DetectorRegistry",
    "Embedder",
    "EmbedderStatus",
    "ExtractionLLM",
    "ExtractionResult",
    "IntentChoice",
    "IntentModel",
    "IntentName",
    "LangChainEmbedder",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "StoreCache",
    "TfidfEmbedder",
    "ThreadSummary",
    "assign_intents",
    "build_intent_model",
    "default_detectors",
    "default_embedder",
    "describe_embedder",
    "detect_language",
    "detect_signals",
    "detect_thread",
    "discover_intents",
    "embedder_status",
    "extract",
    "extract_signals",
    "improve_intents",
    "map_categories",
    "name_clusters",
    "opening_text",
    "opening_texts",
    "register_detector",
]
