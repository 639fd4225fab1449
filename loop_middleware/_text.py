"""Text and values made storable in every supported database (shared by capture and the store)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["clean_text", "storable"]

_INT64 = 2**63 - 1


def clean_text(text: str) -> str:
    """``text`` made storable everywhere: undecodable bytes smuggled in as lone surrogates
    (``errors="surrogateescape"``) are decoded again with U+FFFD for what is not UTF-8, other
    lone surrogates become U+FFFD, and NUL (which PostgreSQL text rejects) becomes U+2400."""
    if text.isascii():
        return text.replace("\x00", "\u2400") if "\x00" in text else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.replace("\x00", "\u2400") if "\x00" in text else text


def storable(value: Any, *, _depth: int = 0) -> Any:
    """A copy of a JSON-like value every database accepts: strings cleaned (:func:`clean_text`),
    NaN/Infinity (refused by PostgreSQL's ``json``) as None, integers beyond 64 bits as text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value if -_INT64 <= value <= _INT64 else str(value)
    if _depth > 200:
        return clean_text(repr(value))
    if isinstance(value, dict):
        return {clean_text(str(k)): storable(v, _depth=_depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v, _depth=_depth + 1) for v in value]
    return value
