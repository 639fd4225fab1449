"""What a topic is called, read from the conversations: shared by diagnosis and fix drafting.

When an agent cannot do something it usually says so, and the object of that sentence names
the topic its prompt does not cover better than any mined keyword: "I'm sorry, I can't help
with refunds" -> *refund*. Generic English patterns only: no list of topics.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

__all__ = ["phrase_words", "refusal_topics", "singular", "topic_label"]

# What an agent says when it cannot do something: the object names the uncovered topic.
_CANNOT = re.compile(
    r"\b(?:can(?:no|['’])t|cannot|unable to|not able to|don['’]t|do not|am not allowed to)\s+"
    r"(?:help|assist|handle|deal|process|support|answer questions about|answer|discuss)\s+"
    r"(?:you\s+)?(?:with\s+|about\s+|on\s+)?(?P<what>[^.,;:!?\n]{3,60})",
    re.IGNORECASE)
# Words that never name a topic on their own: English stop words (scikit-learn's list) and the
# words any support request is made of.
_FILLER = ENGLISH_STOP_WORDS | {
    "request", "requests", "question", "questions", "issue", "issues", "problem", "problems",
    "thing", "things", "today", "right", "please", "kind", "sort", "type", "ones", "stuff",
    "matter", "matters", "case", "cases", "topic", "topics", "that's", "help", "support",
}


def phrase_words(text: str) -> list[str]:
    """The content words of a short phrase (no stop words, no contractions like "isn't"),
    at most three."""
    words = re.findall(r"[^\W\d_][\w'’-]*", text.lower())
    return [w for w in words if w not in _FILLER and "'" not in w and "’" not in w
            and len(w) >= 3][:3]


def singular(word: str) -> str:
    """A plural's singular by the common English endings ("refunds" -> "refund")."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def refusal_topics(texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """How often each object follows an "I can't help with ..." in ``texts`` (the agent's
    replies): ``("refunds",) -> 12``."""
    found: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for m in _CANNOT.finditer(text):
            words = phrase_words(m.group("what"))
            if words:
                found[tuple(words)] += 1
    return found


def topic_label(words: Iterable[str]) -> str:
    """``["refunds"] -> "refund"``: the words, singular, lower case, letters/digits/hyphens."""
    out = [re.sub(r"[^a-z0-9\-]", "", singular(w)) for w in words]
    return " ".join(w for w in out if w)
