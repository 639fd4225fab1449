"""Privacy: redact secrets and personal data; show only groups big enough to be anonymous.

* :class:`Redactor` / :class:`RedactionConfig`: find and replace API keys, tokens, private keys,
  URL passwords, card numbers, IBANs, e-mail addresses and phone numbers in text and in nested
  structures (message dicts, tool arguments, span attributes).
* :func:`may_show` / :func:`filter_groups`: Clio-style minimum group size for intents and
  diagnoses; :func:`safe_quote`: a redacted, truncated evidence quote for a PR body.
"""

from __future__ import annotations

from ._aggregate import (
    MIN_GROUP_SIZE,
    FilteredGroups,
    GroupSize,
    filter_groups,
    group_size,
    may_show,
    safe_quote,
)
from ._redact import ALL_KINDS, PII_KINDS, SECRET_KINDS, Finding, RedactionConfig, Redactor

__all__ = [
    "ALL_KINDS",
    "MIN_GROUP_SIZE",
    "PII_KINDS",
    "SECRET_KINDS",
    "FilteredGroups",
    "Finding",
    "GroupSize",
    "RedactionConfig",
    "Redactor",
    "filter_groups",
    "group_size",
    "may_show",
    "safe_quote",
]
