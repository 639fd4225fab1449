"""The example agent's tools and their backends: a card-order table and a help-center search.

Everything here is built per agent (:func:`make_tools`), from files: no module-level state, so
two agents built from different directories never share a knowledge base or an order table.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool

from loop_middleware.errors import ConfigError

__all__ = [
    "NO_RESULTS",
    "Article",
    "KnowledgeBase",
    "OrderBook",
    "make_tools",
    "tokenize",
]

NO_RESULTS = "No results"
"""What ``search_kb`` returns when no article scores at least ``kb_min_score``."""

_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about *which* article a question is about ("how do I ... my card").
_STOPWORD_TEXT = """a about after again all am an and any are as at be been before being but by can cant could
    did do does doing dont for from get got had has have having he her here hi hello how i id if
    im in into is it its ive just know let like me mine more most my need no not now of off on
    once only or other our out please so some still such than thank thanks that the their them
    then there these they this those through to too up us very want was we were what whats when
    where which while who why will with would yet you your acme pay app account card cards money
    way use used using possible able tell help go going one back today yesterday isn don doesn didn
    won wasn aren haven"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


# "top up", "top-up", "topping up", "topped up" are one term.
_TOPUP = re.compile(r"\btop(?:ping|ped)?\s*ups?\b")


def _stem(word: str) -> str:
    # A deliberately tiny stemmer: enough for "cards/card", "activating/activated/activate".
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed content words of ``text`` (stop words dropped)."""
    text = _TOPUP.sub("topup", text.lower().replace("-", " "))
    return [_stem(w) for w in _WORD.findall(text) if len(w) > 1 and w not in _STOPWORDS]


@dataclass(frozen=True)
class Article:
    """One help-center article."""

    slug: str
    title: str
    body: str
    keywords: tuple[str, ...]

    @property
    def summary(self) -> str:
        """The article's first two sentences, as an answer would quote them."""
        sentences = re.split(r"(?<=[.!?])\s+", self.body.strip())
        return " ".join(sentences[:2])


class KnowledgeBase:
    """Markdown articles searched with a small idf-weighted keyword score.

    Each article is ``# Title``, an optional ``keywords: a, b`` line, then the body. A query's
    score against an article is the sum of the idf of the query terms the article contains, terms
    found in the title or keywords counting double; articles scoring below ``min_score`` are not
    returned (a miss is what exposes ungrounded answers).
    """

    def __init__(self, articles: Sequence[Article], *, min_score: float = 2.0) -> None:
        self.articles = list(articles)
        self.min_score = min_score
        self._head: list[set[str]] = []
        self._body: list[set[str]] = []
        df: dict[str, int] = {}
        for a in self.articles:
            head = set(tokenize(a.title + " " + " ".join(a.keywords)))
            body = set(tokenize(a.body))
            self._head.append(head)
            self._body.append(body)
            for t in head | body:
                df[t] = df.get(t, 0) + 1
        n = max(len(self.articles), 1)
        self._idf = {t: math.log(1 + n / c) for t, c in df.items()}

    @classmethod
    def from_dir(cls, directory: Path, *, min_score: float = 2.0) -> KnowledgeBase:
        """Load every ``*.md`` article of ``directory``."""
        if not directory.is_dir():
            raise ConfigError(f"knowledge-base directory not found: {directory}")
        articles = []
        for path in sorted(directory.glob("*.md")):
            text = path.read_text(encoding="utf-8")
            title, body_lines = path.stem, []
            keywords: tuple[str, ...] = ()
            for line in text.splitlines():
                if line.startswith("# ") and title == path.stem:
                    title = line[2:].strip()
                elif line.lower().startswith("keywords:") and not keywords:
                    keywords = tuple(k.strip() for k in line.split(":", 1)[1].split(",") if k.strip())
                else:
                    body_lines.append(line)
            articles.append(Article(path.stem, title, "\n".join(body_lines).strip(), keywords))
        return cls(articles, min_score=min_score)

    def score(self, query: str) -> list[tuple[float, Article]]:
        """Every article with its score for ``query``, best first (ties by slug)."""
        terms = set(tokenize(query))
        scored = []
        for a, head, body in zip(self.articles, self._head, self._body, strict=True):
            s = sum(self._idf[t] * (2.0 if t in head else 1.0) for t in terms if t in head or t in body)
            scored.append((round(s, 6), a))
        scored.sort(key=lambda p: (-p[0], p[1].slug))
        return scored

    def search(self, query: str, k: int = 1) -> list[Article]:
        """The best ``k`` articles scoring at least ``min_score`` (maybe none)."""
        return [a for s, a in self.score(query)[:k] if s >= self.min_score and s > 0]


