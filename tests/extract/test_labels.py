"""Intent labels in words: built from the clusters' own most typical requests, checked on the
labelled BANKING77 set with the embedder of the core install (the shipped static model)."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loop_middleware.extract._cluster import cluster_embeddings
from loop_middleware.extract._embed import StaticEmbedder
from loop_middleware.extract._labels import (
    FUNCTION_WORDS,
    build_labels,
    is_keyphrase_list,
    title_case,
)
from loop_middleware.extract._naming import name_clusters


def _banking77() -> Path:
    """``../shared/datasets/banking77`` next to the repository (never inside it), or under
    ``$LOOP_SHARED_DIR`` as the example agent reads it; from a git worktree, next to the main
    checkout the worktree belongs to."""
    shared = os.environ.get("LOOP_SHARED_DIR")
    if shared:
        return Path(shared) / "datasets" / "banking77"
    root = Path(__file__).resolve().parents[2]
    roots = [root]
    git = root / ".git"
    if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        roots.append(gitdir.parents[2])
    for r in roots:
        if (r.parent / "shared" / "datasets" / "banking77").is_dir():
            return r.parent / "shared" / "datasets" / "banking77"
    return root.parent / "shared" / "datasets" / "banking77"


BANKING77 = _banking77()


def _label(texts: list[str]) -> str:
    """The best label of one cluster made of ``texts`` (medoid first), against a background."""
    background = ["How do I reset my password?", "The app crashes when I open it",
                  "Can I change my delivery address?", "What are your opening hours?"]
    all_texts = texts + background
    rows = list(range(len(texts)))
    labels = build_labels(all_texts, [rows], [rows])[0]
    assert labels, texts
    return " ".join(labels[0].words)


def test_label_carries_a_negation_and_drops_grammar_words() -> None:
    name = _label(["I haven't received my card yet", "My card has not arrived",
                   "still haven't received the card", "card not received, ordered 2 weeks ago"])
    assert name == "Card Not Received", name
    # Never a fragment of grammar as a topic.
    assert "haven't" not in name.lower() and "thing" not in name.lower().split()


def test_label_is_a_phrase_of_the_requests_in_title_case() -> None:
    texts = ["Why isn't my refund showing up?", "my refund is not showing up on my statement",
             "refund still not showing up", "When will the refund show up in my account?"]
    name = _label(texts)
    words = name.split()
    assert 3 <= len(words) <= 6 and all(w[0].isupper() for w in words), name
    assert "Refund" in words and "Not" in words, name


def test_title_case_keeps_acronyms() -> None:
    assert title_case(["change", "my", "pin"], {"pin"}) == "Change My PIN"
    assert title_case(["top-up", "declined"]) == "Top-Up Declined"


def test_keyphrase_list_detection() -> None:
    assert is_keyphrase_list("refund / item / seller", ["refund", "item", "seller"])
    assert is_keyphrase_list("Card New Haven't", ["card", "new", "haven't"],
                             ["I haven't got my new card"])
    # The same words said in that order by a customer are a phrase, not a list.
    assert not is_keyphrase_list("Direct Debit Payment", ["debit", "direct", "payment"],
                                 ["I do not know this direct debit payment"])
    assert not is_keyphrase_list("Card Not Received", ["card", "received"])


def _content_words(category: str) -> list[str]:
    return [w for w in category.lower().split("_") if w and w not in FUNCTION_WORDS]


def _shares_a_content_word(name: str, category: str) -> bool:
    """Same word, or the same first five letters (``arrival``/``arrive``, ``verify``/
    ``verification``): a word of the gold name said in another form still names the topic."""
    said = {w.lower().rstrip("s") for w in re.findall(r"[A-Za-z]+", name)}
    for word in _content_words(category):
        w = word.rstrip("s")
        if any(w == s or (len(w) >= 5 and len(s) >= 5 and w[:5] == s[:5]) for s in said):
            return True
    return False


def test_banking77_names_contain_a_word_of_the_gold_intent() -> None:
    path = BANKING77 / "train.csv"
    if not path.is_file():
        pytest.skip(f"BANKING77 not found at {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts = [r["text"] for r in rows]
    gold = [r["category"] for r in rows]
    x = StaticEmbedder().embed(texts)
    labels, _ = cluster_embeddings(x)
    infos = name_clusters(texts, labels, x)
    assert len(infos) >= 30

    hits, lists, lengths = 0, [], []
    names = [info.name for info in infos.values()]
    for c, info in infos.items():
        members = np.flatnonzero(labels == c)
        majority = Counter(gold[i] for i in members).most_common(1)[0][0]
        hits += _shares_a_content_word(info.name, majority)
        member_texts = [texts[i] for i in members]
        if is_keyphrase_list(info.name, info.keyphrases, member_texts):
            lists.append(info.name)
        lengths.append(len(info.name.split()))
        # The typical request is quoted as written, and it is one of the cluster's requests.
        assert info.typical_request in member_texts
        # No fragment of grammar ("haven't", "thing") stands in a name.
        assert "'" not in info.name and "thing" not in info.name.lower().split(), info.name
    share = hits / len(infos)
    print(f"\nBANKING77 (static model): {len(infos)} intents, {share:.1%} of names contain a "
          f"content word of the gold intent; words per name {min(lengths)}-{max(lengths)}, "
          f"{np.mean([n >= 3 for n in lengths]):.0%} with 3-6")
    assert share >= 0.8, share
    assert not lists, lists
    assert len(set(n.lower() for n in names)) == len(names)  # two intents never share a name
    assert max(lengths) <= 6 and np.mean([n >= 3 for n in lengths]) >= 0.9
