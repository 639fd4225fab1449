"""Find and replace secrets and personal data in free text and in nested structures.

:class:`Redactor` runs a fixed set of detectors over a string, resolves overlaps (the most specific
detector wins: an OpenAI key inside ``api_key=...`` is reported as ``openai_key``, not as a generic
key-value secret), and replaces each finding by a token such as ``[REDACTED:openai_key]``,
``[EMAIL]``, ``[PHONE]`` or ``[CARD]``::

    from loop_middleware.privacy import Redactor

    r = Redactor()
    r.redact("mail me at ana@example.com, card 4111 1111 1111 1111")
    # 'mail me at [EMAIL], card [CARD]'

What is detected (the ``kind`` of each :class:`Finding`):

* **secrets** (always on): ``private_key`` (PEM blocks, also truncated ones), ``url_password``
  (only the password of ``scheme://user:pass@host``; user and host stay), ``anthropic_key``,
  ``openai_key``, ``github_token``, ``stripe_key``, ``slack_token``, ``google_api_key``,
  ``aws_access_key``, ``aws_secret_key`` (a 40-character key next to ``aws``/``secret``/an access key
  id), ``jwt``, ``bearer_token`` (``Bearer <token>``, ``Authorization: Basic <b64>``), ``secret_kv``
  (the value of ``password: ...``, ``api_key=...``, ``"token": "..."``, in a few languages) and
  ``high_entropy`` (random-looking tokens, see below; can be switched off);
* **cards** (always on): ``card``, 13-19 digits, optionally grouped with spaces or dashes, that pass
  the Luhn check *and* start like a real card number (Visa, Mastercard, Amex, Discover, JCB,
  Diners, UnionPay, Maestro), so order and tracking numbers are left alone;
* **personal data** (each on by default, each can be switched off): ``email``, ``phone``
  (international ``+CC ...``/``00CC ...``, North American ``(415) 555-0132``, trunk-prefixed national
  numbers ``020 7946 0958``/``06 12 34 56 78``/``030 12345678``, and bare digits right after a word
  such as *phone*, *mobile*, *tel*, *WhatsApp* in several languages) and ``iban`` (mod-97 checked,
  with the country's length).

What counts as *high entropy*: a run of ``[A-Za-z0-9+/_-]`` at least
:attr:`RedactionConfig.entropy_min_length` long that mixes upper case, lower case and digits, whose
Shannon entropy is at least :attr:`RedactionConfig.entropy_threshold` bits per character *and*
whose letters and digits come in short runs (mean run length <= 3 after a camelCase split). The last
rule is what separates ``aZ3kQ9mPx2...`` from ``getUserAccountBalance2``, ``base64EncodedPayloadV2``
or a long German compound. Deliberately **not** secrets: hex strings of any length (git SHAs,
SHA-256 digests, trace and span ids), UUIDs, numbers, single-case tokens such as
``v2.31.0-rc1+build.20240115``. A hex or single-case secret is still caught when it is the value of
a key such as ``secret=``/``token:`` (``secret_kv``). Opaque random ids (``pi_3MtwBwLkdIwHu7ix28a3``)
look exactly like secrets and are redacted; :attr:`RedactionConfig.allowlist` keeps them.

Known gaps, by choice (precision first): an unquoted password made of letters only (``password:
Summer``) reads like prose and is kept, unless it is quoted or sits under a sensitive dict key in
:meth:`Redactor.redact_value`; national phone numbers without a trunk prefix or separators
(``612 34 56 78``, ``5551234567``) are caught only after a word such as *phone*/*móvil*.

Every pattern is linear: bounded repetitions, no nested ambiguous quantifiers, literal prefixes so
the regex engine can skip ahead, PEM blocks paired with one pass over their END markers; the
keyword-led patterns (``password: ...``, ``phone ...``) and the e-mail and phone patterns run only
in windows around a keyword, an ``@`` or a digit group. :meth:`Redactor.redact` never raises: a non-string is stringified first, and an internal error
*fails closed* (the whole text becomes ``[REDACTED:error]``) because leaking is worse than losing a
quote.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import hmac
import logging
import math
import re
import threading
import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import ConfigError

__all__ = [
    "ALL_KINDS",
    "PII_KINDS",
    "SECRET_KINDS",
    "Finding",
    "RedactionConfig",
    "Redactor",
]

_log = logging.getLogger("loop_middleware.privacy")

SECRET_KINDS: tuple[str, ...] = (
    "private_key",
    "url_password",
    "anthropic_key",
    "openai_key",
    "github_token",
    "stripe_key",
    "slack_token",
    "google_api_key",
    "aws_access_key",
    "aws_secret_key",
    "jwt",
    "bearer_token",
    "secret_kv",
    "high_entropy",
)
"""Kinds of credentials. All are always detected except ``high_entropy`` (a heuristic)."""

PII_KINDS: tuple[str, ...] = ("card", "iban", "email", "phone")
"""Kinds of personal data. ``card`` is always detected; the others can be switched off."""

ALL_KINDS: tuple[str, ...] = SECRET_KINDS + PII_KINDS
"""Every kind a :class:`Finding` can have."""

_SECRET_SET = frozenset(SECRET_KINDS)

# Overlap resolution: the higher number wins; on a tie, the longer span wins. Specific provider
# patterns beat the generic ones that also match the same characters (``api_key=sk-...`` is an
# OpenAI key; ``Bearer eyJ...`` is a JWT), and the entropy heuristic loses to everything.
_PRIORITY: dict[str, int] = {
    "private_key": 100,
    "url_password": 95,
    "anthropic_key": 90,
    "openai_key": 89,
    "github_token": 88,
    "stripe_key": 87,
    "slack_token": 86,
    "google_api_key": 85,
    "aws_access_key": 84,
    "aws_secret_key": 83,
    "jwt": 80,
    "bearer_token": 70,
    "secret_kv": 60,
    "card": 50,
    "iban": 48,
    "email": 45,
    "phone": 40,
    "high_entropy": 10,
}

_DEFAULT_TOKENS: dict[str, str] = {
    **{k: f"[REDACTED:{k}]" for k in SECRET_KINDS},
    "card": "[CARD]",
    "iban": "[IBAN]",
    "email": "[EMAIL]",
    "phone": "[PHONE]",
}

_DEFAULT_SENSITIVE_KEYS = (
    r"(?i)^(?:.*[_\-.\s])?(?:password|passwd|pwd|passphrase|secret|client[_\-]?secret|api[_\-]?key"
    r"|apikey|access[_\-]?token|refresh[_\-]?token|auth[_\-]?token|id[_\-]?token|session[_\-]?token"
    r"|token|authorization|cookie|set[_\-]cookie|private[_\-]?key|credentials?)$"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected span of ``text[start:end]``.

    The matched value itself is deliberately not kept, so findings can be logged and reported.
    """

    kind: str
    """What was found: one of :data:`ALL_KINDS`."""
    start: int
    """Offset of the first character."""
    end: int
    """Offset one past the last character."""


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """What a :class:`Redactor` looks for and what it writes instead.

    Secrets (API keys, tokens, private keys, URL passwords, ``password: ...`` values) and card
    numbers are always redacted: there is deliberately no switch for them.
    """

    emails: bool = True
    """Redact e-mail addresses (``[EMAIL]``)."""
    phones: bool = True
    """Redact phone numbers (``[PHONE]``)."""
    ibans: bool = True
    """Redact IBANs that pass the mod-97 check (``[IBAN]``)."""
    high_entropy: bool = True
    """Redact random-looking tokens that no specific pattern recognised (``high_entropy``)."""
    entropy_min_length: int = 20
    """Shortest token the entropy heuristic looks at (characters)."""
    entropy_threshold: float = 3.5
    """Least Shannon entropy, in bits per character, for a token to count as random."""
    allowlist: tuple[str, ...] = ()
    """Regular expressions; a finding whose whole matched text fully matches one is kept as is
    (for known non-secret ids such as ``r"pi_[A-Za-z0-9]{24}"``)."""
    replacements: Mapping[str, str] = field(default_factory=dict)
    """Per-kind replacement text overriding the defaults (``[REDACTED:<kind>]``, ``[EMAIL]``,
    ``[PHONE]``, ``[CARD]``, ``[IBAN]``)."""
    hook: Callable[[str], str] | None = None
    """Applied to the text after the built-in redaction, for the host's own rules (customer ids,
    internal hostnames...). If it raises, the result fails closed to ``[REDACTED:hook_error]``."""
    pseudonymize: bool = False
    """Append a stable pseudonym to the tokens of :attr:`pseudonym_kinds`, e.g.
    ``[EMAIL:3f9a0c1d2e]``: HMAC-SHA256 of the normalised value with :attr:`pseudonym_salt`, so the
    same address can be counted across threads without being revealed."""
    pseudonym_salt: bytes | None = None
    """The secret key of the pseudonym HMAC (keep one per store). Required with :attr:`pseudonymize`."""
    pseudonym_kinds: frozenset[str] = frozenset({"email", "phone", "card", "iban"})
    """Which kinds get a pseudonym when :attr:`pseudonymize` is on."""
    sensitive_keys: str = _DEFAULT_SENSITIVE_KEYS
    """In :meth:`Redactor.redact_value`, a string stored under a mapping key matching this regex
    (``password``, ``api_key``, ``authorization``, ``db_password``...) is redacted whole as
    ``secret_kv``, whatever it looks like. Empty string: off."""
    redact_keys: bool = False
    """In :meth:`Redactor.redact_value`, also redact string mapping *keys* (off: keys are schema
    names, and two keys redacting to the same token would collide)."""
    max_depth: int = 64
    """In :meth:`Redactor.redact_value`, containers nested deeper than this are flattened to the
    text of their leaves and redacted as one string (so a 10,000-deep structure cannot crash)."""

    def __post_init__(self) -> None:
        if self.entropy_min_length < 8:
            raise ConfigError("entropy_min_length must be at least 8")
        if not 0.0 < self.entropy_threshold <= 8.0:
            raise ConfigError("entropy_threshold must be in (0, 8] bits per character")
        if not 1 <= self.max_depth <= 200:
            # The walk recurses once per level; 200 keeps far below Python's recursion limit.
            raise ConfigError("max_depth must be between 1 and 200")
        unknown = set(self.replacements) - set(ALL_KINDS)
        if unknown:
            raise ConfigError(f"replacements for unknown kinds: {sorted(unknown)}")
        unknown = set(self.pseudonym_kinds) - set(ALL_KINDS)
        if unknown:
            raise ConfigError(f"pseudonym_kinds has unknown kinds: {sorted(unknown)}")
        if self.pseudonymize and not self.pseudonym_salt:
            raise ConfigError("pseudonymize=True needs a pseudonym_salt (bytes, one per store)")
        if self.hook is not None and not callable(self.hook):
            raise ConfigError("hook must be a callable str -> str")
        for pattern in (*self.allowlist, self.sensitive_keys):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"invalid regular expression {pattern!r}: {exc}") from exc


