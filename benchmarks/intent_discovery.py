"""Benchmark unsupervised intent discovery on BANKING77 (the number of intents is NOT given).

Reads ``<repo>/../shared/datasets/banking77/train.csv`` (10,003 banking queries, 77 labelled
intents). The labels are used for scoring only. For each embedder (by default all three: MiniLM
of the ``[embeddings]`` extra, the static model shipped with the core install, TF-IDF) it prints
NMI, ARI, clustering accuracy (Hungarian matching), clusters found, noise share and seconds, and
scores the intent *names*: the share of clusters whose name contains a content word of the gold
intent of most of its members (same word, or the same first five letters), how many names are
a bare list of keyphrases, and the same share for the old keyphrase names ("a / b / c") as the
baseline. Writes ``benchmarks/results/intent_discovery.json`` (results of earlier runs with
other options are kept, keyed by mode).

Scoring of noise: "noise as own label" counts all ``-1`` points as one extra cluster (the honest
score of the raw output); "noise reassigned" first gives each noise point its nearest cluster.

    python benchmarks/intent_discovery.py                   # all three embedders
    python benchmarks/intent_discovery.py --embedder default  # MiniLM (all-MiniLM-L6-v2, offline)
    python benchmarks/intent_discovery.py --embedder fast   # the shipped static model
    python benchmarks/intent_discovery.py --embedder tfidf  # no torch needed
    python benchmarks/intent_discovery.py --embedder fast --fit-sample 2000
        # what ``extract(mode="fast")`` does on a first run: intents discovered on a 2,000-text
        # sample, the rest placed by nearest intent / novelty (build_intent_model(fit_sample=))
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from collections import Counter
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
from loop_middleware.extract._labels import FUNCTION_WORDS, is_keyphrase_list
from loop_middleware.extract._naming import name_clusters

REPO = Path(__file__).resolve().parent.parent


def _data_file() -> Path:
    """``../shared/datasets/banking77/train.csv`` next to the repository (or under
    ``$LOOP_SHARED_DIR``, as the example agent reads it); from a git worktree, next to the main
    checkout it belongs to."""
    if os.environ.get("LOOP_SHARED_DIR"):
        return Path(os.environ["LOOP_SHARED_DIR"]) / "datasets" / "banking77" / "train.csv"
    roots = [REPO]
    if (REPO / ".git").is_file():  # "gitdir: <main>/.git/worktrees/<name>"
        roots.append(Path((REPO / ".git").read_text().split(":", 1)[1].strip()).parents[2])
    for root in roots:
        path = root.parent / "shared" / "datasets" / "banking77" / "train.csv"
        if path.is_file():
            return path
    return REPO.parent / "shared" / "datasets" / "banking77" / "train.csv"


DATA = _data_file()
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


def _names_hit(name: str, category: str) -> bool:
    """The name has a content word of the gold intent name (same word or first five letters)."""
    said = {w.lower().rstrip("s") for w in re.findall(r"[A-Za-z]+", name)}
    for word in category.lower().split("_"):
        if not word or word in FUNCTION_WORDS:
            continue
        w = word.rstrip("s")
        if any(w == x or (len(w) >= 5 and len(x) >= 5 and w[:5] == x[:5]) for x in said):
            return True
    return False


def score_names(texts: list[str], gold: list[str], labels: np.ndarray,
                vectors: np.ndarray) -> dict[str, Any]:
    """How well the offline names say what each cluster is (see the module docstring)."""
    t0 = time.perf_counter()
    infos = name_clusters(texts, labels, vectors)
    seconds = time.perf_counter() - t0
    hits = old_hits = lists = 0
    sample: list[dict[str, str]] = []
    lengths: list[int] = []
    for c, info in sorted(infos.items(), key=lambda kv: -kv[1].size):
        members = np.flatnonzero(labels == c)
        majority = Counter(gold[i] for i in members).most_common(1)[0][0]
        hits += _names_hit(info.name, majority)
        old_hits += _names_hit(" / ".join(info.keyphrases[:3]), majority)
        lists += is_keyphrase_list(info.name, info.keyphrases, [texts[i] for i in members])
        lengths.append(len(info.name.split()))
        if len(sample) < 12:
            sample.append({"name": info.name, "gold": majority,
                           "typical_request": info.typical_request,
                           "keyphrase_name": " / ".join(info.keyphrases[:3])})
    n = max(len(infos), 1)
    return {
        "clusters": len(infos),
        "share_with_gold_word": round(hits / n, 4),
        "keyphrase_list_names": lists,
        "words_per_name": [min(lengths, default=0), max(lengths, default=0)],
        "share_3_to_6_words": round(sum(3 <= k <= 6 for k in lengths) / n, 4),
        "baseline_keyphrase_names_share_with_gold_word": round(old_hits / n, 4),
        "seconds": round(seconds, 1),
        "largest_clusters": sample,
    }


def load(limit: int | None) -> tuple[list[str], np.ndarray, int, list[str]]:
    """Texts, integer labels, the number of distinct labels and each text's gold label name
    (first ``limit`` rows in a fixed shuffle, so a limited run still covers all intents)."""
    if not DATA.is_file():
        sys.exit(f"data set not found: {DATA}")
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    if limit is not None and limit < len(rows):
        order = np.random.default_rng(0).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(order)]
    names = sorted({c for _, c in rows})
    index = {c: i for i, c in enumerate(names)}
    return ([t for t, _ in rows], np.array([index[c] for _, c in rows]), len(names),
            [c for _, c in rows])


def run(mode: str, texts: list[str], truth: np.ndarray, n_labels: int, gold: list[str],
        fit_sample: int | None) -> dict[str, Any]:
    """Discover intents with ``mode``'s embedder, score them and their names, print a summary."""
    embedder = default_embedder(mode)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    vectors = embedder.embed(texts)
    t_embed = time.perf_counter() - t0
    if fit_sample is None:
        labels, report = cluster_embeddings(vectors)
    else:
        model, ids = build_intent_model(texts, embedder=embedder, embeddings=vectors,
                                        fit_sample=fit_sample, sub_intents=False)
        numbers = {r.id: k for k, r in enumerate(model.top_level)}
        labels = np.array([NOISE if i is None else numbers[i] for i in ids], dtype=np.int64)
        report = ClusteringReport(len(numbers), len(numbers), float("nan"), int((labels == NOISE).sum()))
    t_total = time.perf_counter() - t0
    reassigned = _assign_to_nearest(vectors, labels)
    names = score_names(texts, gold, labels, vectors)

    result: dict[str, Any] = {
        "embedder": embedder.name,
        "fit_sample": fit_sample,
        "n_texts": len(texts),
        "true_intents": n_labels,
        "clusters_found": report.n_clusters,
        "dendrogram_cut": report.cut,
        "noise_share": round(float((labels == NOISE).mean()), 4),
        "noise_as_own_label": score(truth, labels),
        "noise_reassigned": score(truth, reassigned),
        "names": names,
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
    print(f"names               {names['share_with_gold_word']:.1%} contain a gold word "
          f"(keyphrase names: {names['baseline_keyphrase_names_share_with_gold_word']:.1%}), "
          f"{names['keyphrase_list_names']} keyphrase lists, "
          f"{names['share_3_to_6_words']:.0%} with 3-6 words")
    for ex in names["largest_clusters"][:5]:
        print(f"                    {ex['name']!r:42} gold {ex['gold']}")
    print(f"seconds             {t_total:.1f}  (embedding {t_embed:.1f}, naming {names['seconds']})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", choices=["all", "default", "fast", "tfidf"], default="all")
    parser.add_argument("--limit", type=int, default=None, help="use N queries (default all)")
    parser.add_argument("--fit-sample", type=int, default=None,
                        help="discover on a random sample of N texts and place the rest as later "
                             "runs do (the fast mode of extract); scores top-level intents")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    args = parser.parse_args(argv)

    texts, truth, n_labels, gold = load(args.limit)
    modes = ["default", "fast", "tfidf"] if args.embedder == "all" else [args.embedder]
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        results[mode] = run(mode, texts, truth, n_labels, gold, args.fit_sample)
        print()

    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stored: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        for mode, result in results.items():
            key = mode if args.limit is None else f"{mode}-limit{args.limit}"
            if args.fit_sample is not None:
                key += f"-sample{args.fit_sample}"
            stored.setdefault("runs", {})[key] = result
        stored["dataset"] = "BANKING77 train.csv (labels used for scoring only; k not given)"
        RESULTS.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
