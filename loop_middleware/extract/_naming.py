"""Naming: what each cluster is about, in its own words.

Every cluster gets a short label in words (:mod:`._labels`: a phrase from its most typical
requests, e.g. "Refund Not Appeared On My Statement"), its most typical request quoted (the
medoid: the member nearest the centroid), its most central examples, and class-based TF-IDF
keyphrases (BERTopic's c-TF-IDF) as supporting evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loop_middleware.errors import ConfigError
from loop_middleware.extract._cluster import NOISE, centroids_of
from loop_middleware.extract._embed import normalize_rows
from loop_middleware.extract._labels import Phrase, build_labels, title_case

__all__ = ["ClusterInfo", "name_clusters"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass
class ClusterInfo:
    """What one cluster is about, in its own words."""

    label: int
    size: int
    keyphrases: list[str]
    """Top c-TF-IDF n-grams, most distinctive first."""
    examples: list[str]
    """The utterances closest to the centroid."""
    centroid: FloatArray | None = None
    title: str = ""
    """The label in words, Title Case (empty: nothing to build one from)."""
    typical_request: str = ""
    """The most typical request (the medoid), quoted as it was written."""

    @property
    def name(self) -> str:
        """The label in words; without one, the first words of the typical request."""
        if self.title:
            return self.title
        words = self.typical_request.split()[:6]
        return title_case(words) if words else f"Cluster {self.label}"


def _ctfidf_keyphrases(
    texts: Sequence[str], labels: IntArray, clusters: list[int], top_n: int
) -> dict[int, list[str]]:
    """Class-based TF-IDF: each cluster's texts are one document; a term scores
    ``tf(term, cluster) * log(1 + mean words per cluster / total tf(term))`` (BERTopic's form), so
    words frequent in one cluster but rare elsewhere win."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [" ".join(texts[i] for i in np.flatnonzero(labels == c).tolist()) for c in clusters]
    if not any(d.strip() for d in docs):
        return {c: [] for c in clusters}
    vectorizer = CountVectorizer(
        ngram_range=(1, 2), stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9']+\b"
    )
    try:
        counts = vectorizer.fit_transform(docs).toarray().astype(np.float64)
    except ValueError:  # only stop words
        return {c: [] for c in clusters}
    terms = vectorizer.get_feature_names_out()
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    avg_words = counts.sum() / len(clusters)
    idf = np.log(1.0 + avg_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = tf * idf
    out: dict[int, list[str]] = {}
    for row, c in enumerate(clusters):
        chosen: list[str] = []
        for j in np.argsort(-scores[row], kind="stable"):
            if scores[row, j] <= 0 or len(chosen) >= top_n:
                break
            term = str(terms[j])
            if "'" in term:
                continue  # "haven't", "i'm": fragments of grammar, not topics
            # Skip a phrase that repeats a chosen one ("refund" after "refund request").
            if any(term in c2 or c2 in term for c2 in chosen):
                continue
            chosen.append(term)
        out[c] = chosen
    return out


def name_clusters(
    texts: Sequence[str],
    labels: Sequence[int] | IntArray,
    embeddings: npt.ArrayLike | None = None,
    *,
    top_n: int = 5,
    n_examples: int = 3,
    taken: set[str] | None = None,
) -> dict[int, ClusterInfo]:
    """Name every cluster (noise excluded): a label in words, the most typical request, the most
    central texts and c-TF-IDF keyphrases.

    Args:
        texts: The clustered texts.
        labels: Their cluster ids (``-1`` = noise).
        embeddings: Their embeddings, to pick the examples nearest the centroid; without them the
            examples are the texts sharing the most keyphrases.
        top_n: Keyphrases per cluster.
        n_examples: Examples per cluster (distinct texts).
        taken: Names already in use (e.g. the parent intent's): a cluster gets its best label
            that is not among them; the names given are added to it.
    """
    lab = np.asarray(labels, dtype=np.int64)
    if len(lab) != len(texts):
        raise ConfigError(f"{len(lab)} labels for {len(texts)} texts")
    clusters = sorted(int(c) for c in np.unique(lab) if c != NOISE)
    if not clusters:
        return {}
    phrases = _ctfidf_keyphrases(texts, lab, clusters, top_n)
    x = normalize_rows(embeddings) if embeddings is not None else None
    cents = centroids_of(x, lab) if x is not None else {}
    rows: list[list[int]] = []
    typical: list[list[int]] = []
    for c in clusters:
        members = np.flatnonzero(lab == c)
        if x is not None:
            closeness = x[members] @ cents[c]
        else:
            closeness = np.array(
                [sum(p in texts[i].lower() for p in phrases[c]) for i in members.tolist()],
                dtype=np.float64,
            )
        rows.append(members.tolist())
        typical.append(members[np.argsort(-closeness, kind="stable")].tolist())
    candidates = build_labels(texts, rows, typical)
    used = taken if taken is not None else set()
    infos: dict[int, ClusterInfo] = {}
    for c, members_, order, cands in zip(clusters, rows, typical, candidates, strict=True):
        examples: list[str] = []
        for i in order:
            if texts[i] not in examples:
                examples.append(texts[i])
            if len(examples) >= n_examples:
                break
        info = ClusterInfo(
            label=c,
            size=len(members_),
            keyphrases=phrases[c],
            examples=examples,
            centroid=cents.get(c),
            title=_unused_title(cands, used, phrases[c]),
            typical_request=texts[order[0]] if order else "",
        )
        used.add(info.name.lower())
        infos[c] = info
    return infos


def _unused_title(candidates: Sequence[Phrase], used: set[str], keyphrases: Sequence[str]) -> str:
    """The best candidate label not used by another cluster; when all are, the best one with
    the first keyphrase word it lacks (two clusters never share a name)."""
    names = [" ".join(p.words) for p in candidates]
    for name in names:
        if name.lower() not in used:
            return name
    if not names:
        return ""
    best = names[0]
    for phrase in keyphrases:
        for word in phrase.split():
            if word.lower() not in best.lower().split():
                extra = f"{best} {title_case([word])}"
                if extra.lower() not in used:
                    return extra
    n = 2
    while f"{best} {n}".lower() in used:
        n += 1
    return f"{best} {n}"
