"""Aggregation privacy: show a group only when enough distinct people are behind it.

Reports and pull requests talk about *groups* (an intent, an intent x signal diagnosis), never
about one person's conversation. Following the approach of Anthropic's Clio, a group is shown only
when it gathers at least ``k`` distinct threads **and**, when users are known, ``k`` distinct users
(default :data:`MIN_GROUP_SIZE` = 5): a cluster made of one customer's five threads could describe
that customer. Evidence quotes that do make it into a PR body go through :func:`safe_quote`, which
redacts *before* truncating (truncating first could cut a key in half and leave the prefix that
the patterns need to recognise it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from ..errors import ConfigError
from ._redact import Redactor

__all__ = [
    "MIN_GROUP_SIZE",
    "FilteredGroups",
    "GroupSize",
    "filter_groups",
    "group_size",
    "may_show",
    "safe_quote",
]

MIN_GROUP_SIZE = 5
"""Default least number of distinct threads (and users, when known) behind a shown group."""

T = TypeVar("T")


class GroupSize(NamedTuple):
    """How many distinct threads and users are behind a group."""

    threads: int
    users: int | None = None
    """``None`` when the host does not identify users."""


@dataclass(frozen=True, slots=True)
class FilteredGroups(Generic[T]):
    """The result of :func:`filter_groups`."""

    visible: list[T]
    """The groups that may be shown, in their input order."""
    suppressed: int
    """How many groups were held back (report the number, never their content)."""


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (minimum group size) must be a positive integer, got {k!r}")


def may_show(
    distinct_threads: int, distinct_users: int | None = None, k: int = MIN_GROUP_SIZE
) -> bool:
    """Whether a group backed by these counts may be shown.

    True when ``distinct_threads >= k`` and, if ``distinct_users`` is given, ``distinct_users >=
    k``. Without user ids, threads are the only proxy: pass users whenever the host has them.

    Raises:
        ConfigError: ``k`` is not a positive integer, or a count is negative.
    """
    _check_k(k)
    if distinct_threads < 0 or (distinct_users is not None and distinct_users < 0):
        raise ConfigError("group counts cannot be negative")
    return distinct_threads >= k and (distinct_users is None or distinct_users >= k)


def group_size(group: Any) -> GroupSize:
    """Read the size of a group from the usual shapes.

    Accepts a :class:`GroupSize` or ``(threads, users)`` tuple, an ``int`` (threads), a mapping with
    ``distinct_threads``/``threads``/``size`` and optionally ``distinct_users``/``users``, or an
    object with those attributes: :class:`~loop_middleware.types.Intent` (``size``) and
    :class:`~loop_middleware.types.Diagnosis` (``sessions_affected``; ``details["distinct_users"]``
    when diagnosis recorded it).

    Raises:
        ConfigError: the shape is not one of these (pass ``key=`` to :func:`filter_groups`).
    """
    if isinstance(group, GroupSize):
        return group
    if isinstance(group, bool):
        raise ConfigError("a bool is not a group size")
    if isinstance(group, int):
        return GroupSize(group)
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], int):
        return GroupSize(group[0], group[1])

    def pick(source: Mapping[str, Any] | None, names: tuple[str, ...]) -> Any:
        for name in names:
            if source is not None and name in source:
                return source[name]
            if source is None and hasattr(group, name):
                return getattr(group, name)
        return None

    source = group if isinstance(group, Mapping) else None
    threads = pick(source, ("distinct_threads", "threads", "sessions_affected", "size"))
    users = pick(source, ("distinct_users", "users"))
    details = getattr(group, "details", None) if source is None else None
    if users is None and isinstance(details, Mapping):
        users = details.get("distinct_users")
    if (
        isinstance(threads, int)
        and not isinstance(threads, bool)
        and (users is None or (isinstance(users, int) and not isinstance(users, bool)))
    ):
        return GroupSize(threads, users)
    raise ConfigError(
        f"cannot read a group size from {type(group).__name__}; pass key=lambda g: (threads, users)"
    )


def filter_groups(
    groups: Iterable[T],
    key: Callable[[T], GroupSize | tuple[int, int | None] | int] | None = None,
    k: int = MIN_GROUP_SIZE,
) -> FilteredGroups[T]:
    """Keep the groups that :func:`may_show` allows.

    Args:
        groups: Intents, diagnoses, dicts, anything.
        key: Returns a group's size as a :class:`GroupSize`, ``(threads, users)`` or ``threads``;
            by default :func:`group_size` reads the usual fields.
        k: The minimum group size.

    Returns:
        The visible groups in input order and the number suppressed.
    """
    _check_k(k)
    visible: list[T] = []
    suppressed = 0
    for g in groups:
        size = group_size(key(g) if key is not None else g)
        if may_show(size.threads, size.users, k):
            visible.append(g)
        else:
            suppressed += 1
    return FilteredGroups(visible, suppressed)


_WS = re.compile(r"\s+")
_TOKEN_TAIL = re.compile(r"\[[A-Za-z_:0-9]*$")
_default_redactor: Redactor | None = None


def safe_quote(text: Any, redactor: Redactor | None = None, max_chars: int = 200) -> str:
    """An evidence quote fit for a PR body: redacted, on one line, at most ``max_chars`` long.

    Redaction happens first, on the whole text. Whitespace runs (newlines included) become one
    space; a longer quote is cut at a word boundary when one is near, never inside a replacement
    token such as ``[REDACTED:openai_key]``, and ends with ``…``.

    Args:
        text: The quote (non-strings are stringified).
        redactor: The redactor to use; a default :class:`Redactor` when omitted.
        max_chars: The longest result, ellipsis included.

    Raises:
        ConfigError: ``max_chars`` is less than 2.
    """
    if max_chars < 2:
        raise ConfigError("max_chars must be at least 2")
    global _default_redactor
    if redactor is None:
        if _default_redactor is None:
            _default_redactor = Redactor()
        redactor = _default_redactor
    flat = _WS.sub(" ", redactor.redact(text)).strip()
    if len(flat) <= max_chars:
        return flat
    cut = flat[: max_chars - 1]
    tail = _TOKEN_TAIL.search(cut)
    if tail:  # do not leave half a token: "[REDACT…"
        cut = cut[: tail.start()]
    space = cut.rfind(" ")
    if space >= max(1, len(cut) - 30):  # a word boundary close enough to the limit
        cut = cut[:space]
    return cut.rstrip() + "…"