class OrderBook:
    """Card orders and card transactions by id (``AP-12345``), from a JSON table."""

    def __init__(self, orders: Mapping[str, Mapping[str, Any]]) -> None:
        self.orders = {k.upper(): dict(v) for k, v in orders.items()}

    @classmethod
    def from_json(cls, path: Path) -> OrderBook:
        """Load ``{"orders": [{"order_id": ..., ...}, ...]}``."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"order table not found: {path}") from None
        except ValueError as exc:
            raise ConfigError(f"order table {path} is not valid JSON: {exc}") from None
        return cls({o["order_id"]: o for o in raw["orders"]})

    def get(self, order_id: str) -> dict[str, Any] | None:
        """The order, or None."""
        return self.orders.get(order_id.strip().upper())


def _describe(o: Mapping[str, Any]) -> str:
    if o["kind"] == "card_order":
        parts = [f"Order {o['order_id']}: card order for {o['product']}, ordered on {o['ordered_on']}",
                 f"status {o['status']}"]
        if "shipped_on" in o:
            parts.append(f"shipped on {o['shipped_on']} with {o['carrier']}")
        if "estimated_delivery" in o and o["status"] != "delivered":
            parts.append(f"estimated delivery {o['estimated_delivery']}")
        if "note" in o:
            parts.append(str(o["note"]))
        return ", ".join(parts) + "."
    status = str(o["status"]).replace("_", " ")
    return (f"Order {o['order_id']}: card transaction of {o['amount']} at {o['merchant']} "
            f"on {o['date']}, status {status}.")


def make_tools(kb: KnowledgeBase, orders: OrderBook) -> list[BaseTool]:
    """The four tools of the support agent, bound to this knowledge base and order table."""

    def lookup_order(order_id: str) -> str:
        """Look up a card order or a card transaction by its order number (e.g. AP-10101)."""
        o = orders.get(order_id)
        if o is None:
            return f"Order {order_id} not found."
        if o.get("backend") == "unavailable":
            # A real failure mode of production backends; ToolNode turns it into an error result.
            raise TimeoutError(f"orders service timed out after 5.0s (HTTP 504) for {o['order_id']}")
        return _describe(o)

    def request_refund(order_id: str, reason: str) -> str:
        """Open a refund request for a card transaction."""
        o = orders.get(order_id)
        if o is None:
            return f"Order {order_id} not found."
        if o["kind"] != "card_transaction":
            return f"Refund rejected: {o['order_id']} is a card order, not a card transaction."
        ref = f"RF-{zlib.crc32(o['order_id'].encode()) % 100000:05d}"
        return (f"Refund request {ref} opened for {o['order_id']} ({o['amount']} at {o['merchant']}); "
                f"reason: {reason[:120].rstrip('. ')}.")

    def search_kb(query: str) -> str:
        """Search the Acme Pay help center; returns the best article or 'No results'."""
        hits = kb.search(query)
        if not hits:
            return NO_RESULTS
        a = hits[0]
        return f"[{a.slug}] {a.title}\n{a.body}"

    def handoff_to_human(reason: str) -> str:
        """Hand the conversation over to a human support agent."""
        ticket = f"HO-{zlib.crc32(reason.encode()) % 10000:04d}"
        return f"Handoff ticket {ticket} created; a human agent will reply in this conversation."

    return [
        StructuredTool.from_function(f)
        for f in (lookup_order, request_refund, search_kb, handoff_to_human)
    ]
