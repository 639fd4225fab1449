"""The stable intent model: records with centroids that assign later data to the same ids.

:func:`build_intent_model` clusters texts (:mod:`._cluster`), names the clusters
(:mod:`._naming`), maps them to business categories (:mod:`._categories`), splits big intents
into sub-intents, and keeps it all in an :class:`IntentModel`, serialisable to JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from loop_middleware.errors import ConfigError, ExtractionError
from loop_middleware.extract._categories import DEFAULT_CATEGORIES, OTHER, map_categories
from loop_middleware.extract._cluster import (
    _acceptance_threshold,
    _merge_overlapping,
    _relabel_by_size,
    cluster_embeddings,
    default_min_cluster_size,
)
from loop_middleware.extract._embed import Embedder, TfidfEmbedder, default_embedder, normalize_rows
from loop_middleware.extract._naming import name_clusters
from loop_middleware.types import Intent

__all__ = ["IntentModel", "IntentRecord", "build_intent_model"]

FloatArray = npt.NDArray[np.float32]

def _stable_id(prefix: str, member_texts: Sequence[str]) -> str:
    """``<prefix>-<10 hex>`` from the sorted hashes of the member texts: the same group of texts
    gets the same id on any machine and in any order."""
    hashes = sorted(hashlib.sha1(t.encode("utf-8")).hexdigest() for t in member_texts)
    return f"{prefix}-" + hashlib.sha1("\n".join(hashes).encode()).hexdigest()[:10]


@dataclass
class IntentRecord:
    """One intent or sub-intent of an :class:`IntentModel`, with its centroid."""

    id: str
    name: str
    category: str
    centroid: FloatArray
    threshold: float
    """Assignment needs cosine similarity to the centroid at least this high."""
    parent_id: str | None = None
    keyphrases: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    size: int = 0
    typical_request: str = ""

    def to_intent(self) -> Intent:
        """The public :class:`~loop_middleware.types.Intent`."""
        return Intent(
            id=self.id,
            name=self.name,
            category=self.category,
            parent_id=self.parent_id,
            keyphrases=list(self.keyphrases),
            examples=list(self.examples),
            size=self.size,
            typical_request=self.typical_request,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (centroid as a list of floats)."""
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "parent_id": self.parent_id,
            "keyphrases": list(self.keyphrases),
            "examples": list(self.examples),
            "size": self.size,
            "typical_request": self.typical_request,
            "threshold": self.threshold,
            "centroid": [float(v) for v in self.centroid],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntentRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            category=str(data["category"]),
            centroid=np.asarray(data["centroid"], dtype=np.float32),
            threshold=float(data["threshold"]),
            parent_id=data.get("parent_id"),
            keyphrases=list(data.get("keyphrases", [])),
            examples=list(data.get("examples", [])),
            size=int(data.get("size", 0)),
            typical_request=str(data.get("typical_request", "")),
        )