# --- patterns ---------------------------------------------------------------------------------
# Conventions: ASCII classes ([0-9], [A-Za-z]) so that look-alike Unicode digits are not parsed as
# card numbers; every repetition is bounded or over a class that cannot overlap what follows;
# patterns start with a literal where possible (the engine then jumps between occurrences) and
# the left word boundary is checked in Python (a look-behind first would disable that skip).

_A = re.ASCII

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# A block whose END marker was cut off (a truncated log line): take the base64 lines that follow.
# (Also across JSON-escaped newlines, "\\n", and with no separator after the header.)
_PEM_BODY = re.compile(r"(?:(?:[ \t\r\n]|\\[rn]){0,8}[A-Za-z0-9+/=]{16,})*")
_PEM_MAX_LEN = 64_000

_URL_PASSWORD = re.compile(r"://([^\s:/?#@\[\]\"'<>]{0,256}):([^\s/?#\"'<>]{1,256})@(?=[\w\[])")

_PREFIXED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("anthropic_key", re.compile(r"sk-ant-[A-Za-z0-9_\-]{20,400}", _A)),
    ("openai_key", re.compile(r"sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,400}", _A)),
    (
        "github_token",
        re.compile(r"gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{30,255}", _A),
    ),
    ("stripe_key", re.compile(r"[rs]k_(?:live|test)_[A-Za-z0-9]{10,250}", _A)),
    (
        "slack_token",
        re.compile(r"xox[abposr]-[A-Za-z0-9\-]{10,250}|xapp-[A-Za-z0-9\-]{10,250}", _A),
    ),
    ("google_api_key", re.compile(r"AIza[0-9A-Za-z_\-]{35}", _A)),
    ("aws_access_key", re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", _A)),
)
# Characters that may not touch a prefixed token on either side (else it is part of a bigger word).
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

