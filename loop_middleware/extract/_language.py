"""Dependency-free language detection, and the two detectors built on it.

:func:`detect_language` tells non-Latin scripts apart by their Unicode script (any script, via
the Unicode character names as a fallback) and common Latin-script languages by stop-word
profiles. It is a rule, not a model: no weights to download, fast enough to run on every user
message and reply. ``language_switch`` (the user changes language mid-thread) and
``language_mismatch`` (the agent answers in another language than the user wrote in) use it;
:data:`LANGUAGE_NAMES` lets diagnosis compare a prompt's "reply in Spanish" with the detected code.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Mapping

from ..types import Signal, Thread
from ._detection import DetectionContext
from ._evidence import _signal, clip_quote

# (first code point, script) boundaries; a code point belongs to the last range starting at or
# before it. "latin" and None (not a letter script) end ranges.
_SCRIPT_RANGES: list[tuple[int, str | None]] = [
    (0x0000, "latin"), (0x0250, None), (0x0370, "el"), (0x0400, "cyrillic"), (0x0530, "hy"),
    (0x0590, "he"), (0x0600, "arabic"), (0x0700, None), (0x0750, "arabic"), (0x0780, None),
    (0x08A0, "arabic"), (0x0900, "hi"), (0x0980, "bn"), (0x0A00, "pa"), (0x0A80, "gu"),
    (0x0B00, "or"), (0x0B80, "ta"), (0x0C00, "te"), (0x0C80, "kn"), (0x0D00, "ml"), (0x0D80, "si"),
    (0x0E00, "th"), (0x0E80, "lo"), (0x0F00, "bo"), (0x1000, "my"), (0x10A0, "ka"), (0x1100, "ko"),
    (0x1200, "am"), (0x1380, None), (0x1780, "km"), (0x1800, None), (0x1E00, "latin"),
    (0x1F00, "el"), (0x2000, None), (0x3040, "kana"), (0x3100, None), (0x3130, "ko"), (0x3190, None),
    (0x31F0, "kana"), (0x3200, None), (0x3400, "han"), (0x4DC0, None), (0x4E00, "han"),
    (0xA000, None), (0xAC00, "ko"), (0xD7B0, None), (0xF900, "han"), (0xFB00, None),
    (0xFB1D, "he"), (0xFB50, "arabic"), (0xFE00, None), (0xFE70, "arabic"), (0xFF00, "latin"),
    (0xFF66, "kana"), (0xFFA0, "ko"), (0xFFE0, None), (0x20000, "han"), (0x2FA20, None),
]
_SCRIPT_STARTS = [start for start, _ in _SCRIPT_RANGES]

def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _wordset(
        "the and is are was were you your my i it this that what with for have has not can do "
        "does did how why of to in on me please would could be there they we will just but an "
        "hello hi thanks thank where when which been am any get from about"
    ),
    "es": _wordset(
        "el la los las de del que y en un una es por para con no mi mis su se lo al como pero más "
        "está estoy tengo quiero puedo hola gracias qué cómo porque yo usted muy ya también esto "
        "eso dónde cuando hay mí tu le necesito pedido"
    ),
    "fr": _wordset(
        "le la les de des du et est un une je vous tu il elle nous pas ne que qui pour dans sur "
        "avec mon ma mes votre ce cette c ai suis bonjour merci au aux mais ou où très n j qu l d "
        "s y a été besoin commande"
    ),
    "de": _wordset(
        "der die das und ist ich nicht ein eine einen mit für auf sie es zu den dem des mein meine "
        "meinen wie was warum bitte danke hallo habe haben bin sind kann können auch noch schon "
        "aber oder wo wir ihr von im bei nach ihnen mir mich wurde keine"
    ),
    "it": _wordset(
        "il lo la gli le di del della che e è un una per con non sono ho mi ti ci mio mia come "
        "perché ciao grazie questo questa anche ma molto dove quando voglio posso si al nel sul "
        "da ordine vorrei"
    ),
    "pt": _wordset(
        "o a os as de do da dos das que e é um uma para com não meu minha eu você por em no na "
        "nos se mas como obrigado obrigada olá está estou tenho quero posso muito já também isso "
        "onde quando seu sua pelo pela ainda"
    ),
    "nl": _wordset(
        "de het een en is ik je jij u niet van dat die met voor op te mijn wat hoe waarom maar ook "
        "nog al er bij naar zijn heb hebben kan kunt wil dank bedankt hallo alstublieft graag geen "
        "wel dit waar wanneer"
    ),
}
# A word shared by several languages is weaker evidence for each of them.
_STOPWORD_WEIGHTS: dict[str, list[tuple[str, float]]] = {}
for _lang, _words in _STOPWORDS.items():
    for _w in _words:
        _STOPWORD_WEIGHTS.setdefault(_w, []).append((_lang, 0.0))
for _w, _pairs in _STOPWORD_WEIGHTS.items():
    _STOPWORD_WEIGHTS[_w] = [(lang, 1.0 / len(_pairs)) for lang, _ in _pairs]
del _lang, _words, _w, _pairs
_DIACRITIC_HINTS: dict[str, tuple[tuple[str, float], ...]] = {
    "ñ": (("es", 1.5),), "¿": (("es", 1.5),), "¡": (("es", 1.5),),
    "ß": (("de", 1.5),), "ä": (("de", 1.0),), "ö": (("de", 1.0),), "ü": (("de", 0.5),),
    "ã": (("pt", 1.5),), "õ": (("pt", 1.5),), "ç": (("fr", 0.5), ("pt", 0.5)),
    "œ": (("fr", 1.5),), "ê": (("fr", 0.7), ("pt", 0.3)), "è": (("fr", 0.5), ("it", 0.5)),
    "ò": (("it", 1.0),), "ì": (("it", 1.0),), "ù": (("it", 0.5), ("fr", 0.5)),
}
_LATIN_WORD = re.compile(r"[^\W\d_]+")


def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    script = _SCRIPT_RANGES[bisect_right(_SCRIPT_STARTS, cp) - 1][1]
    if script is None and ch.isalpha():
        # Any other script: its Unicode name starts with the script ("CHEROKEE LETTER A").
        name = unicodedata.name(ch, "")
        script = name.split(" ", 1)[0].lower() if name else None
    return script


def detect_language(text: str) -> str | None:
    """The language of ``text`` as a short code, or None when the text is too short to tell.

    Non-Latin scripts are recognised by their Unicode script (``ja`` when kana appear, ``zh`` for
    Han alone, ``ko``, ``ar``/``fa``/``ur``, ``he``, ``ru``/``uk``, ``el``, ``hi``, ``th``, ... and
    for any other script the first word of its Unicode character names, e.g. ``cherokee``).
    Latin-script text is scored against stop-word profiles of en, es, fr, de, it, pt and nl; a
    language is returned only when it clearly wins (others, e.g. Polish, come back as None).
    """
    counts: dict[str, int] = {}
    if not text.isascii():
        for ch in text:
            if ch.isalpha():
                s = _script_of(ch)
                if s is not None:
                    counts[s] = counts.get(s, 0) + 1
        latin = counts.pop("latin", 0)
        total = latin + sum(counts.values())
        if counts:
            # Brand names, order ids and URLs are Latin even in Japanese or Arabic text, so a
            # non-Latin script wins from 30% of the letters.
            script, n = max(counts.items(), key=lambda kv: kv[1])
            if n >= 0.3 * total and n >= 2:
                return _language_of_script(script, text, counts)
    return _latin_language(text)


def _language_of_script(script: str, text: str, counts: Mapping[str, int]) -> str:
    if script in ("han", "kana"):
        return "ja" if counts.get("kana", 0) else "zh"
    if script == "arabic":
        if any(c in text for c in "ٹڈڑںےھ"):
            return "ur"
        if any(c in text for c in "پچژگکی"):
            return "fa"
        return "ar"
    if script == "cyrillic":
        return "uk" if any(c in text for c in "іїєґІЇЄҐ") else "ru"
    return script


_MACHINE_TOKEN = re.compile(r"[\d_=/\\\[\]{}<>@#|$%^~`*+]|\w[.:]\w")
"""A whitespace-separated token that is machine text (ids, hashes, key=value, paths, URLs, host
names, timestamps, code): its letters say nothing about the writer's language (the hex of a
request id splits into "a", "d", "e" ..., which are French and Spanish stop words)."""


def _prose_words(text: str) -> list[str]:
    """The words of ``text`` outside machine tokens (see ``_MACHINE_TOKEN``), lower case."""
    return [w for tok in text.casefold().split() if not _MACHINE_TOKEN.search(tok)
            for w in _LATIN_WORD.findall(tok)]


def _latin_language(text: str) -> str | None:
    words = _prose_words(text)
    if len(words) < 3:
        return None
    scores: dict[str, float] = {}
    for w in words:
        for lang, weight in _STOPWORD_WEIGHTS.get(w, ()):
            scores[lang] = scores.get(lang, 0.0) + weight
    if not text.isascii():
        low = text.casefold()
        for ch, hints in _DIACRITIC_HINTS.items():
            if ch in low:
                for lang, bonus in hints:
                    scores[lang] = scores.get(lang, 0.0) + bonus
    if not scores:
        return None
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best_lang, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    if best >= 1.5 and best >= 1.5 * second:
        return best_lang
    return None


LANGUAGE_NAMES: Mapping[str, str] = {
    # English name and endonym -> the code detect_language returns. Generic (ISO 639-1 codes of
    # widely used languages), so a prompt line that names a reply language can be compared with
    # the language the replies were detected in.
    "english": "en", "spanish": "es", "español": "es", "castilian": "es", "french": "fr",
    "français": "fr", "german": "de", "deutsch": "de", "italian": "it", "italiano": "it",
    "portuguese": "pt", "português": "pt", "dutch": "nl", "nederlands": "nl", "russian": "ru",
    "русский": "ru", "ukrainian": "uk", "українська": "uk", "greek": "el", "ελληνικά": "el",
    "hebrew": "he", "עברית": "he", "arabic": "ar", "العربية": "ar", "persian": "fa", "farsi": "fa",
    "فارسی": "fa", "urdu": "ur", "اردو": "ur", "hindi": "hi", "हिन्दी": "hi", "bengali": "bn",
    "bangla": "bn", "punjabi": "pa", "gujarati": "gu", "odia": "or", "tamil": "ta", "telugu": "te",
    "kannada": "kn", "malayalam": "ml", "sinhala": "si", "thai": "th", "ไทย": "th", "lao": "lo",
    "tibetan": "bo", "burmese": "my", "georgian": "ka", "armenian": "hy", "korean": "ko",
    "한국어": "ko", "amharic": "am", "khmer": "km", "japanese": "ja", "日本語": "ja",
    "chinese": "zh", "mandarin": "zh", "中文": "zh",
}
"""Language names (English and native, lower case) -> the codes :func:`detect_language` returns."""


def language_switch(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The user's language changes mid-thread (e.g. English, then Japanese).

    Messages whose language cannot be told (too short, unknown Latin-script language) are skipped;
    ``details`` says whether the agent's reply followed the switch.
    """
    out: list[Signal] = []
    current: str | None = None
    for turn in thread.turns:
        text = turn.user_text
        lang = detect_language(text)
        if lang is None:
            continue
        if current is not None and lang != current:
            reply_lang = detect_language(turn.reply_text) if turn.reply_text else None
            script_change = _is_script_language(lang) or _is_script_language(current)
            out.append(_signal(thread, "language_switch", turn,
                               clip_quote(text, 0, None, ctx.evidence_max_chars),
                               0.9 if script_change else 0.7, **{"from": current, "to": lang},
                               reply_language=reply_lang,
                               agent_followed=None if reply_lang is None else reply_lang == lang))
        current = lang
    return out


def _is_script_language(lang: str) -> bool:
    return lang not in _STOPWORDS


def language_mismatch(thread: Thread, ctx: DetectionContext) -> list[Signal]:
    """The agent replied in another language than the user's message of the same turn.

    Both languages must be told by :func:`detect_language` (too short or unknown texts are
    skipped), so a reply quoting a product name or a command does not count. Unlike
    ``language_switch`` (the *user* changes language mid-thread), this fires on the first turn
    too: a user who writes Spanish from the start and is answered in English. ``details`` holds
    both languages.
    """
    out: list[Signal] = []
    for turn in thread.turns:
        if not turn.user_text or not turn.reply_text:
            continue
        user_lang = detect_language(turn.user_text)
        reply_lang = detect_language(turn.reply_text)
        if user_lang is None or reply_lang is None or user_lang == reply_lang:
            continue
        script_change = _is_script_language(user_lang) or _is_script_language(reply_lang)
        out.append(_signal(thread, "language_mismatch", turn,
                           clip_quote(turn.reply_text, 0, None, ctx.evidence_max_chars),
                           0.85 if script_change else 0.7, user_language=user_lang,
                           reply_language=reply_lang))
    return out
