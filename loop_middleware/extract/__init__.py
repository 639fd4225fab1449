"""Stage 3: failure signals and product intents from captured threads, offline, no hand labels.

- :func:`extract` runs everything over a store, incrementally, and persists the results.
- :func:`detect_signals` runs the deterministic failure-signal detectors on threads; add your
  own with :func:`register_detector`.
- :func:`discover_intents` clusters texts into intents without being told how many.
"""

from ._embed import (
    Embedder,
    LangChainEmbedder,
    MiniLMEmbedder,
    StaticEmbedder,
    TfidfEmbedder,
    default_embedder,
)
from ._extract import ExtractionResult, assign_intents, extract, extract_signals, opening_text
from ._intents import (
    DEFAULT_CATEGORIES,
    IntentModel,
    build_intent_model,
    discover_intents,
    map_categories,
    name_clusters,
)
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
    "DetectionContext",
    "Detector",
    "DetectorRegistry",
    "Embedder",
    "ExtractionResult",
    "IntentModel",
    "LangChainEmbedder",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "TfidfEmbedder",
    "assign_intents",
    "build_intent_model",
    "default_detectors",
    "default_embedder",
    "detect_language",
    "detect_signals",
    "detect_thread",
    "discover_intents",
    "extract",
    "extract_signals",
    "map_categories",
    "name_clusters",
    "opening_text",
    "register_detector",
]