@dataclass
class IntentModel:
    """Discovered intents with their centroids: assigns new data to the same ids over time.

    Ids never change once given; :meth:`update` only adds intents (novelty), it never renames,
    moves or merges existing ones. Persist with :meth:`to_dict` / :meth:`from_dict`.
    """

    embedder_name: str
    dim: int
    records: list[IntentRecord] = field(default_factory=list)
    min_cluster_size: int | None = None
    categories: dict[str, str] | None = None
    """Category descriptions the model was built with (None = the defaults)."""
    category_threshold: float = 0.3

    # -- views ----------------------------------------------------------------------------------

    @property
    def top_level(self) -> list[IntentRecord]:
        """The intents (not sub-intents)."""
        return [r for r in self.records if r.parent_id is None]

    def children(self, intent_id: str) -> list[IntentRecord]:
        """The sub-intents of ``intent_id``."""
        return [r for r in self.records if r.parent_id == intent_id]

    def get(self, intent_id: str) -> IntentRecord:
        """The record with this id (``KeyError`` if unknown)."""
        for r in self.records:
            if r.id == intent_id:
                return r
        raise KeyError(intent_id)

    def intents(self) -> list[Intent]:
        """All intents and sub-intents as public :class:`~loop_middleware.types.Intent` objects."""
        return [r.to_intent() for r in self.records]

    def hierarchy(self) -> dict[str, dict[str, list[str]]]:
        """``category -> intent id -> [sub-intent ids]``."""
        out: dict[str, dict[str, list[str]]] = {}
        for r in self.top_level:
            out.setdefault(r.category, {})[r.id] = [c.id for c in self.children(r.id)]
        return out

    # -- assignment -----------------------------------------------------------------------------

    def _check(self, embeddings: npt.ArrayLike) -> FloatArray:
        x = normalize_rows(embeddings)
        if x.shape[1] != self.dim and len(x):
            raise ExtractionError(
                f"embeddings have {x.shape[1]} dims; the intent model was built with "
                f"{self.embedder_name} ({self.dim} dims)"
            )
        return x

    def assign(
        self, embeddings: npt.ArrayLike, *, level: Literal["intent", "leaf"] = "intent"
    ) -> list[str | None]:
        """The intent id of each row, or None when no centroid is close enough.

        Args:
            embeddings: ``(n, dim)`` vectors from the model's embedder.
            level: ``"intent"`` for top-level ids; ``"leaf"`` for the sub-intent when the
                intent has sub-intents and one is close enough.
        """
        x = self._check(embeddings)
        tops = self.top_level
        out: list[str | None] = [None] * len(x)
        if not tops or not len(x):
            return out
        cents = np.stack([r.centroid for r in tops])
        thresholds = np.array([r.threshold for r in tops])
        sims = x @ cents.T
        # Only centroids that accept the point compete; the most similar of them wins.
        sims = np.where(sims >= thresholds, sims, -np.inf)
        best = np.argmax(sims, axis=1)
        for i, j in enumerate(best):
            if np.isfinite(sims[i, j]):
                out[i] = tops[j].id
        if level == "leaf":
            for i, intent_id in enumerate(out):
                kids = self.children(intent_id) if intent_id else []
                if kids:
                    ks = np.array([x[i] @ k.centroid for k in kids])
                    j = int(np.argmax(ks))
                    if ks[j] >= kids[j].threshold:
                        out[i] = kids[j].id
        return out

    def update(
        self,
        texts: Sequence[str],
        embeddings: npt.ArrayLike,
        *,
        embedder: Embedder | None = None,
        **options: Any,
    ) -> list[str | None]:
        """Assign ``texts`` to known intents, and turn dense groups among the rest into new ones.

        Existing records are left exactly as they are. Unassigned texts are clustered (same method
        as :func:`discover_intents`); every cluster becomes a new intent with a new stable id.

        Args:
            texts: The texts (for naming new intents).
            embeddings: Their vectors from the model's embedder.
            embedder: Needed to map new intents to categories (else they are ``"other"``).
            **options: Passed to :func:`cluster_embeddings`.

        Returns:
            The intent id of each text (top level), None for what is still unassigned.
        """
        x = self._check(embeddings)
        if len(x) != len(texts):
            raise ConfigError(f"{len(x)} embeddings for {len(texts)} texts")
        assigned = self.assign(x)
        rest = [i for i, a in enumerate(assigned) if a is None]
        if not rest:
            return assigned
        mcs = self.min_cluster_size or default_min_cluster_size(len(texts))
        sub_texts = [texts[i] for i in rest]
        known = [r.threshold for r in self.top_level]
        new = _records_from_clusters(
            sub_texts,
            x[rest],
            embedder=embedder,
            min_cluster_size=mcs,
            categories=self.categories,
            category_threshold=self.category_threshold,
            taken={r.id for r in self.records},
            split_sub_intents=False,
            # New groups are merged to the granularity of the known intents.
            reference_threshold=float(np.median(known)) if known else None,
            taken_names={r.name.lower() for r in self.records},
            **options,
        )
        fresh = [record for record, _ in new]
        self.records.extend(fresh)
        if fresh:
            # Leftovers are offered to the new intents only: old texts keep their intents.
            cents = np.stack([r.centroid for r in fresh])
            sims = x[rest] @ cents.T
            sims = np.where(sims >= np.array([r.threshold for r in fresh]), sims, -np.inf)
            for row, j in enumerate(np.argmax(sims, axis=1)):
                if np.isfinite(sims[row, j]):
                    assigned[rest[row]] = fresh[int(j)].id
        return assigned

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (centroids as lists)."""
        return {
            "version": 1,
            "embedder": self.embedder_name,
            "dim": self.dim,
            "min_cluster_size": self.min_cluster_size,
            "categories": self.categories,
            "category_threshold": self.category_threshold,
            "intents": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntentModel:
        """Inverse of :meth:`to_dict`."""
        if data.get("version") != 1:
            raise ExtractionError(f"unknown intent model version {data.get('version')!r}")
        return cls(
            embedder_name=str(data["embedder"]),
            dim=int(data["dim"]),
            records=[IntentRecord.from_dict(r) for r in data.get("intents", [])],
            min_cluster_size=data.get("min_cluster_size"),
            categories=data.get("categories"),
            category_threshold=float(data.get("category_threshold", 0.3)),
        )


def _records_from_clusters(
    texts: Sequence[str],
    x: FloatArray,
    *,
    embedder: Embedder | None,
    min_cluster_size: int | None,
    categories: Mapping[str, str] | None,
    category_threshold: float,
    taken: set[str],
    split_sub_intents: bool,
    sub_intent_min_size: int | None = None,
    reference_threshold: float | None = None,
    taken_names: set[str] | None = None,
    **options: Any,
) -> list[tuple[IntentRecord, list[int]]]:
    """Cluster ``x``, name and categorise the clusters, and return records with their rows
    (``taken_names``: lower-case names of intents that exist already, never given again)."""
    labels, _ = cluster_embeddings(x, min_cluster_size=min_cluster_size, **options)
    labels = _relabel_by_size(_merge_overlapping(x, labels, reference_threshold), 1)
    infos = name_clusters(texts, labels, x, taken=taken_names)
    cents = {c: info.centroid for c, info in infos.items() if info.centroid is not None}
    cats = (
        map_categories(cents, embedder, categories=categories, threshold=category_threshold)
        if embedder is not None
        else dict.fromkeys(cents, OTHER)
    )
    mcs = min_cluster_size or default_min_cluster_size(len(x))
    out: list[tuple[IntentRecord, list[int]]] = []
    for c, info in infos.items():
        rows = np.flatnonzero(labels == c)
        centroid = cents[c]
        intent_id = _stable_id("intent", [texts[i] for i in rows.tolist()])
        if intent_id in taken:  # the very same member set already has an intent: keep it unique
            intent_id = _stable_id("intent", [*(texts[i] for i in rows.tolist()), str(len(taken))])
        taken.add(intent_id)
        record = IntentRecord(
            id=intent_id,
            name=info.name,
            category=cats[c],
            centroid=centroid,
            threshold=_acceptance_threshold(x[rows] @ centroid),
            keyphrases=info.keyphrases,
            examples=info.examples,
            size=len(rows),
            typical_request=info.typical_request,
        )
        out.append((record, rows.tolist()))
        if split_sub_intents:
            out.extend(
                _sub_intents(
                    record,
                    [texts[i] for i in rows.tolist()],
                    x[rows],
                    min_size=sub_intent_min_size or max(4 * mcs, 12),
                    child_min=max(mcs, 3),
                    taken=taken,
                    **options,
                )
            )
    return out


def _sub_intents(
    parent: IntentRecord,
    texts: list[str],
    x: FloatArray,
    *,
    min_size: int,
    child_min: int,
    taken: set[str],
    min_silhouette: float = 0.1,
    **options: Any,
) -> list[tuple[IntentRecord, list[int]]]:
    """Split a large intent into sub-intents when it holds coherent sub-groups.

    The members are re-clustered by the same method (centring now removes the intent's own
    direction, so the differences inside it stand out); the split is kept only when it has at
    least two sub-groups and its silhouette reaches ``min_silhouette``.
    """
    if len(texts) < min_size:
        return []
    options = {k: v for k, v in options.items() if k != "reassign_noise"}
    labels, report = cluster_embeddings(
        x, min_cluster_size=child_min, min_silhouette=min_silhouette, reassign_noise=True, **options
    )
    if report.n_clusters < 2 or report.silhouette < min_silhouette:
        return []
    # A sub-intent is never named as its parent.
    infos = name_clusters(texts, labels, x, taken={parent.name.lower()})
    out: list[tuple[IntentRecord, list[int]]] = []
    for c, info in infos.items():
        rows = np.flatnonzero(labels == c)
        assert info.centroid is not None
        sub_id = _stable_id(parent.id, [texts[i] for i in rows])
        taken.add(sub_id)
        out.append(
            (
                IntentRecord(
                    id=sub_id,
                    name=info.name,
                    category=parent.category,
                    centroid=info.centroid,
                    threshold=_acceptance_threshold(x[rows] @ info.centroid),
                    parent_id=parent.id,
                    keyphrases=info.keyphrases,
                    examples=info.examples,
                    size=len(rows),
                    typical_request=info.typical_request,
                ),
                rows.tolist(),
            )
        )
    return out


def build_intent_model(
    texts: Sequence[str],
    *,
    embedder: Embedder | None = None,
    embeddings: npt.ArrayLike | None = None,
    categories: Mapping[str, str] | None = None,
    category_threshold: float = 0.3,
    min_cluster_size: int | None = None,
    sub_intents: bool = True,
    sub_intent_min_size: int | None = None,
    fit_sample: int | None = None,
    **options: Any,
) -> tuple[IntentModel, list[str | None]]:
    """Discover intents in ``texts`` and return the model and each text's intent id.

    Args:
        texts: The utterances (e.g. each thread's opening request).
        embedder: Default :func:`default_embedder`. A :class:`TfidfEmbedder` that is not fitted yet
            is fitted on the texts and the category descriptions together, so both share its space.
        embeddings: Precomputed vectors from ``embedder`` (skips embedding).
        categories: ``name -> description`` overriding :data:`DEFAULT_CATEGORIES`.
        category_threshold: Similarity below which an intent's category is ``"other"``.
        min_cluster_size: Smallest intent (default grows slowly with the data).
        sub_intents: Split big intents into sub-intents when coherent sub-groups exist.
        sub_intent_min_size: Smallest intent considered for a split (default ``4 x`` the
            smallest intent, at least 12).
        fit_sample: Discover the intents on a fixed random sample of this many texts, then
            place the rest as later runs do (:meth:`IntentModel.update`: nearest intent, dense
            leftovers become new intents). Clustering, naming and sub-intent splitting cost
            grows faster than linearly, so on a big store this is several times faster, at
            some cost in quality (``benchmarks/intent_discovery.py`` measures both). None: use
            every text.
        **options: Passed to :func:`cluster_embeddings`.

    Returns:
        ``(model, ids)``: ``ids[i]`` is ``model.assign`` of ``texts[i]``: its top-level intent,
        or None when it is close to none.
        ``model.intents()`` gives the public :class:`~loop_middleware.types.Intent` objects.
    """
    texts = list(texts)
    emb = embedder if embedder is not None else default_embedder()
    cats = dict(categories) if categories is not None else None
    if isinstance(emb, TfidfEmbedder) and getattr(emb, "_pipeline", None) is None:
        emb.fit(texts + list((cats or DEFAULT_CATEGORIES).values()))
    x = normalize_rows(embeddings) if embeddings is not None else emb.embed(texts)
    if len(x) != len(texts):
        raise ConfigError(f"{len(x)} embeddings for {len(texts)} texts")
    if fit_sample is not None and fit_sample < 2:
        raise ConfigError("fit_sample must be at least 2")
    if fit_sample is not None and len(texts) > fit_sample:
        rng = np.random.default_rng(int(options.get("random_state", 0)))
        chosen = np.zeros(len(texts), dtype=bool)
        chosen[rng.choice(len(texts), fit_sample, replace=False)] = True
        sample, rest = np.flatnonzero(chosen), np.flatnonzero(~chosen)
        model, _ = build_intent_model(
            [texts[i] for i in sample], embedder=emb, embeddings=x[sample], categories=categories,
            category_threshold=category_threshold, min_cluster_size=min_cluster_size,
            sub_intents=sub_intents, sub_intent_min_size=sub_intent_min_size, **options,
        )
        model.update([texts[i] for i in rest], x[rest], embedder=emb, **options)
        return model, model.assign(x)
    model = IntentModel(
        embedder_name=emb.name,
        dim=int(x.shape[1]) if len(x) else emb.dim,
        min_cluster_size=min_cluster_size,
        categories=cats,
        category_threshold=category_threshold,
    )
    for record, _rows in _records_from_clusters(
        texts,
        x,
        embedder=emb,
        min_cluster_size=min_cluster_size,
        categories=cats,
        category_threshold=category_threshold,
        taken=set(),
        split_sub_intents=sub_intents,
        sub_intent_min_size=sub_intent_min_size,
        **options,
    ):
        model.records.append(record)
    # The ids are what the model assigns (not the raw clusters), so a later run of ``assign`` on
    # the same texts gives exactly these ids; noise close enough to an intent joins it.
    return model, model.assign(x)