_AWS_SECRET = re.compile(
    r"(?i:aws|secret|AKIA[A-Z0-9]{16})[^\n]{0,60}?(?<![A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
    _A,
)

_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{5,8000}\.[A-Za-z0-9_\-]{5,16000}\.[A-Za-z0-9_\-]{0,8000}", _A)

_BEARER = re.compile(
    r"(?i:bearer[ \t]{1,4}|authorization[ \t]{0,4}:[ \t]{0,4}basic[ \t]{1,4})"
    r"([A-Za-z0-9\-._~+/]{8,8192}=*)",
    _A,
)

_KV_KEYS = (
    r"api[_\- ]?key|apikey|x-api-key|secret[_\-]?key|client[_\-]?secret|access[_\-]?token"
    r"|auth[_\-]?token|refresh[_\-]?token|session[_\-]?token|id[_\-]?token|private[_\-]?key"
    r"|token|secret|password|passwd|passphrase|pwd|pass|pw|pin|contraseña|contrasena|passwort|kennwort"
    r"|mot de passe|senha|parola|wachtwoord|hasło|lösenord|salasana"
)
_KV = re.compile(
    r"(?i)(?P<q>[\"']?)(?P<key>" + _KV_KEYS + r")(?P=q)[ \t]{0,3}"
    r"(?P<sep>:|=>|=|\b(?:is|was|es|era|ist|war|est|était|é|era|è|är|on)\b)[ \t]{0,3}"
    r"(?:\"(?P<dq>[^\"\n]{1,256})\"|'(?P<sq>[^'\n]{1,256})'|`(?P<bq>[^`\n]{1,256})`"
    r"|(?P<bare>[^\s\"'`,;<>]{1,256}))"
)
_PLACEHOLDER = re.compile(
    r"(?i)^(?:<[^>]*>|\$\{?[\w.]+\}?|\{\{.*\}\}|\{[\w.]*\}|%\(?\w*\)?[sd]|\*+|x+|\.+|-+|null|none|nil|"
    r"true|false|undefined|n/?a|redacted|\[redacted[^\]]*\]|\[[a-z_]+\]|your[_\- ].*|\.\.\.|…)$"
)
_AT = re.compile("@")
_TICKET_PASS = re.compile(r"(?i)(?:boarding|bus|day|season|ski|train|hall|guest)[ \t]*$")
_QUERY_NEXT = re.compile(r"&[A-Za-z_][\w.\-]*=")
_DOTTED_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")

