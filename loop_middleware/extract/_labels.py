"""Intent labels in words: a short title built from a cluster's own most typical requests.

A keyphrase list ("refund / item / seller") says which words are frequent, not what the customers
want. A label is instead a phrase *taken from the requests themselves* ("Refund Not Showing
Up"), chosen so that it carries the words that set the cluster apart:

1. **Word weights.** Each content word gets ``df_c * (max(0, log(df_c / df_all)) + mu)``: how many
   of the cluster's requests use it (``df_c``) times how much more often than in all the requests
   (``df_all``). Function words (pronouns, articles, auxiliaries, prepositions, ...) weigh nothing
   and a word the cluster shares with everything ("help", "know") weighs little.
2. **Candidate phrases** are contiguous spans (no clause break inside) of the most typical
   requests: the medoid and those nearest it. A span starts with a content word (or a question
   word / possessive at most), ends with a content word or a particle ("showing *up*", "gone
   *through*"); inside it, articles and auxiliaries are dropped as in a headline, and a negation
   said just before the span is carried into it ("Why isn't my refund showing up?" -> "Refund Not
   Showing Up"; "I haven't received my card" -> "Card Not Received").
3. **Score** = the weights of the distinct content words, times the share of the cluster's
   requests that contain all of them (a phrase true of most members beats one member's detail),
   minus a small cost per word; 3-6 words are preferred.
4. **Title Case**, keeping the casing customers use for acronyms ("PIN", "ATM", "API").

Everything here is English grammar (which words are articles or auxiliaries), never a list of a
domain's topics; a cluster with no usable phrase falls back to its keyphrases.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FUNCTION_WORDS", "Phrase", "build_labels", "is_keyphrase_list", "title_case"]

# --- English grammar words (not topics) --------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "any"})
_POSSESSIVES = frozenset({"my", "your", "our", "their", "his", "her", "its"})
_AUXILIARIES = frozenset({
    "am", "is", "are", "was", "were", "be", "been", "being", "has", "have", "had",
    "do", "does", "did", "having",
})
_MODALS = frozenset({"can", "could", "will", "would", "should", "may", "might", "must", "shall"})
_NEGATIONS = frozenset({"not", "no", "never", "cannot"})
_PRONOUNS = frozenset({
    "i", "me", "you", "we", "us", "it", "they", "them", "he", "she", "him", "myself", "yourself",
    "itself", "themselves", "ourselves", "someone", "something", "anything", "everything",
    "nothing", "anyone", "everyone", "somebody", "anybody", "thing", "things", "stuff", "one",
    "mine", "yours", "ours", "theirs",
})
_PREPOSITIONS = frozenset({
    "to", "of", "in", "on", "at", "for", "with", "from", "by", "about", "into", "onto", "over",
    "under", "through", "up", "down", "out", "off", "back", "via", "after", "before", "during",
    "without", "within", "between", "across", "around", "against", "per", "than", "as", "like",
    "away", "along",
})
_CONJUNCTIONS = frozenset({"and", "or", "nor"})
_QUESTION = frozenset({"what", "why", "how", "when", "where", "which", "who", "whom", "whose"})
_FILLERS = frozenset({
    "please", "pls", "plz", "hi", "hello", "hey", "thanks", "thank", "just", "also", "still",
    "yet", "already", "again", "really", "very", "too", "even", "now", "here", "there", "ok",
    "okay", "yes", "so", "then", "well", "actually", "currently", "maybe", "possibly", "ever",
    "anyway", "kindly", "dear", "sir", "madam", "guys", "lot", "bit", "much", "many", "other",
    "another", "way", "if", "whether", "all", "each", "every", "only", "own", "same", "such",
    "more", "most", "less", "there's", "able", "sure", "etc",
})
_STANCE = frozenset({"want", "wants", "wanted", "wish", "need", "needs", "like", "think",
                     "hope", "wonder", "wondering", "noticed", "seem", "seems", "try", "tried",
                     "trying", "know", "guess", "believe"})
"""Verbs of wanting, thinking or trying: they frame a request ("I want to cancel ...") and
never start or end its label (what is wanted, thought or tried is the topic)."""
_HEADLINE_DROPS = frozenset({"please", "pls", "plz", "just", "also", "really", "very",
                             "actually", "there", "here", "kindly", "so", "then", "well"})
"""Fillers dropped inside a label, as a headline drops them."""
_PARTICLES = frozenset({"up", "through", "out", "off", "back", "down", "away"})
"""Particles of phrasal verbs ("show *up*", "go *through*"): a label may end with one."""
_BREAK_WORDS = frozenset({"but", "because", "since", "although", "though", "so", "if", "while",
                          "unless", "whereas", "otherwise"})
# Irregular past participles: where a carried negation goes ("card not *sent*").
_IRREGULAR_PARTICIPLES = frozenset({
    "gone", "done", "seen", "shown", "known", "taken", "given", "sent", "paid", "made", "got",
    "gotten", "come", "left", "lost", "stolen", "found", "held", "kept", "put", "set", "spent",
    "built", "brought", "bought", "taught", "caught", "told", "sold", "run", "written", "frozen",
    "broken", "chosen", "driven", "withdrawn", "drawn", "hidden", "forgotten", "arrived",
})

FUNCTION_WORDS: frozenset[str] = (
    _ARTICLES | _POSSESSIVES | _AUXILIARIES | _MODALS | _NEGATIONS | _PRONOUNS | _PREPOSITIONS
    | _CONJUNCTIONS | _QUESTION | _FILLERS | _BREAK_WORDS
)
"""Words that carry grammar, not topic: they never weigh in a label and never start or end one."""

_CONTRACTIONS = {"can't": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"),
                 "cannot": ("can", "not"), "ain't": ("is", "not")}
# Words of any script (not only ASCII), so a label can be built in any language.
_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[.,;:!?()\[\]\"/|]")
_BREAK = frozenset(".,;:!?()[]\"/|")


@dataclass(frozen=True)
class _Tok:
    surface: str
    """As written (for display)."""
    low: str
    """Lower case (for grammar)."""
    key: str
    """Normalised for counting: lower case, no hyphens, plural ``s`` removed."""

    @property
    def content(self) -> bool:
        return self.key != "" and self.low not in FUNCTION_WORDS and not self.low.isdigit()


def _key(low: str) -> str:
    word = low.replace("-", "").replace("’", "'")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")):
        return word[:-1]
    return word


def _tok(surface: str, low: str | None = None) -> _Tok:
    low = surface.lower() if low is None else low
    return _Tok(surface, low, _key(low))


def _tokens(text: str) -> list[_Tok | None]:
    """Words of ``text`` with contractions expanded (``isn't`` -> ``is not``); None marks a
    clause break (punctuation, "but", "because", ...)."""
    out: list[_Tok | None] = []
    for raw in _TOKEN.findall(text):
        if raw in _BREAK:
            out.append(None)
            continue
        low = raw.lower().replace("’", "'")
        if low in _CONTRACTIONS:
            first, second = _CONTRACTIONS[low]
            out += [_tok(raw[: len(first)], first), _tok("not", second)]
        elif low.endswith("n't"):
            out += [_tok(raw[:-3], low[:-3]), _tok("not")]
        elif "'" in low:
            base, _, tail = low.partition("'")
            out.append(_tok(raw[: len(base)], base))
            if tail in ("m", "re", "ve", "ll", "d") or (tail == "s" and base in FUNCTION_WORDS):
                out.append(_tok(tail, "is" if tail == "s" else "am" if tail == "m" else "have"))
        else:
            out.append(None if low in _BREAK_WORDS else _tok(raw, low))
    return out


def _is_participle(low: str) -> bool:
    if low in _IRREGULAR_PARTICIPLES:
        return True
    if len(low) > 4 and low.endswith("ing"):
        return True
    return len(low) > 3 and low.endswith("ed") and not low.endswith("eed")


# --- title case -------------------------------------------------------------------------------


def title_case(words: Sequence[str], acronyms: set[str] | None = None) -> str:
    """``words`` in Title Case; a word in ``acronyms`` (lower case) is written in capitals."""
    out = []
    for w in words:
        if acronyms and w.lower() in acronyms:
            out.append(w.upper())
        elif w.lower() == "i":
            out.append("I")
        else:
            out.append("-".join(p[:1].upper() + p[1:].lower() if p else p for p in w.split("-")))
    return " ".join(out)


def is_keyphrase_list(name: str, keyphrases: Sequence[str], sources: Sequence[str] = ()) -> bool:
    """True when ``name`` is a bare list of keyphrases, not a phrase somebody said.

    That is: keyphrases joined by separators ("refund / item / seller"), or words that are
    nothing but two or more of the keyphrases one after the other *and* that no text of
    ``sources`` (the cluster's requests) says in that order within a few words ("Exchange Rate
    Wrong" is a keyphrase cover, but "This exchange rate ... is wrong" says it).
    """
    if re.search(r"\s[/|;,]\s|\s/|/\s", name):
        return True
    words = name.lower().split()
    phrases = [p.lower().split() for p in keyphrases if p.strip()]
    # Greedy cover of the name by whole keyphrases, in order.
    i, used = 0, 0
    while i < len(words):
        for p in sorted(phrases, key=len, reverse=True):
            if words[i : i + len(p)] == p:
                i += len(p)
                used += 1
                break
        else:
            return False
    if used < 2:
        return False
    return not any(_says_in_order(words, text) for text in sources)


def _says_in_order(words: Sequence[str], text: str, slack: int = 3) -> bool:
    """True when ``text`` has ``words`` (lower case) in this order, at most ``slack`` other
    words in between overall."""
    toks = [t.low for t in _tokens(text) if t is not None]
    for start, tok in enumerate(toks):
        if tok != words[0]:
            continue
        k, end = 1, start
        for j in range(start + 1, min(len(toks), start + len(words) + slack)):
            if k < len(words) and toks[j] == words[k]:
                k, end = k + 1, j
        if k == len(words) and end - start + 1 <= len(words) + slack:
            return True
    return False


# --- labels -----------------------------------------------------------------------------------


@dataclass
class Phrase:
    """One candidate label of a cluster."""

    words: list[str]
    """The label's words as written in the request."""
    keys: frozenset[str]
    """Its content words (normalised)."""
    score: float
    source: str
    """The request it was taken from."""


@dataclass
class _Stats:
    df_all: Counter[str]
    n_all: int
    acronyms: set[str]


def _word_weights(members: list[set[str]], stats: _Stats, mu: float) -> dict[str, float]:
    df = Counter(k for m in members for k in m)
    n = max(len(members), 1)
    out: dict[str, float] = {}
    for k, count in df.items():
        dfc = count / n
        dfa = stats.df_all[k] / max(stats.n_all, 1)
        out[k] = dfc * (max(0.0, math.log(dfc / max(dfa, 1e-9))) + mu)
    return out


def _spans(tokens: list[_Tok | None], weights: dict[str, float], floor: float,
           max_words: int) -> list[tuple[list[str], frozenset[str]]]:
    """Candidate spans of one request: ``(label words, content keys)``."""
    out: list[tuple[list[str], frozenset[str]]] = []
    clauses: list[list[_Tok]] = [[]]
    for t in tokens:
        if t is None:
            clauses.append([])
        else:
            clauses[-1].append(t)

    def strong(t: _Tok) -> bool:
        return t.content and weights.get(t.key, 0.0) >= floor

    for clause in clauses:
        n = len(clause)
        for i in range(n):
            first = clause[i]
            lead_ok = strong(first) or (
                first.low in _QUESTION | _POSSESSIVES and i + 1 < n and clause[i + 1].content
            )
            if not lead_ok or (i > 0 and clause[i - 1].low == "how") or first.low in _STANCE:
                continue  # "how long": the question word belongs to it; "want to ...": the wish
            for j in range(i, min(n, i + max_words + 4)):
                last = clause[j]
                if not (strong(last) or (last.low in _PARTICLES and j > i and clause[j - 1].content)):
                    continue
                if last.low in _STANCE:
                    continue  # "... and want": what is wanted comes after
                if j + 1 < n and clause[j + 1].low in _PARTICLES and last.low not in _PARTICLES:
                    continue  # "gone" without its "through", "top" without "up": another verb
                span = clause[i : j + 1]
                if any(t.low in _PRONOUNS for t in span):
                    continue  # "card I charged fee": a clause of its own, not a label
                # A negation said just before the span ("isn't my refund showing") belongs to it.
                before = [t.low for t in clause[max(0, i - 3) : i]]
                negated = "not" in before or "never" in before or "no" in before[-1:]
                words = _headline(span, negated, wh_start=first.low in _QUESTION)
                if words is None or not 1 <= len(words) <= max_words:
                    continue
                keys = frozenset(t.key for t in span if t.content)
                if keys:
                    out.append((words, keys))
    return out


def _headline(span: list[_Tok], negated: bool, *, wh_start: bool) -> list[str] | None:
    """Headline form of a span: articles dropped, auxiliaries dropped (kept in a question),
    a leading possessive dropped, a carried negation placed; None when it cannot be placed."""
    kept: list[_Tok] = []
    for k, t in enumerate(span):
        if t.low in _ARTICLES:
            continue
        if t.low in _AUXILIARIES | _MODALS and not wh_start and (k == 0 or span[k - 1].low != "to"):
            continue  # "to do", "to be", "to have": there the word is the verb itself
        if kept and kept[-1].low == t.low:
            continue
        if t.low in _HEADLINE_DROPS and kept:
            continue  # "statement there payment", "card just declined": words a headline drops
        kept.append(t)
    if negated and not any(t.low in _NEGATIONS for t in kept):
        idx = next((k for k, t in enumerate(kept) if _is_participle(t.low)), None)
        if idx is None:
            return None  # the span would say the opposite of the request
        not_tok = _tok("not")
        if idx == 0 and len(kept) > 1:
            # "received my card" -> "card not received": the object first, as in a headline.
            kept = [*kept[1:], not_tok, kept[0]]
        else:
            kept.insert(idx, not_tok)
    while len(kept) > 1 and kept[0].low in _POSSESSIVES and (len(kept) > 3 or kept[0].low != "my"):
        kept = kept[1:]  # "your exchange rates": the company's words, not the customer's topic
    if kept and kept[0].low in _POSSESSIVES and len(kept) > 1 and not kept[1].content:
        return None
    return [t.surface for t in kept]


def _acronyms(texts: Sequence[str]) -> set[str]:
    """Words customers mostly write in capitals (PIN, ATM, API), lower case."""
    upper: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for text in texts:
        for raw in re.findall(r"[A-Za-z][A-Za-z0-9]{1,5}", text):
            low = raw.lower()
            total[low] += 1
            if raw.isupper():
                upper[low] += 1
    return {w for w, n in upper.items() if n >= 2 and n >= 0.5 * total[w] and w != "i"}


@dataclass
class _Scoring:
    """How one cluster's candidate phrases are scored (see :func:`build_labels`)."""

    sets: list[set[str]]
    """The content words of each member request."""
    weights: dict[str, float]
    top: float
    min_words: int
    max_words: int
    word_cost: float
    support_base: float


def _collect(seen: dict[tuple[str, ...], Phrase], tokenized: Sequence[list[_Tok | None]],
             texts: Sequence[str], rows: Sequence[int], sc: _Scoring, cut: float,
             need: frozenset[str]) -> None:
    """Add to ``seen`` every candidate span of ``rows`` that contains the words ``need``."""
    top = sc.top
    for row in rows:
        for words, keys in _spans(tokenized[row], sc.weights, cut, sc.max_words):
            if not need <= keys:
                continue
            label = tuple(w.lower() for w in words)
            if label in seen:
                seen[label].score += 0.05 * top  # said the same way by several requests
                continue
            support = sum(1 for s in sc.sets if keys <= s) / max(len(sc.sets), 1)
            base = sum(sc.weights.get(k, 0.0) for k in keys)
            score = base * (sc.support_base + support) - sc.word_cost * top * len(words)
            if len(words) < sc.min_words:
                score -= 0.5 * top  # a real label has a few words
            seen[label] = Phrase(list(words), keys, score, texts[row])


def build_labels(
    texts: Sequence[str],
    clusters: Sequence[Sequence[int]],
    typical: Sequence[Sequence[int]],
    *,
    n_candidates: int = 12,
    min_words: int = 3,
    max_words: int = 6,
    mu: float = 0.3,
    word_cost: float = 0.04,
    support_base: float = 3.0,
    floor: float = 0.08,
) -> list[list[Phrase]]:
    """Ranked candidate labels of every cluster, best first.

    Args:
        texts: All the texts (the background for word weights).
        clusters: Each cluster's member rows in ``texts``.
        typical: Each cluster's rows from most to least typical (medoid first); the first
            ``n_candidates`` give the candidate phrases.
        min_words: Fewer words are accepted only when no longer candidate exists.
        max_words: Longest label.
        mu: Weight of a word for being frequent in the cluster, whatever its lift.
        word_cost: Cost of each word of a label, relative to the heaviest word's weight.
        support_base: How much a phrase's content counts before the share of requests that
            contain all of it (higher: longer, more specific labels).
        floor: A span starts and ends with a word weighing at least this share of the
            heaviest one.
    """
    tokenized = [_tokens(t) for t in texts]
    keysets = [{t.key for t in toks if t is not None and t.content} for toks in tokenized]
    stats = _Stats(Counter(k for ks in keysets for k in ks), len(texts), _acronyms(texts))
    out: list[list[Phrase]] = []
    for members, order in zip(clusters, typical, strict=True):
        sets = [keysets[i] for i in members]
        weights = _word_weights(sets, stats, mu)
        if not weights:
            out.append([])
            continue
        sc = _Scoring(sets, weights, max(weights.values()), min_words, max_words, word_cost,
                      support_base)
        rows = list(order)[:n_candidates]
        seen: dict[tuple[str, ...], Phrase] = {}
        _collect(seen, tokenized, texts, rows, sc, floor * sc.top, frozenset())
        best = max(seen.values(), key=lambda p: p.score, default=None)
        if best is not None and len(best.words) < min_words:
            # "Refund" alone says little: the same words in a longer phrase of a typical request,
            # its other words allowed to be less distinctive ("Refund Not Received Yet").
            _collect(seen, tokenized, texts, rows, sc, 0.25 * floor * sc.top, best.keys)
            longer = [p for p in seen.values() if len(p.words) >= min_words and best.keys <= p.keys]
            if longer:
                # The short label is kept only when no longer phrase says it.
                lift = best.score - min(p.score for p in longer) + 1e-6
                for p in longer:
                    p.score += lift
        ranked = sorted(seen.values(), key=lambda p: (-p.score, len(p.words), p.words))
        for p in ranked:
            p.words = title_case(p.words, stats.acronyms).split()
        out.append(ranked)
    return out
