"""Aggregation privacy: minimum group size, group filtering, evidence quotes for PR bodies."""

from __future__ import annotations

import pytest

from loop_middleware.errors import ConfigError
from loop_middleware.privacy import (
    MIN_GROUP_SIZE,
    GroupSize,
    RedactionConfig,
    Redactor,
    filter_groups,
    group_size,
    may_show,
    safe_quote,
)
from loop_middleware.types import Diagnosis, Intent

OPENAI = "sk-proj-Abc123def456GHI789jkl012MNO345pqr678STU901"


def _diagnosis(sessions: int, **details: object) -> Diagnosis:
    return Diagnosis(
        id=f"d{sessions}",
        intent_id="i1",
        intent_name="refund",
        signal="user_frustration",
        failure_mode="coverage_gap",
        summary="…",
        sessions_affected=sessions,
        share_of_sessions=0.1,
        rate_in_intent=0.3,
        rate_elsewhere=0.1,
        lift=3.0,
        p_value=0.01,
        q_value=0.02,
        impact=1.0,
        confidence=0.9,
        details=dict(details),
    )


# --- may_show -----------------------------------------------------------------------------------


def test_default_k_is_five() -> None:
    assert MIN_GROUP_SIZE == 5
    assert not may_show(4)
    assert may_show(5)


@pytest.mark.parametrize(
    ("threads", "users", "k", "expected"),
    [
        (5, None, 5, True),
        (4, None, 5, False),
        (50, 5, 5, True),
        (50, 4, 5, False),  # one customer's many threads must not make a group visible
        (4, 4, 5, False),
        (0, None, 1, False),
        (1, 1, 1, True),
        (9, 10, 10, False),
        (12, 10, 10, True),
    ],
)
def test_may_show(threads: int, users: int | None, k: int, expected: bool) -> None:
    assert may_show(threads, users, k=k) is expected


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "5"])
def test_bad_k_is_a_config_error(k: object) -> None:
    with pytest.raises(ConfigError):
        may_show(10, 10, k=k)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        filter_groups([10], k=k)  # type: ignore[arg-type]


def test_negative_counts_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        may_show(-1)
    with pytest.raises(ConfigError):
        may_show(10, -2)


# --- filter_groups ------------------------------------------------------------------------------


def test_filter_intents_by_size_keeps_order_and_counts_the_rest() -> None:
    intents = [
        Intent(id=f"i{n}", name=f"intent {n}", category="how_to", size=n) for n in (12, 3, 5, 1, 40)
    ]
    result = filter_groups(intents)
    assert [i.size for i in result.visible] == [12, 5, 40]
    assert result.suppressed == 2


def test_filter_diagnoses_uses_sessions_and_recorded_users() -> None:
    diagnoses = [_diagnosis(30, distinct_users=2), _diagnosis(30), _diagnosis(4, distinct_users=4)]
    result = filter_groups(diagnoses)
    assert [d.id for d in result.visible] == ["d30"]
    assert result.visible[0].details == {}
    assert result.suppressed == 2


def test_filter_with_key_and_mapping_shapes() -> None:
    groups = [
        {"name": "a", "distinct_threads": 9, "distinct_users": 7},
        {"name": "b", "threads": 9, "users": 2},
        {"name": "c", "size": 6},
    ]
    assert [g["name"] for g in filter_groups(groups).visible] == ["a", "c"]
    by_key = filter_groups(groups, key=lambda g: (len(g["name"]) * 10, None), k=10)
    assert by_key.suppressed == 0
    assert filter_groups(groups, key=lambda g: GroupSize(3, 3), k=3).suppressed == 0
    assert filter_groups(groups, key=lambda g: 2, k=3).suppressed == 3


def test_group_size_reads_the_usual_shapes() -> None:
    assert group_size(7) == GroupSize(7, None)
    assert group_size((7, 3)) == GroupSize(7, 3)
    assert group_size(GroupSize(2, 1)) == GroupSize(2, 1)
    assert group_size({"distinct_threads": 8, "distinct_users": 6}) == GroupSize(8, 6)


@pytest.mark.parametrize("bad", [object(), {"name": "x"}, True, {"size": "many"}])
def test_unknown_group_shape_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        filter_groups([bad])


# --- safe_quote ---------------------------------------------------------------------------------


def test_short_quote_is_redacted_and_put_on_one_line() -> None:
    assert (
        safe_quote("Hi,\n\nmail me at ana@example.com\tplease ") == "Hi, mail me at [EMAIL] please"
    )


def test_quote_is_redacted_before_it_is_cut() -> None:
    # Cutting first at 60 characters would leave "sk-proj-Abc123def456GHI789", a prefix that no
    # pattern recognises any more; redacting first removes the whole key.
    text = "x" * 30 + " my key " + OPENAI + " and more words after it"
    out = safe_quote(text, max_chars=60)
    assert len(out) <= 60
    assert "sk-proj" not in out and "Abc123" not in out
    assert out.endswith("…")


def test_cut_never_splits_a_token() -> None:
    text = "see " + "word " * 5 + "ana@example.com " * 20
    for n in range(10, 80):
        out = safe_quote(text, max_chars=n)
        assert len(out) <= n
        body = out.rstrip("…")
        assert body.count("[") == body.count("]"), out  # no "[EMA…"
        assert "@" not in out


def test_cut_prefers_a_word_boundary() -> None:
    out = safe_quote("alpha beta gamma delta epsilon zeta eta theta", max_chars=20)
    assert out == "alpha beta gamma…"


def test_custom_redactor_is_used() -> None:
    r = Redactor(RedactionConfig(replacements={"email": "<hidden>"}))
    assert safe_quote("from ana@example.com", r) == "from <hidden>"


def test_non_string_quote_and_bad_limit() -> None:
    assert safe_quote({"email": "ana@example.com"}) == "{'email': '[EMAIL]'}"
    with pytest.raises(ConfigError):
        safe_quote("x", max_chars=1)