_CARD = re.compile(r"(?<![\w+])[0-9](?:[ \-]?[0-9]){12,18}(?![ \-]?[0-9])")

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,32}", _A)
# ISO 13616 registry lengths (the common ones); unknown country codes are not treated as IBANs.
# fmt: off
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
# fmt: on

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-][\w.%+\-']{0,63}@(?:[\w\-]{1,63}\.){1,8}[^\W\d_]{2,24}(?![\w\-])"
)
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "pdf"})

_PHONE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # International: +CC or 00CC, an optional "(0)"/area in parentheses, then 6-14 digits with
    # optional single separators. One digit per repetition: no two ways to split the same digits.
    re.compile(
        r"(?<![\w+])(?:\+|\b00)[1-9][0-9]{0,2}(?:[ .\-]?\([0-9]{1,4}\))?(?:[ .\-]?[0-9]){6,14}"
        r"(?![ .\-]?[0-9])(?!\w)"
    ),
    # North American: (415) 555-0132, 415-555-0132, 415.555.0132, 1-800-555-0199.
    re.compile(
        r"(?<![\w+])(?:1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}([ .\-]))"
        r"[0-9]{3}[ .\-][0-9]{4}(?![ .\-]?[0-9])(?!\w)"
    ),
    # Trunk-prefixed national numbers with ONE consistent separator: 020 7946 0958,
    # 06 12 34 56 78, 030 12345678, 089/1234567 (dates such as 01.02.2024 are too short).
    re.compile(
        r"(?<![\w+])0[0-9]{1,4}([ .\-/])[0-9]{2,8}(?:\1[0-9]{2,8}){0,3}"
        r"(?![ .\-/]?[0-9])(?!\w)"
    ),
)
_PHONE_WORDS = (
    r"phone|tel|telephone|mobile|cell|cellphone|whatsapp|sms|fax|tél|téléphone|portable"
    r"|teléfono|telefono|móvil|movil|celular|telefone|handy|telefon|telefonnummer|handynummer"
    r"|rufnummer"
)
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:" + _PHONE_WORDS + r")\b[^0-9\n]{0,25}?(\+?\(?[0-9][0-9 .\-()]{5,20}[0-9])(?![0-9])"
)
# Where a formatted phone number could be: two digits around a separator, or "+digit". The phone
# patterns only run in small windows around these (their leading look-behinds would otherwise
# make the engine try every position of the text).
_PHONE_HINT = re.compile(r"[0-9][ .\-/)]{1,2}[0-9(]|\+[0-9]")

# Case-sensitive keyword scans over ``text.lower()`` are ~10x faster than ``(?i)`` alternations
# over the text; the full pattern then runs only where a keyword is.
_KV_KEY_SCAN = re.compile(_KV_KEYS)
_PHONE_WORD_SCAN = re.compile(_PHONE_WORDS)

# A run of base64/base64url characters; a double dash ends it (PEM armour, "--flag", "a--b").
_ENTROPY_TOKEN = r"(?<![A-Za-z0-9+/_\-])(?:[A-Za-z0-9+/_]|-(?!-)){%d,}={0,2}"
_HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")
_UUID_LIKE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_RUNS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


# --- checks -----------------------------------------------------------------------------------


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(digits: str) -> bool:
    """Whether the number starts like an issued card of that length (IIN ranges)."""
    n = len(digits)
    first = digits[0]
    two = int(digits[:2])
    four = int(digits[:4])
    if first == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # Amex
        return n == 15
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:  # Diners
        return 14 <= n <= 19
    if two == 35:  # JCB
        return 16 <= n <= 19
    if first == "6":  # Discover, UnionPay, Maestro
        return 16 <= n <= 19
    if two in (50, 56, 57, 58):  # Maestro
        return 12 <= n <= 19
    return False


