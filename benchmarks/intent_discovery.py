"""Benchmark unsupervised intent discovery on BANKING77 (the number of intents is NOT given).

Reads ``<repo>/../shared/datasets/banking77/train.csv`` (10,003 banking queries, 77 labelled
intents). The labels are used for scoring only. Prints NMI, ARI, clustering accuracy (Hungarian
matching), clusters found, noise share and seconds, and writes
``benchmarks/results/intent_discovery.json`` (results of earlier runs with other embedders are
kept, keyed by embedder).

Scoring of noise: "noise as own label" counts all ``-1`` points as one extra cluster (the honest
score of the raw output); "noise reassigned" first gives each noise point its nearest cluster.

    python benchmarks/intent_discovery.py                   # MiniLM (all-MiniLM-L6-v2, offline)
    python benchmarks/intent_discovery.py --embedder fast   # static model distilled from MiniLM
    python benchmarks/intent_discovery.py --embedder tfidf  # no torch needed
    python benchmarks/intent_discovery.py --embedder fast --fit-sample 2000
        # what ``extract(mode="fast")`` does on a first run: intents discovered on a 2,000-text
        # sample, the rest placed by nearest intent / novelty (build_intent_model(fit_sample=))
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from loop_middleware.extract._embed import default_embedder
from loop_middleware.extract._intents import (
    NOISE,
    ClusteringReport,
    _assign_to_nearest,
    build_intent_model,
    cluster_embeddings,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "datasets" / "banking77" / "train.csv"
RESULTS = REPO / "benchmarks" / "results" / "intent_discovery.json"


def clustering_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Best one-to-one matching of clusters to labels (Hungarian), as a share of points."""
    table = contingency_matrix(truth, pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def score(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """NMI, ARI and accuracy; ``-1`` is scored as a label of its own."""
    return {
        "nmi": round(float(normalized_mutual_info_score(truth, pred)), 4),
        "ari": round(float(adjusted_rand_score(truth, pred)), 4),
        "acc": round(clustering_accuracy(truth, pred), 4),
    }


def load(limit: int | None) -> tuple[list[str], np.ndarray, int]:
    """Texts, integer labels and the number of distinct labels (first ``limit`` rows in a fixed
    shuffle, so a limited run still covers all intents)."""
    if not DATA.is_file():
        sys.exit(f"data set not found: {DATA}")
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    if limit is not None and limit < len(rows):
        order = np.random.default_rng(0).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(order)]
    names = sorted({c for _, c in rows})
    index = {c: i for i, c in enumerate(names)}
    return [t for t, _ in rows], np.array([index[c] for _, c in rows]), len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", choices=["default", "fast", "tfidf"], default="default")
    parser.add_argument("--limit", type=int, default=None, help="use N queries (default all)")
    parser.add_argument("--fit-sample", type=int, default=None,
                        help="discover on a random sample of N texts and place the rest as later "
                             "runs do (the fast mode of extract); scores top-level intents")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    args = parser.parse_args(argv)

    texts, truth, n_labels = load(args.limit)
    embedder = default_embedder(args.embedder)

    t0 = time.perf_counter()
    vectors = embedder.embed(texts)
    t_embed = time.perf_counter() - t0
    if args.fit_sample is None:
        labels, report = cluster_embeddings(vectors)
    else:
        model, ids = build_intent_model(texts, embedder=embedder, embeddings=vectors,
                                        fit_sample=args.fit_sample, sub_intents=False)
        numbers = {r.id: k for k, r in enumerate(model.top_level)}
        labels = np.array([NOISE if i is None else numbers[i] for i in ids], dtype=np.int64)
        report = ClusteringReport(len(numbers), len(numbers), float("nan"), int((labels == NOISE).sum()))
    t_total = time.perf_counter() - t0
    reassigned = _assign_to_nearest(vectors, labels)

    result: dict[str, Any] = {
        "embedder": embedder.name,
        "fit_sample": args.fit_sample,
        "n_texts": len(texts),
        "true_intents": n_labels,
        "clusters_found": report.n_clusters,
        "dendrogram_cut": report.cut,
        "noise_share": round(float((labels == NOISE).mean()), 4),
        "noise_as_own_label": score(truth, labels),
        "noise_reassigned": score(truth, reassigned),
        "seconds_embed": round(t_embed, 1),
        "seconds_total": round(t_total, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    own, re_ = result["noise_as_own_label"], result["noise_reassigned"]
    print(f"embedder            {embedder.name}   ({len(texts)} texts, {n_labels} true intents)")
    print(
        f"clusters found      {report.n_clusters}  (cut {report.cut}, silhouette {report.silhouette:.3f})"
    )
    print(f"noise share         {result['noise_share']:.1%}")
    print(f"noise own label     NMI {own['nmi']:.3f}  ARI {own['ari']:.3f}  ACC {own['acc']:.3f}")
    print(f"noise reassigned    NMI {re_['nmi']:.3f}  ARI {re_['ari']:.3f}  ACC {re_['acc']:.3f}")
    print(f"seconds             {t_total:.1f}  (embedding {t_embed:.1f})")

    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stored: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        key = args.embedder if args.limit is None else f"{args.embedder}-limit{args.limit}"
        if args.fit_sample is not None:
            key += f"-sample{args.fit_sample}"
        stored.setdefault("runs", {})[key] = result
        stored["dataset"] = "BANKING77 train.csv (labels used for scoring only; k not given)"
        RESULTS.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