def _iban_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def _shannon(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _looks_random(token: str, min_length: int, threshold: float) -> bool:
    """The high-entropy rule (see the module docstring)."""
    core = token.rstrip("=")
    if len(core) < min_length:
        return False
    if _HEX.match(core) or _UUID_LIKE.search(core):
        return False
    has_upper = has_lower = has_digit = False
    for ch in core:
        if "a" <= ch <= "z":
            has_lower = True
        elif "A" <= ch <= "Z":
            has_upper = True
        elif "0" <= ch <= "9":
            has_digit = True
    if not (has_upper and has_lower and has_digit):
        return False
    if _shannon(core) < threshold:
        return False
    runs = _RUNS.findall(core)
    return bool(runs) and sum(map(len, runs)) / len(runs) <= 3.0


def _secret_value_ok(value: str, quoted: bool, sep: str) -> bool:
    """Whether a ``key<sep>value`` value is a literal secret rather than prose or a reference."""
    if _PLACEHOLDER.match(value):
        return False
    if quoted:
        return True
    if value.startswith(("$", "%", "{", "(")) or "(" in value or "[" in value:
        return False  # os.environ["X"], getenv("X"), ${VAR}: a reference, not the secret
    if _DOTTED_IDENTIFIER.match(value):
        return False  # settings.api_key, self.token
    # Unquoted plain words are prose ("my password is wrong") or variable names (api_key=key);
    # a literal unquoted secret almost always carries a digit or a symbol.
    if _IDENTIFIER.match(value) and not any(ch.isdigit() for ch in value):
        return False
    if sep not in ("=", ":", "=>") and len(value) < 4:
        return False
    return len(value) >= 3


# --- the redactor -----------------------------------------------------------------------------

_Candidate = tuple[int, int, str, int]  # start, end, kind, priority


class Redactor:
    """Detects and replaces secrets and personal data. Thread-safe; build one and share it.

    Args:
        config: What to look for and how to replace it; the defaults when omitted.
    """

    def __init__(self, config: RedactionConfig | None = None) -> None:
        self.config = config if config is not None else RedactionConfig()
        cfg = self.config
        self._tokens = {**_DEFAULT_TOKENS, **dict(cfg.replacements)}
        self._allow = tuple(re.compile(p) for p in cfg.allowlist)
        self._sensitive_key = re.compile(cfg.sensitive_keys) if cfg.sensitive_keys else None
        self._entropy_token = re.compile(_ENTROPY_TOKEN % cfg.entropy_min_length, _A)
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter()

    # -- public API --------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counts of redacted findings per kind since creation (or :meth:`reset_stats`), plus
        ``hook_error``/``error`` when the hook or the redactor itself failed."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._stats.clear()

    def findings(self, text: Any) -> list[Finding]:
        """The spans :meth:`redact` would replace, in order (the hook is not consulted).

        A non-string is looked at as ``str(text)``.
        """
        s = _as_text(text)
        if s is None:
            return []
        return [Finding(kind, start, end) for start, end, kind in self._find(s)]

    def redact(self, text: Any) -> str:
        """Return ``text`` with every finding replaced by its token, then the hook applied.

        Never raises: ``None`` becomes ``""``, other non-strings are stringified (bytes decoded
        as UTF-8 with replacement), and an internal failure returns ``"[REDACTED:error]"``.
        """
        s = _as_text(text)
        if s is None:
            return "[REDACTED:error]" if text is not None else ""
        counts: Counter[str] = Counter()
        try:
            out = self._replace(s, counts)
        except Exception:  # noqa: BLE001 - fail closed: better no quote than a leaked key
            _log.exception("redaction failed; the text is withheld")
            counts["error"] += 1
            out = "[REDACTED:error]"
        hook = self.config.hook
        if hook is not None and out != "[REDACTED:error]":
            try:
                hooked = hook(out)
                if not isinstance(hooked, str):
                    raise TypeError(f"hook returned {type(hooked).__name__}, not str")
                out = hooked
            except Exception:  # noqa: BLE001 - the host's hook may raise anything; fail closed
                _log.exception("redaction hook failed; the text is withheld")
                counts["hook_error"] += 1
                out = "[REDACTED:hook_error]"
        if counts:
            with self._lock:
                self._stats.update(counts)
        return out

    def redact_value(self, obj: Any) -> Any:
        """Redact every string inside ``obj``: dicts (values; keys with ``redact_keys``), lists,
        tuples, sets, pydantic models and dataclasses, to any depth.

        Strings under a sensitive mapping key (``password``, ``api_key``, ``authorization``...,
        see :attr:`RedactionConfig.sensitive_keys`) are replaced whole. Numbers, booleans,
        ``None``, dates, decimals, UUIDs and enum members are returned as they are; bytes are
        redacted as UTF-8 text and re-encoded; any other object is stringified and redacted.
        Pydantic models and dataclasses come back as the same type when they still validate, as
        plain dicts otherwise. Containers deeper than :attr:`RedactionConfig.max_depth` (and
        reference cycles) are flattened to the text of their leaves and redacted as one string.
        The input is never modified. Never raises.
        """
        try:
            return self._walk(obj, 0, frozenset())
        except Exception:  # noqa: BLE001 - never raise into capture; fail closed
            _log.exception("redact_value failed; the value is withheld")
            with self._lock:
                self._stats["error"] += 1
            return "[REDACTED:error]"

    # -- detection ---------------------------------------------------------------------------

    def _find(self, s: str) -> list[tuple[int, int, str]]:
        cands: list[_Candidate] = [
            (start, end, kind, _PRIORITY[kind]) for start, end, kind in self._candidates(s)
        ]
        if not cands:
            return []
        chosen = _resolve(s, cands)
        if self._allow:
            chosen = [c for c in chosen if not any(p.fullmatch(s, c[0], c[1]) for p in self._allow)]
        return chosen

    def _candidates(self, s: str) -> Iterator[tuple[int, int, str]]:
        cfg = self.config
        yield from _find_pem(s)
        if "://" in s:
            for m in _URL_PASSWORD.finditer(s):
                if m.group(2).strip("*xX"):
                    yield m.start(2), m.end(2), "url_password"
        for kind, pattern in _PREFIXED:
            for m in pattern.finditer(s):
                start, end = m.span()
                if (start and s[start - 1] in _TOKEN_CHARS) or (
                    end < len(s) and s[end] in _TOKEN_CHARS
                ):
                    continue
                if kind == "openai_key" and not any(ch.isdigit() for ch in m.group()):
                    continue  # "sk-this-is-a-slug": real keys always carry digits
                yield start, end, kind
        for m in _AWS_SECRET.finditer(s):
            tok = m.group(1)
            if (
                not _HEX.match(tok)
                and any(c.isdigit() for c in tok)
                and tok.lower() != tok
                and "//" not in tok  # a path (s3://bucket/...), not a key
                and tok.count("/") <= 2
            ):
                yield m.start(1), m.end(1), "aws_secret_key"
        if "eyJ" in s:
            for m in _JWT.finditer(s):
                start, end = m.span()
                if start and s[start - 1] in _TOKEN_CHARS:
                    continue
                yield start, end, "jwt"
        for m in _BEARER.finditer(s):
            start = m.start()
            if start and s[start - 1].isalnum():
                continue
            tok = m.group(1)
            if any(c.isdigit() for c in tok) or (
                len(tok) >= 16 and tok.lower() != tok != tok.upper()
            ):
                yield m.start(1), m.end(1), "bearer_token"
        lowered = s.lower()
        if len(lowered) != len(s):  # a rare character that lower-cases to two ("İ")
            lowered = ""
        yield from _find_kv(s, lowered)
        for m in _CARD.finditer(s):
            if _continues_number(s, m.start()):
                continue
            digits = m.group().replace(" ", "").replace("-", "")
            if 13 <= len(digits) <= 19 and _card_prefix_ok(digits) and _luhn_ok(digits):
                yield m.start(), m.end(), "card"
        if cfg.ibans:
            yield from _find_iban(s)
        if cfg.emails and "@" in s:
            ats = [m.start() for m in _AT.finditer(s)]
            for m in _finditer_windows(_EMAIL, s, _windows(ats, 66, 600, len(s))):
                local, _, domain = m.group().partition("@")
                if local == "git" or domain.rsplit(".", 1)[-1].lower() in _NOT_TLDS:
                    continue  # ssh remotes (git@github.com) and retina images (logo@2x.png)
                if m.start() >= 3 and s.startswith("://", m.start() - 3):
                    continue  # userinfo of a URL (https://user@host): not an address
                yield m.start(), m.end(), "email"
        if cfg.phones:
            yield from _find_phones(s, lowered)
        if cfg.high_entropy:
            min_len, thr = cfg.entropy_min_length, cfg.entropy_threshold
            for m in self._entropy_token.finditer(s):
                if _looks_random(m.group(), min_len, thr):
                    yield m.start(), m.end(), "high_entropy"

    # -- replacement -------------------------------------------------------------------------

    def _replace(self, s: str, counts: Counter[str]) -> str:
        found = self._find(s)
        if not found:
            return s
        parts: list[str] = []
        pos = 0
        for start, end, kind in found:
            parts.append(s[pos:start])
            parts.append(self._token(kind, s[start:end]))
            counts[kind] += 1
            pos = end
        parts.append(s[pos:])
        return "".join(parts)

    def _token(self, kind: str, value: str) -> str:
        token = self._tokens[kind]
        cfg = self.config
        if cfg.pseudonymize and kind in cfg.pseudonym_kinds and cfg.pseudonym_salt:
            digest = hmac.new(
                cfg.pseudonym_salt, f"{kind}\x00{_normalise(kind, value)}".encode(), hashlib.sha256
            ).hexdigest()[:10]
            token = f"{token[:-1]}:{digest}]" if token.endswith("]") else f"{token}:{digest}"
        return token

    # -- structures --------------------------------------------------------------------------

    def _walk(self, obj: Any, depth: int, path: frozenset[int]) -> Any:
        if isinstance(obj, str):
            return self.redact(obj)
        if obj is None or isinstance(obj, _OPAQUE):
            return obj
        if isinstance(obj, bytes | bytearray):
            return type(obj)(self.redact(bytes(obj).decode("utf-8", "replace")).encode("utf-8"))
        oid = id(obj)
        if depth >= self.config.max_depth or oid in path:
            return self.redact(_flatten(obj))
        inner = path | {oid}
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            for k, v in obj.items():
                key = self.redact(k) if (self.config.redact_keys and isinstance(k, str)) else k
                if (
                    isinstance(v, str)
                    and isinstance(k, str)
                    and self._sensitive_key is not None
                    and v
                    and self._sensitive_key.search(k)
                    and not _PLACEHOLDER.match(v)
                ):
                    with self._lock:
                        self._stats["secret_kv"] += 1
                    out[key] = self._token("secret_kv", v)
                else:
                    out[key] = self._walk(v, depth + 1, inner)
            return out
        if isinstance(obj, list):
            return [self._walk(v, depth + 1, inner) for v in obj]
        if isinstance(obj, tuple):
            items = [self._walk(v, depth + 1, inner) for v in obj]
            if hasattr(obj, "_fields"):  # NamedTuple
                try:
                    return type(obj)(*items)
                except Exception:  # noqa: BLE001 - a NamedTuple with a custom __new__
                    return tuple(items)
            return tuple(items)
        if isinstance(obj, set | frozenset):
            redacted = [self._walk(v, depth + 1, inner) for v in obj]
            try:
                return type(obj)(redacted)
            except TypeError:  # a redacted member became unhashable
                return redacted
        dump = getattr(obj, "model_dump", None)
        if callable(dump):  # pydantic: rebuild the same model when it still validates
            data = self._walk(dump(), depth + 1, inner)
            try:
                return type(obj).model_validate(data)
            except Exception:  # noqa: BLE001 - the model's own validators may refuse a token
                return data
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            redacted_fields = self._walk(data, depth + 1, inner)
            try:
                return dataclasses.replace(obj, **redacted_fields)
            except Exception:  # noqa: BLE001 - frozen/__post_init__ checks may refuse a token
                return redacted_fields
        return self.redact(obj)


# Values that cannot carry free text: returned as they are by redact_value.
_OPAQUE = (
    bool,
    int,
    float,
    complex,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    Decimal,
    uuid.UUID,
    enum.Enum,
)


def _as_text(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if obj is None:
        return None
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", "replace")
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - an object's __str__ may raise anything
        return None


def _normalise(kind: str, value: str) -> str:
    """The form of a value that the pseudonym hashes, so spellings of one value agree."""
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    if kind in ("card", "iban"):
        return "".join(ch for ch in value if ch.isalnum()).upper()
    return value


def _flatten(obj: Any, limit: int = 1_000_000) -> str:
    """The text of a structure's leaves, without recursion (depth and cycles cannot crash it)."""
    parts: list[str] = []
    size = 0
    stack: list[Any] = [obj]
    seen: set[int] = set()
    while stack and size < limit:
        cur = stack.pop()
        if isinstance(cur, str | bytes | bytearray | int | float | bool) or cur is None:
            text = (
                cur.decode("utf-8", "replace") if isinstance(cur, bytes | bytearray) else str(cur)
            )
            parts.append(text)
            size += len(text)
            continue
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, Mapping):
            for k, v in reversed(list(cur.items())):
                stack.append(v)
                stack.append(k)
        elif isinstance(cur, list | tuple | set | frozenset):
            stack.extend(reversed(list(cur)))
        else:
            try:
                text = str(cur)
            except Exception:  # noqa: BLE001 - an object's __str__ may raise anything
                text = f"<{type(cur).__name__}>"
            parts.append(text)
            size += len(text)
    return " ".join(parts)


def _resolve(text: str, cands: list[_Candidate]) -> list[tuple[int, int, str]]:
    """Pick non-overlapping findings: within each cluster of overlapping candidates, the highest
    priority wins, then the longest. Linear after the sort: clusters are usually one candidate.

    A losing *secret* candidate that sticks out of the winners keeps the part that sticks out
    (``Bearer abc123-----BEGIN PRIVATE KEY-----``: the key block wins, ``abc123`` is still a
    token). A losing personal-data candidate is dropped whole: in ``https://bob:pw@host.com`` the
    e-mail look-alike ``pw@host.com`` loses to the password and the host stays readable.
    """
    cands.sort()
    chosen: list[tuple[int, int, str]] = []
    i, n = 0, len(cands)
    while i < n:
        cluster = [cands[i]]
        reach = cands[i][1]
        j = i + 1
        while j < n and cands[j][0] < reach:
            cluster.append(cands[j])
            reach = max(reach, cands[j][1])
            j += 1
        if len(cluster) == 1:
            s, e, k, _ = cluster[0]
            chosen.append((s, e, k))
        else:
            cluster.sort(key=lambda c: (-c[3], -(c[1] - c[0]), c[0]))
            taken: list[tuple[int, int, str]] = []
            for s, e, k, _ in cluster:
                if all(e <= ts or s >= te for ts, te, _k in taken):
                    taken.append((s, e, k))
                elif k in _SECRET_SET:
                    for ls, le in _uncovered(s, e, taken):
                        if any(ch.isalnum() for ch in text[ls:le]):
                            taken.append((ls, le, k))
            chosen.extend(sorted(taken))
        i = j
    return chosen


def _uncovered(start: int, end: int, taken: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` that no taken span covers."""
    out: list[tuple[int, int]] = []
    pos = start
    for ts, te, _k in sorted(taken):
        if te <= pos or ts >= end:
            continue
        if ts > pos:
            out.append((pos, ts))
        pos = max(pos, te)
    if pos < end:
        out.append((pos, end))
    return out


def _find_pem(s: str) -> Iterator[tuple[int, int, str]]:
    if "PRIVATE KEY" not in s:
        return
    ends = [m.end() for m in _PEM_END.finditer(s)]
    covered = 0
    for m in _PEM_BEGIN.finditer(s):
        start = m.start()
        if start < covered:
            continue
        k = bisect_right(ends, m.end())
        if k < len(ends) and ends[k] - start <= _PEM_MAX_LEN:
            end = ends[k]
        else:  # truncated block: the header and the base64 lines that follow it
            body = _PEM_BODY.match(s, m.end(), min(len(s), m.end() + _PEM_MAX_LEN))
            end = body.end() if body else m.end()
        covered = end
        yield start, end, "private_key"


def _keyword_matches(
    pattern: re.Pattern[str], scan: re.Pattern[str], s: str, lowered: str
) -> Iterator[re.Match[str]]:
    """``pattern.finditer(s)``, tried only where ``scan`` finds a keyword in ``lowered``."""
    if not lowered:
        yield from pattern.finditer(s)
        return
    last_end = 0
    for k in scan.finditer(lowered):
        pos = k.start()
        if pos < last_end:
            continue
        m = None
        if pos and s[pos - 1] in "\"'":
            m = pattern.match(s, pos - 1)  # a quoted key: "password": "..."
        if m is None:
            m = pattern.match(s, pos)
        if m is not None:
            last_end = m.end()
            yield m


def _windows(anchors: list[int], before: int, after: int, n: int) -> list[tuple[int, int]]:
    """Merged ``[anchor - before, anchor + after)`` intervals, clipped to ``[0, n)``."""
    out: list[tuple[int, int]] = []
    for a in anchors:
        lo, hi = max(0, a - before), min(n, a + after)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _finditer_windows(
    pattern: re.Pattern[str], s: str, windows: list[tuple[int, int]]
) -> Iterator[re.Match[str]]:
    # Look-behinds still see the characters before a window's start (pos is not a slice).
    for lo, hi in windows:
        yield from pattern.finditer(s, lo, hi)


def _find_kv(s: str, lowered: str) -> Iterator[tuple[int, int, str]]:
    for m in _keyword_matches(_KV, _KV_KEY_SCAN, s, lowered):
        start = m.start()
        if start and (s[start - 1].isalnum()):
            continue  # "mypassword" / "tokens": the key must start a word (or follow _ - .)
        sep = m.group("sep")
        if m.group("key").lower() == "pass" and (
            sep not in (":", "=") or _TICKET_PASS.search(s, max(0, start - 12), start)
        ):
            continue  # "boarding pass: QX7T2M" is a ticket; "pass is" is prose
        for group, quoted in (("dq", True), ("sq", True), ("bq", True), ("bare", False)):
            value = m.group(group)
            if value is None:
                continue
            vstart, vend = m.span(group)
            if not quoted:
                # A query string goes on after the value (token=abc&expires_in=3600), and a
                # sentence-final period belongs to the sentence, not to the password.
                amp = _QUERY_NEXT.search(s, vstart, vend)
                if amp:
                    vend = amp.start()
                while vend > vstart and s[vend - 1] in ".):":
                    vend -= 1
                value = s[vstart:vend]
            if value and _secret_value_ok(value, quoted, sep.lower()):
                yield vstart, vend, "secret_kv"
            break


def _find_iban(s: str) -> Iterator[tuple[int, int, str]]:
    for m in _IBAN.finditer(s):
        text = m.group()
        length = _IBAN_LENGTHS.get(text[:2])
        if length is None:
            continue
        # The greedy match may have swallowed a following upper-case word: cut at the country's
        # length, counted in non-space characters.
        count = 0
        cut = None
        for i, ch in enumerate(text):
            if ch != " ":
                count += 1
                if count == length:
                    cut = i + 1
                    break
        if cut is None:
            continue
        end = m.start() + cut
        if end < len(s) and s[end].isalnum():
            continue
        compact = text[:cut].replace(" ", "")
        if _iban_ok(compact):
            yield m.start(), end, "iban"


def _continues_number(s: str, start: int) -> bool:
    """Whether ``s[start:]`` continues a longer number: a digit group and one separator right
    before it (``9400 4111 1111 ...`` is a tracking number, not a card after "9400"). A word
    that merely ends in a digit (``STU901 4111 ...``) does not count."""
    if start < 2 or s[start - 1] not in " .-/" or not "0" <= s[start - 2] <= "9":
        return False
    i = start - 2
    while i >= 0 and s[i].isalnum():
        if not "0" <= s[i] <= "9":
            return False
        i -= 1
    return True


def _digits(text: str) -> int:
    return sum(1 for ch in text if ch.isdigit())


def _find_phones(s: str, lowered: str) -> Iterator[tuple[int, int, str]]:
    intl, nanp, trunk = _PHONE_PATTERNS
    # A formatted number is at most ~40 characters; a hint can sit anywhere inside it.
    windows = _windows([m.start() for m in _PHONE_HINT.finditer(s)], 45, 45, len(s))
    for m in _finditer_windows(intl, s, windows):
        if 8 <= _digits(m.group()) <= 15:
            yield m.start(), m.end(), "phone"
    for m in _finditer_windows(nanp, s, windows):
        if not _continues_number(s, m.start()):
            yield m.start(), m.end(), "phone"
    for m in _finditer_windows(trunk, s, windows):
        if 9 <= _digits(m.group()) <= 12 and not _continues_number(s, m.start()):
            yield m.start(), m.end(), "phone"
    for m in _keyword_matches(_PHONE_CONTEXT, _PHONE_WORD_SCAN, s, lowered):
        number = m.group(1)
        if 7 <= _digits(number) <= 15 and "  " not in number and "--" not in number:
            yield m.start(1), m.end(1), "phone"
